"""Encoders from ``transformers`` as parts: tiny random video models (VideoMAE, TimeSformer, ViViT), image models
applied per frame (CLIP, SigLIP, DINOv2, X-CLIP's vision tower, a timm ViT) and audio models (AST, Whisper's
encoder, CLAP's audio tower, wav2vec2, HuBERT), saved to a temporary folder, train a few steps, save, reload
bit-exactly and caption (with the paper's decoder or a LoRA causal LM); each wrapped part computes what the HF
model computes on the inputs its own processor builds; a model of the wrong kind is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data import synth
from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tokenizer import load_tokenizer
from avlformer.modeling.avlformer import AVLFormer
from avlformer.modeling.checkpoint import load_model
from avlformer.modeling.hf_causal_lm import HFCausalLMConfig
from avlformer.modeling.hf_audio import HFAudioConfig
from avlformer.modeling.hf_encoders import HFFramesConfig, HFVideoConfig
from avlformer.training import loop
from avlformer.training.args import parse_train_args
import hf_fakes
from hf_fakes import hf_parts_config, save_causal_lm
from training_fakes import FakeCaptionDataset


VIDEO_MODELS = ("videomae", "timesformer", "vivit")
IMAGE_MODELS = ("clip", "siglip", "dinov2", "xclip", "timm_vit", "timm_resnet")
AUDIO_MODELS = ("ast", "whisper", "clap", "wav2vec2", "hubert")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    made = {name: getattr(hf_fakes, f"save_{name}")(root / name) for name in VIDEO_MODELS + IMAGE_MODELS
            + AUDIO_MODELS}
    return {**made, "llama": save_causal_lm(root / "llama", "llama")}


def part(kind: str, folder) -> dict:
    config = {"hf_video": HFVideoConfig, "hf_frames": HFFramesConfig, "hf_audio": HFAudioConfig}[kind]
    return {"type": kind, **config.from_folder(str(folder)).to_dict()}


def named_part(name: str, folders) -> dict:
    kind = "hf_video" if name in VIDEO_MODELS else "hf_frames" if name in IMAGE_MODELS else "hf_audio"
    return part(kind, folders[name])


def inputs(config, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (batch, config.num_frames, 3, config.image_size, config.image_size),
                           dtype=torch.uint8, generator=gen)
    return frames, 0.1 * torch.randn(batch, 1, config.audio.clip_samples, generator=gen)


@pytest.mark.parametrize("recipe", ["videomae-ast-bert", "clip-whisper-llama", "vivit-wav2vec2-bert",
                                    "xclip-clap-bert"])
def test_hf_encoders_train_save_reload_bit_exactly_and_caption(folders, tmp_path, recipe):
    video_name, audio_name, decoder = recipe.split("-")
    video = named_part(video_name, folders)
    text = None
    if decoder == "llama":
        text = {"type": "hf_causal_lm", **HFCausalLMConfig.from_folder(str(folders["llama"]), img_feature_dim=32,
                                                                       training="lora").to_dict()}
    config = hf_parts_config(video, part("hf_audio", folders[audio_name]), text)
    torch.manual_seed(0)
    model = AVLFormer(config)
    for role, name in (("video", video_name), ("audio", audio_name)) + ((("text", "llama"),) if text else ()):
        model.load_part_weights(role, str(folders[name]))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tokenizer = load_tokenizer(str(folders["llama"])) if text else None
    argv = ["--output-dir", str(tmp_path / "run"), "--per-gpu-train-batch-size", "2", "--num-train-epochs", "1",
            "--learning-rate", "1e-3", "--backbone-coef-lr", "1", "--num-workers", "0", "--device", "cpu",
            "--logging-steps", "1", "--save-steps", "2"]
    result = loop.train(parse_train_args(argv, model_config=config), model=model,
                        train_dataset=FakeCaptionDataset(config, 4, tokenizer=tokenizer),
                        recipe=PreprocessRecipe(stored_frames=8, short_side=64))
    trained = model.state_dict()
    for prefix in ("video.model.", "audio.model."):  # each HF encoder trained
        assert any(not torch.equal(trained[n], before[n]) for n in trained if n.startswith(prefix))

    reloaded, reloaded_config = load_model(result.last_checkpoint)
    assert reloaded_config == config
    assert reloaded_config.audio.feature_extractor == config.audio.feature_extractor  # preprocessing travels
    assert all(torch.equal(tensor, trained[name]) for name, tensor in reloaded.state_dict().items())
    frames, audio = inputs(config)
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_av(frames, audio), reloaded.encode_av(frames, audio))
        assert torch.equal(model.generate(frames, audio).token_ids, reloaded.generate(frames, audio).token_ids)
    if decoder == "llama":  # the whole command path: raw video -> recipe -> model -> the LM's own tokenizer
        synth.synthesize(tmp_path / "raw", {"test": 1}, seed=3, workers=1, progress=False)
        video_file = next((tmp_path / "raw" / "videos" / "test").glob("*.mp4"))
        assert cli_main(["caption", "--model", str(result.last_checkpoint), str(video_file), "--device", "cpu",
                         "--num-workers", "0"]) == 0


def _own_pixels(folder, frames: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) as the folder's own processor makes them (a timm folder: its pretrained_cfg mean/std)."""
    import json

    from transformers import AutoImageProcessor

    config = json.loads((folder / "config.json").read_text())
    if "architecture" in config:
        mean, std = (torch.tensor(config["pretrained_cfg"][k]).view(1, 1, 3, 1, 1) for k in ("mean", "std"))
        return (frames.float() / 255 - mean) / std
    processor = AutoImageProcessor.from_pretrained(str(folder))
    images = [frame.permute(1, 2, 0).numpy() for frame in frames.flatten(0, 1)]
    pixels = processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
    return pixels.reshape(frames.shape).float()


def _direct_video(name: str, folder, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own output on ``pixels``: a video model's tokens, or an image model's per-frame tokens pooled
    as hf_frames states (class/register tokens dropped, each 2x2 patch block and each group of 2 frames
    averaged)."""
    import transformers

    if name in VIDEO_MODELS:
        cls = {"videomae": "VideoMAEModel", "timesformer": "TimesformerModel", "vivit": "VivitModel"}[name]
        extra = {"add_pooling_layer": False} if name == "vivit" else {}
        return getattr(transformers, cls).from_pretrained(str(folder), **extra).eval()(
            pixel_values=pixels).last_hidden_state
    flat = pixels.flatten(0, 1)
    if name.startswith("timm_"):
        import json

        import timm
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text())
        model = timm.create_model(config["architecture"], pretrained=False, **config["model_args"]).eval()
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        hidden = model.forward_features(flat)
    else:
        whole = {"clip": "CLIPModel", "siglip": "SiglipModel", "xclip": "XCLIPModel", "dinov2": "Dinov2Model"}[name]
        model = getattr(transformers, whole).from_pretrained(str(folder)).eval()
        hidden = getattr(model, "vision_model", model)(pixel_values=flat).last_hidden_state
    if hidden.dim() == 4:  # a convolutional model's (B·T, C, 2, 2) map: already 2x2, each cell a token
        return hidden.reshape(2, 4, 2, -1, 4).mean(2).transpose(2, 3).flatten(1, 2)
    grid = hidden[:, -16:].reshape(2, 4, 2, 2, 2, 2, 2, -1)  # (B, groups, frames, rows, 2, columns, 2, C)
    return grid.mean(dim=(2, 4, 6)).flatten(1, 3)


@pytest.mark.parametrize("name", VIDEO_MODELS + IMAGE_MODELS)
def test_video_and_image_parts_compute_what_the_hf_models_compute(folders, name):
    config = hf_parts_config(named_part(name, folders), part("hf_audio", folders["ast"]))
    model = AVLFormer(config)
    model.load_part_weights("video", str(folders[name]))
    frames, audio = inputs(config)
    with torch.no_grad():
        ours = model.eval().encoder_outputs(frames, audio)[0]
        theirs = _direct_video(name, folders[name], _own_pixels(folders[name], frames))
    assert ours.shape == (2, config.num_video_tokens, config.video.token_width)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _direct_audio(name: str, folder, features) -> torch.Tensor:
    """The audio model's own output on its own extractor's ``features``."""
    import transformers

    if name == "whisper":
        encoder = transformers.WhisperModel.from_pretrained(str(folder)).eval().get_encoder()
        return encoder(input_features=features["input_features"]).last_hidden_state
    if name == "clap":  # the audio tower's feature map (B, C, F, T), its cells as tokens
        tower = transformers.ClapModel.from_pretrained(str(folder)).eval().audio_model
        cells = tower(input_features=features["input_features"], is_longer=features["is_longer"])
        return cells.last_hidden_state.flatten(2).transpose(1, 2)
    cls = {"ast": "ASTModel", "wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel"}[name]
    direct = getattr(transformers, cls).from_pretrained(str(folder)).eval()
    return direct(input_values=features["input_values"]).last_hidden_state  # wav2vec2/HuBERT: the 16 kHz wave


@pytest.mark.parametrize("name", AUDIO_MODELS)
def test_audio_parts_compute_what_the_hf_models_compute(folders, name):
    import torchaudio.functional as AF
    from transformers import AutoFeatureExtractor

    config = hf_parts_config(part("hf_video", folders["videomae"]), named_part(name, folders))
    model = AVLFormer(config)
    model.load_part_weights("audio", str(folders[name]))
    frames, audio = inputs(config)
    extractor = AutoFeatureExtractor.from_pretrained(str(folders[name]))
    waves = [AF.resample(row[0], 32000, extractor.sampling_rate).numpy() for row in audio]
    features = extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        ours = model.eval().encoder_outputs(frames, audio)[1]
        theirs = _direct_audio(name, folders[name], features)
    assert ours.shape == (2, config.num_audio_tokens, config.audio.token_width)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert np.isfinite(ours.numpy()).all()


def test_a_model_of_the_wrong_kind_or_shape_is_a_one_line_error(folders, tmp_path):
    with pytest.raises(ValueError, match="'clip' cannot serve as an audio encoder") as caught:
        HFAudioConfig.from_folder(str(folders["clip"]))
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="cannot serve as a video encoder"):
        HFVideoConfig.from_folder(str(folders["ast"]))
    with pytest.raises(FileNotFoundError, match="folder not found"):
        HFFramesConfig.from_folder(str(tmp_path / "nowhere"))
    tree = hf_parts_config(part("hf_video", folders["videomae"]), part("hf_audio", folders["ast"])).to_dict()
    tree["num_frames"] = 16
    with pytest.raises(ValueError, match="takes 8 frames of 64 px, the model gives 16 of 64 px"):
        type(hf_parts_config(part("hf_video", folders["videomae"]), part("hf_audio", folders["ast"]))).from_dict(tree)


def test_a_meta_build_leaves_the_global_random_generator_alone(folders):
    """HF parts are built on the CPU even on the meta device; that throwaway build (the training log's size line,
    checkpoint loading) must not shift the random numbers the real model's initial weights are drawn from."""
    from avlformer.modeling.meta_device import build_on_meta

    text = {"type": "hf_causal_lm", **HFCausalLMConfig.from_folder(str(folders["llama"]), img_feature_dim=32,
                                                                   training="lora").to_dict()}
    config = hf_parts_config(part("hf_frames", folders["clip"]), part("hf_audio", folders["ast"]), text)
    torch.manual_seed(0)
    build_on_meta(lambda: AVLFormer(config))
    after_meta = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_meta, torch.rand(4))


def test_training_from_cached_features_equals_end_to_end_with_frozen_hf_encoders(folders):
    from avlformer.data.dataset import collate
    from avlformer.data.features import to_storage
    from avlformer.training.features import encoder_spec, freeze_encoders

    text = {"type": "hf_causal_lm", **HFCausalLMConfig.from_folder(str(folders["llama"]), img_feature_dim=32,
                                                                   training="lora").to_dict()}
    config = hf_parts_config(part("hf_frames", folders["clip"]), part("hf_audio", folders["whisper"]), text)
    torch.manual_seed(0)
    model = AVLFormer(config)
    freeze_encoders(model)
    spec = encoder_spec(model)
    assert (spec.num_video_tokens, spec.num_audio_tokens) == (config.num_video_tokens, config.num_audio_tokens)
    data = FakeCaptionDataset(config, 2, tokenizer=load_tokenizer(str(folders["llama"])))
    batch = collate([data[0], data[1]])
    model(batch)["loss"].backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        video, audio = model.encoder_outputs(batch["frames"], batch["audio"])
    cached = {k: v for k, v in batch.items() if k not in ("frames", "audio")}
    cached.update(video_features=torch.from_numpy(to_storage(video, "fp32")),
                  audio_features=torch.from_numpy(to_storage(audio, "fp32")))
    model(cached)["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == reference.keys() and any("lora_" in n for n in grads)
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], msg=name)
