"""A causal LM from ``transformers`` as the decoder (``text.type`` ``hf_causal_lm``): tiny random Llama-style and
GPT-2 models saved to a temporary folder train a few steps, save, reload bit-exactly and caption; the wrapped LM
computes what the LM called directly computes; LoRA trains adapters only, merges exactly, and its saved adapter
reloads onto its own base only; cached and uncached decoding agree, greedy and beam."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tokenizer import decode_caption, load_tokenizer
from avlformer.modeling.avlformer import AVLFormer
from avlformer.modeling.checkpoint import load_model
from avlformer.modeling.generation import generate
from avlformer.modeling.hf_causal_lm import HFCausalLMConfig
from avlformer.modeling.hf_folder import hf_checkpointing
from avlformer.training import loop
from avlformer.training.args import parse_train_args
from avlformer.training.optim import build_optimizer
from hf_fakes import causal_lm_config, save_causal_lm
from training_fakes import FakeCaptionDataset

FAMILIES = ("llama", "gpt2")


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    return {family: save_causal_lm(root / family, family) for family in FAMILIES}


def built(folder: Path, seed: int = 0, **text) -> AVLFormer:
    config = causal_lm_config(folder, **text)
    torch.manual_seed(seed)
    model = AVLFormer(config)
    model.load_part_weights("text", str(folder))
    return model


def av_inputs(config, batch: int = 2, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (batch, config.num_frames, 3, config.image_size, config.image_size),
                           dtype=torch.uint8, generator=gen)
    return frames, 0.1 * torch.randn(batch, 1, config.audio.clip_samples, generator=gen)


@pytest.mark.parametrize("family,training", [("llama", "lora"), ("gpt2", "full")])
def test_causal_lm_trains_saves_reloads_bit_exactly_and_captions(lm_folders, tmp_path, family, training):
    folder = lm_folders[family]
    model = built(folder, training=training)
    config = model.config
    tokenizer = load_tokenizer(str(folder))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    argv = ["--output-dir", str(tmp_path / "run"), "--per-gpu-train-batch-size", "2", "--num-train-epochs", "1",
            "--learning-rate", "1e-2", "--num-workers", "0", "--device", "cpu", "--logging-steps", "1",
            "--save-steps", "2"]
    result = loop.train(parse_train_args(argv, model_config=config), model=model,
                        train_dataset=FakeCaptionDataset(config, 4, tokenizer=tokenizer),
                        recipe=PreprocessRecipe(stored_frames=8, short_side=64))
    assert result.global_step == 2
    trained = model.state_dict()
    changed = {name for name in trained if not torch.equal(trained[name], before[name])}
    assert "text.projector.0.weight" in changed
    lm_changed = {name for name in changed if name.startswith("text.lm.")}
    if training == "lora":
        assert lm_changed and all("lora_" in name for name in lm_changed)
    else:
        assert "text.lm.transformer.h.0.attn.c_attn.weight" in lm_changed
        assert model.part("text").lm.lm_head.weight is model.part("text").lm.get_input_embeddings().weight

    checkpoint = result.last_checkpoint
    assert (checkpoint / "tokenizer_config.json").is_file() and not (checkpoint / "vocab.txt").exists()
    reloaded, reloaded_config = load_model(checkpoint)
    assert reloaded_config == config
    lm = reloaded.part("text").lm
    assert (lm.lm_head.weight is lm.get_input_embeddings().weight) == (training == "full")  # GPT-2 ties them
    assert all(torch.equal(tensor, trained[name]) for name, tensor in reloaded.state_dict().items())
    frames, audio = av_inputs(config)
    model.eval(), reloaded.eval()
    first, again = model.generate(frames, audio), reloaded.generate(frames, audio)
    assert torch.equal(first.token_ids, again.token_ids)
    ids = first.token_ids[0].tolist()
    saved_tokenizer = load_tokenizer(str(checkpoint))  # the checkpoint's own copy of the LM's tokenizer
    assert saved_tokenizer.hf.get_vocab() == tokenizer.hf.get_vocab()
    assert decode_caption(ids, saved_tokenizer) == decode_caption(ids, tokenizer)


def test_training_text_is_the_lm_s_own_ids_with_end_of_text(lm_folders):
    tokenizer = load_tokenizer(str(lm_folders["llama"]))
    text = tokenizer.make_train_text("a red square slides.", None, max_seq_length=10, mask_prob=0.25,
                                     max_masked_tokens=3)
    vocab = tokenizer.hf.get_vocab()
    assert text.input_ids[:text.text_len].tolist() == [vocab[w] for w in ("a", "red", "square", "slides", ".")] + [
        tokenizer.eos_token_id]
    assert not text.masked_pos.any() and torch.equal(text.input_ids, text.target_ids)
    assert decode_caption(text.input_ids.tolist(), tokenizer) == "a red square slides."


@pytest.mark.parametrize("family", FAMILIES)
def test_wrapped_lm_computes_what_the_hf_model_computes(lm_folders, family):
    from transformers import AutoModelForCausalLM

    folder = lm_folders[family]
    decoder = built(folder, training="full").part("text").eval()
    direct = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()
    ids = torch.tensor([[5, 9, 12, 3, 7]])
    embeds = torch.randn(1, 4, 32)
    with torch.no_grad():
        ours = decoder.lm(input_ids=ids).logits
        theirs = direct(input_ids=ids).logits
        assert torch.equal(ours, theirs)
        ours = decoder.lm(inputs_embeds=embeds).logits
        assert torch.equal(ours, direct(inputs_embeds=embeds).logits)


def test_lora_trains_adapters_only_and_merges_exactly(lm_folders):
    model = built(lm_folders["llama"], training="lora")
    decoder = model.part("text")
    assert {n for n, p in decoder.lm.named_parameters() if p.requires_grad} == {
        n for n, _ in decoder.lm.named_parameters() if "lora_" in n}
    optimized = {id(p) for group in build_optimizer(model, 1e-3, 0.1, 0.0, 1e-8).param_groups for p in group["params"]}
    assert not any(id(p) in optimized for n, p in decoder.lm.named_parameters() if "lora_" not in n)
    frames, audio = av_inputs(model.config)
    batch = {"frames": frames, "audio": audio, "input_ids": torch.tensor([[5, 6, 7, 2], [8, 9, 2, 2]]),
             "text_len": torch.tensor([4, 3])}
    batch.update(target_ids=batch["input_ids"], masked_pos=torch.zeros(2, 4, dtype=torch.bool))
    model(batch)["loss"].backward()
    with_grad = {n for n, p in decoder.lm.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    with torch.no_grad():  # non-zero adapters, so merging has something to fold
        for name, param in decoder.lm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
        model.eval()
        ids = torch.tensor([[5, 9, 12, 3]])
        unmerged = decoder.lm(input_ids=ids).logits
        decoder.unload_lora()
        merged = decoder.lm(input_ids=ids).logits
    assert not torch.equal(unmerged, built(lm_folders["llama"], training="lora").part("text").lm(input_ids=ids).logits)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_saved_adapter_reloads_onto_its_base_and_another_base_is_refused(lm_folders, tmp_path):
    model = built(lm_folders["llama"], training="lora")
    decoder = model.part("text")
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    decoder.save_adapter(tmp_path / "adapter")
    fresh = built(lm_folders["llama"], seed=1, training="lora").part("text")
    assert not torch.equal(fresh.projector[0].weight, decoder.projector[0].weight)
    fresh.load_adapter(tmp_path / "adapter")
    assert all(torch.equal(tensor, decoder.state_dict()[name]) for name, tensor in fresh.state_dict().items())
    narrower = built(lm_folders["llama"], training="lora", lora_rank=4).part("text")
    with pytest.raises(ValueError, match=r"adapter does not match the model: misshaped keys .*lora_A"):
        narrower.load_adapter(tmp_path / "adapter")

    other = save_causal_lm(tmp_path / "other", "llama", seed=7)
    elsewhere = built(other, training="lora").part("text")
    with pytest.raises(ValueError, match="trained on base weights") as caught:
        elsewhere.load_adapter(tmp_path / "adapter")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_and_uncached_decoding_give_the_same_ids(lm_folders, family, num_beams):
    decoder = built(lm_folders[family], training="full").part("text")
    # AV tokens far apart (random encoders make every video's alike), so captions differ between rows
    av_tokens = 5 * torch.randn(3, 35, 32, generator=torch.Generator().manual_seed(num_beams))
    cached = generate(decoder, av_tokens, None, num_beams=num_beams, max_length=8, use_cache=True)
    uncached = generate(decoder, av_tokens, None, num_beams=num_beams, max_length=8, use_cache=False)
    assert torch.equal(cached.token_ids, uncached.token_ids)
    assert len({tuple(row) for row in cached.token_ids.tolist()}) > 1
    torch.testing.assert_close(cached.confidence, uncached.confidence)


def test_each_part_trains_at_its_own_learning_rate_multiplier(lm_folders):
    model = built(lm_folders["gpt2"], training="frozen", lr_multiplier=0.5)
    groups = {g["name"]: g for g in build_optimizer(model, 1e-3, 0.1, 0.01, 1e-8).param_groups}
    text = model.part("text")
    assert {id(p) for p in groups["text_decay"]["params"]} == {id(text.projector[0].weight),
                                                                id(text.projector[2].weight)}
    assert groups["text_decay"]["lr"] == pytest.approx(5e-4) and groups["backbone_decay"]["lr"] == pytest.approx(1e-4)
    assert not any(p.requires_grad for p in text.lm.parameters())


def test_folder_problems_are_one_line_errors_before_any_weight_is_read(lm_folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        HFCausalLMConfig.from_folder(str(tmp_path / "absent"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((lm_folders["gpt2"] / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors only. Convert once") as caught:
        HFCausalLMConfig.from_folder(str(pickled))
    assert "\n" not in str(caught.value)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (encoder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a causal language model"):
        HFCausalLMConfig.from_folder(str(encoder))
    with pytest.raises(ValueError, match="learned AV attention mask belongs to the BERT decoder"):
        tree = causal_lm_config(lm_folders["gpt2"]).to_dict()
        tree["learn_mask_enabled"] = True
        type(causal_lm_config(lm_folders["gpt2"])).from_dict(tree)


def test_merge_lora_writes_a_plain_decoder_that_captions_the_same(lm_folders, tmp_path):
    from avlformer.cli import main as cli_main
    from avlformer.modeling.checkpoint import write_checkpoint_files

    model = built(lm_folders["llama"], training="lora")
    with torch.no_grad():
        for name, param in model.part("text").named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    source = tmp_path / "lora"
    source.mkdir()
    write_checkpoint_files(source, model.state_dict(), model.config, PreprocessRecipe(stored_frames=8, short_side=64),
                           vocab_dir=str(lm_folders["llama"]))
    assert cli_main(["merge-lora", str(source), str(tmp_path / "merged")]) == 0
    merged, config = load_model(tmp_path / "merged")
    assert config.text.training == "full" and not any("lora_" in n for n in merged.state_dict())
    frames, audio = av_inputs(model.config)
    model.eval(), merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_av(frames, audio), model.encode_av(frames, audio))
        assert torch.equal(merged.generate(frames, audio, num_beams=2).token_ids,
                           model.generate(frames, audio, num_beams=2).token_ids)
    assert cli_main(["merge-lora", str(tmp_path / "merged"), str(tmp_path / "again")]) == 1  # nothing to merge


def test_the_model_card_names_a_lora_decoders_base_and_its_hash(lm_folders):
    from avlformer.model_card import model_card_text

    config = built(lm_folders["llama"], training="lora").config
    text = model_card_text(config, PreprocessRecipe(stored_frames=8, short_side=64))
    assert config.text.weights_sha256 in text and str(lm_folders["llama"]) in text
    assert "LoRA adapters" not in model_card_text(built(lm_folders["gpt2"], training="full").config,
                                                  PreprocessRecipe(stored_frames=8, short_side=64))


def test_activation_checkpointing_of_the_lm_gives_the_same_gradients(lm_folders):
    model = built(lm_folders["llama"], training="lora")
    frames, audio = av_inputs(model.config)
    batch = {"frames": frames, "audio": audio, "input_ids": torch.tensor([[5, 6, 7, 2], [8, 9, 2, 2]]),
             "text_len": torch.tensor([4, 3])}
    batch.update(target_ids=batch["input_ids"], masked_pos=torch.zeros(2, 4, dtype=torch.bool))
    model.train()
    model(batch)["loss"].backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_activation_checkpointing(("text",))
    assert hf_checkpointing(model.part("text").lm)
    model(batch)["loss"].backward()
    recomputed = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert recomputed.keys() == plain.keys() and any("lora_" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], msg=name)
