"""Parts chosen by ``type``: a video encoder defined and registered in this file only trains, saves, reloads
bit-exactly and captions a video; unknown types are one-line errors; configs without ``type`` are the paper's;
code outside modeling/ names no part by its attribute."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avlformer.cli import main as cli_main
from avlformer.data import synth
from avlformer.data.recipe import PreprocessRecipe
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import load_model
from avlformer.modeling.parts import register_part
from avlformer.training import loop
from avlformer.training.args import parse_train_args
from training_fakes import FakeCaptionDataset, deterministic_tiny_config

SRC = Path(__file__).resolve().parents[1] / "src" / "avlformer"


# ------------------------------------------------------------------------------------------- the new part
@dataclass
class FramePoolConfig:
    """Each frame -> patch embedding -> pooled to ``pool`` x ``pool`` tokens; ``group`` frames averaged."""

    width: int = 24
    patch: int = 8
    pool: int = 2
    group: int = 2

    @property
    def token_width(self) -> int:
        return self.width

    def num_tokens(self, num_frames: int, image_size: int) -> int:
        return num_frames // self.group * self.pool ** 2

    def check_fits(self, model_config) -> None:
        if model_config.num_frames % self.group:
            raise ValueError(f"video.group {self.group} does not divide num_frames {model_config.num_frames}")


class FramePoolEncoder(nn.Module):
    def __init__(self, config: FramePoolConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Conv2d(3, config.width, config.patch, stride=config.patch)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        pass  # nothing worth recomputing

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        batch, num_frames = frames.shape[:2]
        tokens = F.adaptive_avg_pool2d(self.embed(frames.flatten(0, 1)), cfg.pool)  # (B·T, C, pool, pool)
        tokens = tokens.view(batch, num_frames // cfg.group, cfg.group, cfg.width, cfg.pool ** 2).mean(2)
        return tokens.transpose(2, 3).flatten(1, 2)  # (B, groups·pool², C)


register_part("video", "frame_pool", FramePoolConfig, FramePoolEncoder)


def frame_pool_config(**video) -> AVLFormerConfig:
    tree = deterministic_tiny_config().to_dict()
    tree["video"] = {"type": "frame_pool", **video}
    return AVLFormerConfig.from_dict(tree)


# ------------------------------------------------------------------------------------------- tests
def test_a_registered_part_trains_saves_reloads_bit_exactly_and_captions(tmp_path):
    config = frame_pool_config(width=20)
    assert config.num_video_tokens == 8 // 2 * 4
    torch.manual_seed(0)
    model = AVLFormer(config)
    assert isinstance(model.part("video"), FramePoolEncoder)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    argv = ["--output-dir", str(tmp_path / "run"), "--per-gpu-train-batch-size", "2", "--num-train-epochs", "1",
            "--learning-rate", "1e-3", "--backbone-coef-lr", "1", "--num-workers", "0", "--device", "cpu",
            "--logging-steps", "1", "--save-steps", "1"]
    recipe = PreprocessRecipe(stored_frames=8, short_side=64)
    result = loop.train(parse_train_args(argv, model_config=config), model=model,
                        train_dataset=FakeCaptionDataset(config, 4), recipe=recipe)
    assert result.global_step == 2
    trained = model.state_dict()
    assert not torch.equal(trained["video.embed.weight"], before["video.embed.weight"])  # the part trained
    assert not torch.equal(trained["fc.weight"], before["fc.weight"])  # and its projection

    reloaded, reloaded_config = load_model(result.last_checkpoint)
    assert reloaded_config == config and isinstance(reloaded.part("video"), FramePoolEncoder)
    assert all(torch.equal(tensor, trained[name]) for name, tensor in reloaded.state_dict().items())
    frames = torch.randint(0, 256, (2, 8, 3, 64, 64), dtype=torch.uint8)
    audio = 0.1 * torch.randn(2, 1, config.audio.clip_samples)
    model.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_av(frames, audio), reloaded.encode_av(frames, audio))
        assert torch.equal(model.generate(frames, audio).token_ids, reloaded.generate(frames, audio).token_ids)

    synth.synthesize(tmp_path / "raw", {"test": 1}, seed=3, workers=1, progress=False)
    video = next((tmp_path / "raw" / "videos" / "test").glob("*.mp4"))
    assert cli_main(["caption", "--model", str(result.last_checkpoint), str(video), "--device", "cpu",
                     "--num-workers", "0"]) == 0


def test_training_machinery_finds_the_new_part_by_role():
    from types import SimpleNamespace

    from avlformer.training.distributed import fsdp_units
    from avlformer.training.features import encoder_spec, freeze_encoders
    from avlformer.training.setup import apply_freezing
    from avlformer.training.optim import build_optimizer

    config = frame_pool_config()
    model = AVLFormer(config)
    encoder, decoder = model.part("video"), model.part("text")
    groups = {g["name"]: g["params"] for g in build_optimizer(model, 1e-3, 0.1, 0.0, 1e-8).param_groups}
    assert groups["backbone_decay"] == [encoder.embed.weight] and groups["backbone_no_decay"] == [encoder.embed.bias]
    assert fsdp_units(model) == [(model.fc, True), (model.passt.linear, True), (encoder, True), (model.passt, True),
                     (decoder, False)]
    spec = encoder_spec(model)
    assert (spec.num_video_tokens, spec.video_dim) == (config.num_video_tokens, config.video.width)
    freeze_encoders(model)
    assert not encoder.embed.weight.requires_grad and model.fc.weight.requires_grad
    assert encoder not in [module for module, _ in fsdp_units(model)]  # end to end, frozen stays in the root
    assert encoder in [module for module, _ in fsdp_units(model, features=True)]
    model.requires_grad_(True)
    apply_freezing(model, SimpleNamespace(optim=SimpleNamespace(freeze_backbone=True, freeze_passt=False,
                                                               freeze_embedding=True)))
    assert not any(p.requires_grad for p in encoder.parameters()) and model.fc.weight.requires_grad
    assert [n for n, p in decoder.named_parameters() if not p.requires_grad] == [
        "bert.embeddings.word_embeddings.weight"]


def test_unknown_type_is_a_one_line_error_naming_the_registered_types(tmp_path):
    tree = AVLFormerConfig.tiny().to_dict()
    tree["video"]["type"] = "video_swim"
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(tree))
    with pytest.raises(ValueError) as caught:
        AVLFormerConfig.load(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    assert "video.type 'video_swim' is not a registered video encoder" in message
    assert "frame_pool" in message and "video_swin" in message


def test_a_part_that_cannot_serve_the_model_is_refused():
    with pytest.raises(ValueError, match="group 3 does not divide num_frames 8"):
        frame_pool_config(group=3)
    with pytest.raises(ValueError, match="FramePoolConfig: unknown keys"):
        frame_pool_config(widht=8)


def test_configs_written_before_type_existed_load_as_the_paper_parts():
    tree = AVLFormerConfig.tiny().to_dict()
    assert [tree[role]["type"] for role in ("video", "audio", "text")] == ["video_swin", "passt", "bert"]
    for role in ("video", "audio", "text"):
        del tree[role]["type"]
    assert AVLFormerConfig.from_dict(tree) == AVLFormerConfig.tiny()


def test_the_model_does_not_import_h5py():
    code = "import sys, avlformer.modeling.avlformer, avlformer.modeling.checkpoint; print('h5py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_code_outside_modeling_names_parts_by_role():
    """Only modeling/ (which holds the paper parts and the released-weight converters) knows the attributes."""
    attribute = re.compile(r"(?<!modeling)\.(swin|passt|trans_encoder|fc)\b(?!_)|[\"'](swin|passt|trans_encoder|fc)\.")
    found = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
             for path in SRC.rglob("*.py") if "modeling" not in path.parts
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if attribute.search(line)]
    assert found == []
