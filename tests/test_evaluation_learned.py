"""EntityScore, AudioScore, CLIPScore: formulas against hand-computed cases, then end to end with tiny random
models saved to local folders (T5, CLIP, an NLTK tagger trained here, an OpenAI-layout TriLip checkpoint)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avlformer.evaluation.audio_score import (AudioScorer, TriLip, audio_score_from_embeddings, gompertz, load_trilip,
                                              openai_to_transformers)
from avlformer.evaluation.clip_score import ClipScorer, clip_s, ref_clip_s
from avlformer.evaluation.entity_score import EntityScorer, NounExtractor, entity_recall, harmonic_mean, \
    semantic_coverage
from avlformer.evaluation.metric_models import MetricUnavailable, load_clip, load_pos_tagger, load_t5_encoder
from avlformer.modeling.passt import PasstConfig

WORDS = ["man", "men", "dog", "dogs", "cat", "microphone", "stage", "speaks", "barks", "sits", "sings", "on", "a",
         "the", "into", "and", "loudly", ".", ","]
TAGGED = [
    [("a", "DT"), ("man", "NN"), ("speaks", "VBZ"), ("into", "IN"), ("a", "DT"), ("microphone", "NN"), (".", ".")],
    [("the", "DT"), ("dog", "NN"), ("barks", "VBZ"), ("loudly", "RB"), (".", ".")],
    [("a", "DT"), ("cat", "NN"), ("sits", "VBZ"), ("on", "IN"), ("the", "DT"), ("stage", "NN"), (".", ".")],
    [("the", "DT"), ("men", "NNS"), ("and", "CC"), ("dogs", "NNS"), ("sings", "VBZ"), (",", ",")],
]


# ------------------------------------------------------------------------------------------- tiny local models

def word_level_tokenizer(words, template_single, specials):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*specials.values(), *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=template_single, special_tokens=[(t, vocab[t]) for t in re.findall(r"<[^ ]+>", template_single)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials), vocab


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory):
    import nltk
    from nltk.tag.perceptron import PerceptronTagger

    folder = tmp_path_factory.mktemp("nltk_data")
    nltk.data.path.insert(0, str(folder))  # NLTK >= 3.9 writes only inside its data folders
    tagger = PerceptronTagger(load=False)
    # Repeated sentences put every word in the tagger's tag dictionary, so tags are exact.
    tagger.train(TAGGED * 25, nr_iter=2)
    tagger.save_to_json(lang="eng", loc=str(folder / "taggers" / "averaged_perceptron_tagger_eng"))
    return folder


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import T5Config, T5EncoderModel

    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    tokenizer, vocab = word_level_tokenizer(["man", "dog", "cat", "microphon", "stage", "men"], "$A </s>",
                                            {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"})
    tokenizer.save_pretrained(folder)
    config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      pad_token_id=0, eos_token_id=1)
    T5EncoderModel(config).save_pretrained(folder)
    return folder


def tiny_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=len(WORDS) + 6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=32)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(1)
    config = tiny_clip_config()
    # eos id 2: transformers' CLIP then pools at the highest token id, as OpenAI CLIP does; <eos> is given
    # the highest id here, as in OpenAI's vocabulary.
    specials = {"pad_token": "<pad>", "bos_token": "<s>", "unk_token": "<unk>"}
    tokenizer, vocab = word_level_tokenizer([*WORDS, "photo", "depicts", "<eos>"], "<s> $A <eos>", specials)
    tokenizer.eos_token = "<eos>"
    config.text_config.eos_token_id = 2
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    CLIPModel(config).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- EntityScore

def test_entity_formulas_on_hand_computed_case():
    assert entity_recall(["cat", "dog"], ["bird", "dog", "tree"]) == pytest.approx(1 / 3)
    # Nouns as 1-position states: p1=(1,0), p2=(0,1); r1=(1,0), r2=(1,1).
    predicted = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    reference = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])
    # p1: best (1+1)/2 = 1; p2: best (cos 45° + 1)/2 = 0.853553; C = mean.
    expected_c = (1.0 + (math.sqrt(0.5) + 1) / 2) / 2
    assert semantic_coverage(predicted, reference) == pytest.approx(expected_c)
    # Two positions: the per-position cosines (1 and 0) are averaged before (x+1)/2.
    two = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    other = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert semantic_coverage(two, other) == pytest.approx(((1 + 0) / 2 + 1) / 2)
    assert harmonic_mean(1 / 3, 0.75) == pytest.approx(2 * (1 / 3) * 0.75 / (1 / 3 + 0.75))
    assert harmonic_mean(0.0, 0.0) == 0.0


def test_noun_extraction_stems_distinct_nouns(nltk_data):
    extract = NounExtractor(load_pos_tagger(nltk_data))
    assert extract("the men and dogs sings, the dog barks loudly. a man speaks into a microphone.") == \
        ["dog", "man", "men", "microphon"]


def test_entity_score_end_to_end(nltk_data, t5_dir):
    tokenizer, encoder = load_t5_encoder(t5_dir, torch.device("cpu"))
    scorer = EntityScorer(tokenizer, encoder, load_pos_tagger(nltk_data))
    same = "a man speaks into a microphone."
    assert scorer.score_pair(same, same) == pytest.approx(1.0)          # R = 1, C = 1
    assert scorer.score_pair("the dog barks loudly.", "a cat sits on the stage.") == 0.0  # R = 0
    assert scorer.score_pair("loudly.", same) is None                   # no noun in the prediction

    # Partial match, R = 1/2, C recomputed here from the encoder states position by position.
    prediction, reference = "a man sits on the stage.", "a man speaks into a microphone."
    states = []
    for nouns in (["man", "stage"], ["man", "microphon"]):
        batch = tokenizer(nouns, padding=True, return_tensors="pt")
        states.append(encoder(**batch).last_hidden_state.detach())
    length = states[0].shape[1]
    assert states[1].shape[1] == length
    best = []
    for p in states[0]:
        sims = [(np.mean([F.cosine_similarity(p[i], r[i], dim=0).item() for i in range(length)]) + 1) / 2
                for r in states[1]]
        best.append(min(max(sims), 1.0))
    coverage = sum(best) / len(best)
    expected = 2 * 0.5 * coverage / (0.5 + coverage)
    assert scorer.score_pair(prediction, reference) == pytest.approx(expected, rel=1e-5)

    result = scorer.score({"a": same, "b": "loudly.", "c": prediction},
                          {"a": [same], "b": [same], "c": [reference, same]})
    assert result.unscored == ["b"]
    assert result.per_item["c"] == pytest.approx((expected + scorer.score_pair(prediction, same)) / 2)
    assert result.score == pytest.approx((1.0 + result.per_item["c"]) / 2)


def test_missing_entity_models_name_what_to_install(tmp_path):
    with pytest.raises(MetricUnavailable, match="--t5-model"):
        load_t5_encoder(None, torch.device("cpu"))
    with pytest.raises(MetricUnavailable, match="no config.json"):
        load_t5_encoder(tmp_path, torch.device("cpu"))
    with pytest.raises(MetricUnavailable, match="averaged_perceptron_tagger_eng"):
        load_pos_tagger(tmp_path / "empty_nltk_data_folder_with_no_tagger")


# ---------------------------------------------------------------------------------------------- CLIPScore

def test_clip_score_formulas_on_hand_computed_case():
    candidate = torch.tensor([[1.0, 0.0]])
    video = torch.tensor([[1.0, 1.0]])
    plain = clip_s(candidate, video)
    assert plain.item() == pytest.approx(2.5 * math.sqrt(0.5))                 # w * cos 45°
    assert clip_s(candidate, torch.tensor([[-1.0, 0.0]])).item() == 0.0         # negative cosine clipped
    refs = torch.tensor([[0.0, 1.0], [3.0, 4.0]])                              # best cos = 0.6
    expected = 2 * plain.item() * 0.6 / (plain.item() + 0.6)
    assert ref_clip_s(plain[0], candidate[0], refs).item() == pytest.approx(expected)
    assert ref_clip_s(torch.tensor(0.0), candidate[0], torch.tensor([[-1.0, 0.0]])).item() == 0.0


def test_clip_scorer_end_to_end(clip_dir):
    model, tokenizer, processor = load_clip(clip_dir, "CLIPScore", torch.device("cpu"))
    scorer = ClipScorer(model, tokenizer, processor)
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    caption, refs = "a man speaks loudly", ["a dog barks", "the cat sits on the stage"]
    scores = scorer.score_item("v", frames, caption, refs)

    with torch.no_grad():
        pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
        image = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
        video = F.normalize(image.mean(0), dim=-1)
        texts = tokenizer(["A photo depicts " + t for t in [caption, *refs]], padding=True, return_tensors="pt")
        text = model.text_projection(model.text_model(**texts).pooler_output)
    cos_v = F.cosine_similarity(text[0], video, dim=0).item()
    plain = 2.5 * max(cos_v, 0.0)
    best_ref = max(max(F.cosine_similarity(text[0], text[i], dim=0).item() for i in (1, 2)), 0.0)
    assert scores["CLIP-S"] == pytest.approx(plain, abs=1e-5)
    expected_ref = 0.0 if plain + best_ref == 0 else 2 * plain * best_ref / (plain + best_ref)
    assert scores["RefCLIP-S"] == pytest.approx(expected_ref, abs=1e-5)
    assert scorer.means()["CLIP-S"] == pytest.approx(scores["CLIP-S"])


# ---------------------------------------------------------------------------------------------- AudioScore

def test_audio_score_formula_on_hand_computed_case():
    a_const = 1 / math.exp(-0.69 * math.exp(-10))
    # f anchors stated by the README: f(0) = 0.5, f(1) = 1.
    assert gompertz(torch.tensor(0.0)).item() == pytest.approx(0.5, abs=2e-4)
    assert gompertz(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=1e-6)
    audio = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[2.0, 0.0]])       # cos(a, t) = 1
    video = torch.tensor([[0.0, 5.0]])      # cos(a, v) = 0
    s = (0.5 * 1 + 0.5 * 0 + 1) / 2         # 0.75
    expected = a_const * math.exp(-0.693 * math.exp(-10 * s))
    assert audio_score_from_embeddings(audio, video, text).item() == pytest.approx(expected, rel=1e-6)
    opposite = audio_score_from_embeddings(audio, -audio, -audio).item()   # s = 0
    assert opposite == pytest.approx(a_const * math.exp(-0.693), rel=1e-6)


def openai_layout(clip_state: dict) -> dict:
    """transformers CLIP names -> OpenAI names (written independently of the module under test)."""
    out = {}
    simple = {"logit_scale": "logit_scale", "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
              "text_model.embeddings.position_embedding.weight": "positional_embedding",
              "text_model.final_layer_norm.weight": "ln_final.weight",
              "text_model.final_layer_norm.bias": "ln_final.bias",
              "vision_model.embeddings.class_embedding": "visual.class_embedding",
              "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
              "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
              "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
              "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
              "vision_model.post_layernorm.weight": "visual.ln_post.weight",
              "vision_model.post_layernorm.bias": "visual.ln_post.bias"}
    parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    for name, value in clip_state.items():
        if name in simple:
            out[simple[name]] = value
        elif name == "text_projection.weight":
            out["text_projection"] = value.t()
        elif name == "visual_projection.weight":
            out["visual.proj"] = value.t()
        elif m := re.match(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name):
            tower, index, module, kind = m.groups()
            prefix = ("visual." if tower == "vision" else "") + f"transformer.resblocks.{index}."
            if module.startswith("self_attn.") and module[-6:] in ("q_proj", "k_proj", "v_proj"):
                if module.endswith("q_proj"):
                    base = f"{tower}_model.encoder.layers.{index}.self_attn."
                    out[f"{prefix}attn.in_proj_{kind}"] = torch.cat(
                        [clip_state[f"{base}{p}_proj.{kind}"] for p in "qkv"], dim=0)
            else:
                out[f"{prefix}{parts[module]}.{kind}"] = value
        elif not name.endswith("position_ids"):
            raise AssertionError(f"unhandled {name}")
    return out


@pytest.fixture(scope="module")
def trilip_files(tmp_path_factory, clip_dir):
    """An upstream-layout TriLip.bin of a tiny random TriLip, plus the reference model and its PaSST config."""
    folder = tmp_path_factory.mktemp("trilip")
    torch.manual_seed(2)
    passt = PasstConfig.nano()
    reference = TriLip(tiny_clip_config(), passt, ffn_hidden=24).eval()
    state = {}
    for name, value in reference.state_dict().items():
        if not name.startswith("vl_model."):
            state[name] = value
    state |= {f"vl_model.{k}": v for k, v in openai_layout(
        {k.removeprefix("vl_model."): v for k, v in reference.state_dict().items() if k.startswith("vl_model.")}
    ).items()}
    state["a_model.net.head.0.weight"] = torch.ones(passt.embed_dim)   # TriLip's unused PaSST head
    state["a_model.net.head.0.bias"] = torch.zeros(passt.embed_dim)
    checkpoint = folder / "TriLip.bin"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    config_path = folder / "passt.json"
    config_path.write_text(json.dumps(passt.to_dict()))
    return checkpoint, config_path, reference


def test_openai_clip_mapping_rejects_unknown_names():
    with pytest.raises(ValueError, match="not OpenAI CLIP parameter names"):
        openai_to_transformers({"visual.something_else": torch.zeros(1)})


def test_trilip_checkpoint_loads_onto_the_same_model(trilip_files, clip_dir):
    checkpoint, _, reference = trilip_files
    model, tokenizer, processor = load_trilip(checkpoint, clip_dir, PasstConfig.nano())
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    pixels = torch.randn(2, 3, 32, 32)
    tokens = tokenizer(["a man speaks", "the dog barks loudly"], padding=True, return_tensors="pt")
    audio = torch.randn(1, 1, PasstConfig.nano().clip_samples)
    with torch.no_grad():
        assert torch.allclose(model.image_embeddings(pixels), reference.image_embeddings(pixels))
        assert torch.allclose(model.text_embeddings(tokens["input_ids"], tokens["attention_mask"]),
                              reference.text_embeddings(tokens["input_ids"], tokens["attention_mask"]))
        assert torch.allclose(model.audio_embeddings(audio), reference.audio_embeddings(audio))
        # Eval mode: deterministic patchout, so the same clip gives the same embedding twice.
        assert torch.equal(model.audio_embeddings(audio), model.audio_embeddings(audio))


def test_trilip_checkpoint_with_wrong_shapes_names_the_file(trilip_files, clip_dir, tmp_path):
    checkpoint, _, _ = trilip_files
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["module.vis_scaler.w_1.weight"] = torch.zeros(3, 3)
    broken = tmp_path / "broken.bin"
    torch.save(state, broken)
    with pytest.raises(ValueError, match="broken.bin"):
        load_trilip(broken, clip_dir, PasstConfig.nano())
    with pytest.raises(MetricUnavailable, match="TriLip.bin"):
        load_trilip(tmp_path / "absent.bin", clip_dir, PasstConfig.nano())


def test_audio_scorer_end_to_end(trilip_files, clip_dir):
    checkpoint, _, reference = trilip_files
    scorer = AudioScorer(*load_trilip(checkpoint, clip_dir, PasstConfig.nano()))
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (4, 36, 40, 3), dtype=np.uint8)
    short_wave = rng.standard_normal(20000).astype(np.float32) * 0.1     # padded to 32000 samples
    caption = "a man speaks into a microphone. the dog barks loudly."
    value = scorer.score_item("clip", frames, short_wave, caption)

    _, tokenizer, processor = load_trilip(checkpoint, clip_dir, PasstConfig.nano())
    with torch.no_grad():
        pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
        video = reference.image_embeddings(pixels).mean(0)
        tokens = tokenizer([caption], truncation=True, max_length=12, return_tensors="pt")
        text = reference.text_embeddings(tokens["input_ids"], tokens["attention_mask"])[0]
        padded = np.concatenate([short_wave, np.zeros(12000, np.float32)])
        audio = reference.audio_embeddings(torch.from_numpy(padded).view(1, 1, -1))[0]
    s = (0.5 * F.cosine_similarity(audio, text, dim=0).item()
         + 0.5 * F.cosine_similarity(audio, video, dim=0).item() + 1) / 2
    expected = math.exp(-0.693 * math.exp(-10 * s)) / math.exp(-0.69 * math.exp(-10))
    assert value == pytest.approx(expected, rel=1e-5)
    assert scorer.means() == {"AudioScore": pytest.approx(value)}


# ---------------------------------------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def caption_files(tmp_path_factory):
    from media_fixtures import write_mp3, write_normal

    folder = tmp_path_factory.mktemp("captions")
    for name in ("v1", "v2"):
        write_normal(folder / "videos" / f"{name}.mp4")
        write_mp3(folder / "mp3" / f"{name}.mp3")
    pred = folder / "pred.json"
    pred.write_text(json.dumps([{"image_id": "v1", "caption": "a man speaks into a microphone."},
                                {"image_id": "v2", "caption": "the dog barks loudly."},
                                {"image_id": "v9", "caption": "a cat sits."}]))
    ref = folder / "ref.json"
    ref.write_text(json.dumps({"annotations": [
        {"image_id": "test/v1.mp4", "caption": "a man speaks into a microphone on the stage.", "id": 0},
        {"image_id": "test/v2.mp4", "caption": "the dogs and a cat sits.", "id": 1},
        {"image_id": "test/v3.mp4", "caption": "a man sings.", "id": 2}]}))
    return folder, pred, ref


@pytest.mark.skipif(__import__("shutil").which("java") is None, reason="pycocoevalcap needs Java")
def test_evaluate_command_end_to_end(caption_files, nltk_data, t5_dir, clip_dir, trilip_files, capsys):
    from avlformer.cli import main as avlformer_main

    folder, pred, ref = caption_files
    checkpoint, passt_config, _ = trilip_files
    output = folder / "metrics.json"
    code = avlformer_main([
        "evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "bleu", "cider", "entity", "clip", "audio",
        "--output", str(output), "--t5_model", str(t5_dir), "--nltk-data", str(nltk_data),
        "--clip-model", str(clip_dir), "--trilip-checkpoint", str(checkpoint),
        "--trilip-passt-config", str(passt_config), "--video-dir", str(folder / "videos"), "--num-frames", "4",
        "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(output.read_text())
    assert set(report["metrics"]) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "EntityScore", "CLIP-S",
                                      "RefCLIP-S", "AudioScore"}
    assert report["num_scored"] == 2
    assert report["missing_predictions"] == ["test/v3.mp4"] and report["extra_predictions"] == ["v9"]
    assert "1 reference ids with no prediction" in captured.err and "'v9'" in captured.err
    assert set(report["per_item"]["AudioScore"]) == {"test/v1.mp4", "test/v2.mp4"}
    assert report["metrics"]["AudioScore"] == pytest.approx(np.mean(list(report["per_item"]["AudioScore"].values())))
    assert report["metrics"]["EntityScore"] == pytest.approx(np.mean(list(report["per_item"]["EntityScore"].values())))
    for name in report["metrics"]:
        assert re.search(rf"^{re.escape(name)}\s+{report['metrics'][name]:.4f}$", captured.out, re.M), name

    # Separate mp3s give the audio instead of the videos' own tracks (a different tone here).
    code = avlformer_main([
        "evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "audio", "--output", str(output),
        "--clip-model", str(clip_dir), "--trilip-checkpoint", str(checkpoint),
        "--trilip-passt-config", str(passt_config), "--video-dir", str(folder / "videos"),
        "--audio-dir", str(folder / "mp3"), "--num-frames", "4"])
    assert code == 0
    from_mp3 = json.loads(output.read_text())["metrics"]["AudioScore"]
    assert from_mp3 != pytest.approx(report["metrics"]["AudioScore"], abs=1e-9)


def test_evaluate_command_skips_metrics_without_models(caption_files, tmp_path, capsys):
    from avlformer.cli import main as avlformer_main

    folder, pred, ref = caption_files
    output = tmp_path / "m.json"
    code = avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "entity", "clip",
                           "audio", "--output", str(output), "--nltk-data", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3  # named with --metrics but could not run
    skipped = json.loads(output.read_text())["skipped"]
    assert set(skipped) == {"entity", "clip", "audio"}
    assert "averaged_perceptron_tagger_eng" in skipped["entity"]
    assert "--video-dir" in skipped["clip"] and "--video-dir" in skipped["audio"]
    assert all(reason in out for reason in skipped.values())


def test_unusable_media_leaves_the_clip_out_of_the_metrics_that_need_it(clip_dir, trilip_files, tmp_path):
    from media_fixtures import write_no_audio, write_normal

    from avlformer.evaluation.references import pair_captions
    from avlformer.evaluation.runner import ModelPaths, evaluate

    checkpoint, passt_config, _ = trilip_files
    write_normal(tmp_path / "v1.mp4")
    write_no_audio(tmp_path / "v5.mp4")   # fine for CLIPScore, no audio for AudioScore
    ids = ("v1", "v5", "v7")              # v7 has no video at all
    paired = pair_captions({i: "a man speaks." for i in ids}, {i: ["a man."] for i in ids})
    report = evaluate(paired, ["clip", "audio"], ModelPaths(
        clip_model=str(clip_dir), trilip_checkpoint=str(checkpoint), trilip_passt_config=str(passt_config),
        video_dir=str(tmp_path), num_frames=2, device="cpu"))
    assert set(report.per_item["CLIPScore"]) == {"v1", "v5"}
    assert set(report.per_item["AudioScore"]) == {"v1"}
    assert set(report.unscored["CLIPScore"]) == {"v7"}
    assert set(report.unscored["AudioScore"]) == {"v5", "v7"}
    assert "no video for id 'v7'" in report.unscored["CLIPScore"]["v7"]
    assert "audio" in report.unscored["AudioScore"]["v5"]
    assert report.metrics["AudioScore"] == pytest.approx(report.per_item["AudioScore"]["v1"])


def test_broken_model_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        load_clip(tmp_path, "CLIPScore", torch.device("cpu"))


def _caption_pair(folder, prediction: str, reference: str):
    pred, ref = folder / "pred.json", folder / "ref.json"
    pred.write_text(json.dumps([{"image_id": "v1", "caption": prediction}]))
    ref.write_text(json.dumps({"annotations": [{"image_id": "v1", "caption": reference, "id": 0}]}))
    return pred, ref


def test_a_requested_metric_no_item_can_get_is_an_error_naming_why(nltk_data, t5_dir, tmp_path, capsys):
    from avlformer.cli import main as avlformer_main

    pred, ref = _caption_pair(tmp_path, "sits loudly.", "barks loudly.")  # not one noun on either side
    code = avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "entity",
                           "--t5-model", str(t5_dir), "--nltk-data", str(nltk_data), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 3
    assert "EntityScore" not in captured.out.split("[entity]")[0]  # no value in the table
    assert ("error: --metrics entity: EntityScore could not be computed: none of the 1 item(s) could be scored "
            "(each has no noun in the prediction or in the reference)") in captured.err.splitlines()


def test_metric_weights_holding_pickled_code_are_a_one_line_error(t5_dir, nltk_data, tmp_path, capsys):
    import shutil

    from avlformer.cli import main as avlformer_main

    folder = tmp_path / "t5"
    shutil.copytree(t5_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"shared.weight": _RunsCode(str(marker))}, folder / "pytorch_model.bin")
    pred, ref = _caption_pair(tmp_path, "a man sits.", "a man sings.")
    code = avlformer_main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "entity",
                           "--t5-model", str(folder), "--nltk-data", str(nltk_data), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not marker.exists()
    assert len(err) == 1 and err[0].startswith(f"error: {folder}: cannot be loaded as T5EncoderModel (")
    assert "posix.system" in err[0] or "os.system" in err[0]


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
