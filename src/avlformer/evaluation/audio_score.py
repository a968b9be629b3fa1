"""AudioScore (docs/evaluation.md, "AudioScore": the README formula, not upstream's script) and TriLip, the
audio-visual-text embedding model it scores with, loaded from TriLip.bin.

TriLip.bin keeps its CLIP in OpenAI's layout (``clip.load``), which differs from transformers' in
three ways: the names; attention keeps q, k and v in one ``in_proj`` matrix (transformers has three); the two
projections are stored as (in, out) matrices applied as ``x @ P`` (transformers' Linear weights are (out, in)).
``openai_to_transformers`` undoes all three and checks that every tensor is consumed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avlformer.data.audio import pad_or_truncate
from avlformer.evaluation.clip_score import FrameTextScorer
from avlformer.evaluation.metric_models import MetricUnavailable, from_folder, model_dir
from avlformer.json_files import read_json
from avlformer.modeling.passt import PasstAudioEncoder, PasstConfig, checkpoint_filter_fn
from avlformer.modeling.weights_file import read_weights_file

GOMPERTZ_C = 10.0
GOMPERTZ_B = 0.693
GOMPERTZ_A = 1.0 / math.exp(-0.69 * math.exp(-10.0))


def gompertz(x: torch.Tensor) -> torch.Tensor:
    return GOMPERTZ_A * torch.exp(-GOMPERTZ_B * torch.exp(-GOMPERTZ_C * x))


def audio_score_from_embeddings(audio: torch.Tensor, video: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Per-item AudioScore from (N, D) audio, video and text embeddings (any scale; cosines are taken)."""
    audio_text = F.cosine_similarity(audio.float(), text.float(), dim=-1)
    audio_video = F.cosine_similarity(audio.float(), video.float(), dim=-1)
    s = (0.5 * audio_text + 0.5 * audio_video + 1) / 2
    return gompertz(s)


class AudioScorer(FrameTextScorer):
    """Scores one clip at a time with a TriLip: ``score_item(frames, waveform, caption)``; ``means()`` averages."""

    @torch.inference_mode()
    def score_item(self, image_id: str, frames: np.ndarray, waveform: np.ndarray, caption: str) -> float:
        """``frames`` uint8 (T, H, W, 3); ``waveform`` mono float32 at the PaSST sample rate (padded or cut to
        the clip length here)."""
        video = self.model.image_embeddings(self.pixels(frames)).mean(dim=0, keepdim=True)
        tokens = self.tokens([caption])
        text = self.model.text_embeddings(tokens["input_ids"], tokens["attention_mask"])
        wave = pad_or_truncate(np.asarray(waveform, np.float32), self.model.a_model.config.clip_samples)
        audio = self.model.audio_embeddings(torch.from_numpy(np.ascontiguousarray(wave)).view(1, 1, -1)
                                            .to(self.device))
        value = float(audio_score_from_embeddings(audio, video, text)[0])
        self.per_item[image_id] = value
        return value

    def means(self) -> dict[str, float]:
        """AudioScore averaged over the clips scored so far (empty before the first)."""
        return {"AudioScore": sum(self.per_item.values()) / len(self.per_item)} if self.per_item else {}


_DIRECT = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def _block_tensors(tower: str, index: str, rest: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = f"{tower}.encoder.layers.{index}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]
        query, key, val = value.chunk(3, dim=0)
        return {f"{prefix}self_attn.{name}_proj.{kind}": part
                for name, part in (("q", query), ("k", key), ("v", val))}
    module, _, kind = rest.rpartition(".")
    if module not in _BLOCK_PARTS:
        raise KeyError(rest)
    return {f"{prefix}{_BLOCK_PARTS[module]}.{kind}": value}


def openai_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI CLIP state dict for ``transformers.CLIPModel``; unknown names raise ValueError."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in state_dict.items():
        if name in ("input_resolution", "context_length", "vocab_size"):
            continue  # scalars some OpenAI exports carry; not parameters
        if name in _DIRECT:
            converted[_DIRECT[name]] = value
        elif name in _TRANSPOSED:
            converted[_TRANSPOSED[name]] = value.t().contiguous()
        elif match := _BLOCK.match(name):
            tower = "vision_model" if match.group(1) else "text_model"
            try:
                converted.update(_block_tensors(tower, match.group(2), match.group(3), value))
            except KeyError:
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"not OpenAI CLIP parameter names: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return converted


class ScalerFFN(nn.Module):
    """``LayerNorm(x + Dropout(W2 relu(W1 x)))``, eps 1e-6 (upstream's FFN block)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.dropout(self.w_2(torch.relu(self.w_1(x)))))


class TriLip(nn.Module):
    def __init__(self, clip_config, passt_config: PasstConfig, ffn_hidden: int = 2048):
        super().__init__()
        from transformers import CLIPModel

        dim = clip_config.projection_dim
        if passt_config.out_dim != dim:
            raise ValueError(f"TriLip: PaSST out_dim {passt_config.out_dim} must equal CLIP projection_dim {dim}")
        self.vl_model = CLIPModel(clip_config)
        self.a_model = PasstAudioEncoder(passt_config)
        self.logit_scale1 = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_scale2 = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.vis_scaler = ScalerFFN(dim, ffn_hidden)
        self.txt_scaler = ScalerFFN(dim, ffn_hidden)
        self.aud_scaler = ScalerFFN(dim, ffn_hidden)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) CLIP-preprocessed images -> (N, dim)."""
        clip = self.vl_model
        return self.vis_scaler(clip.visual_projection(clip.vision_model(pixel_values=pixel_values).pooler_output))

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        clip = self.vl_model
        pooled = clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.txt_scaler(clip.text_projection(pooled))

    def audio_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, samples) waveform -> (B, dim): the audio tokens' scaled embeddings, averaged (as upstream)."""
        return self.aud_scaler(self.a_model.projection(self.a_model(audio))).mean(dim=1)


def read_trilip_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """TriLip.bin (``{'model': {'module.<name>': tensor}}``, read with weights_only) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise MetricUnavailable(f"AudioScore skipped: TriLip checkpoint {path} not found (download TriLip.bin from "
                                "the FAVDBench release r-metric-score and pass --trilip-checkpoint FILE)")
    state = read_weights_file(path, "TriLip checkpoint")
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected {{'model': {{name: tensor}}}} or a flat dict of tensors")
    return {key.removeprefix("module."): value for key, value in state.items()}


def trilip_state_for(model: TriLip, state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Upstream TriLip names -> this module's names (CLIP renamed, PaSST filtered)."""
    groups: dict[str, dict[str, torch.Tensor]] = {"vl_model.": {}, "a_model.net.": {}, "": {}}
    for key, value in state.items():
        prefix = next(p for p in groups if key.startswith(p))
        groups[prefix][key[len(prefix):]] = value
    try:
        clip = openai_to_transformers(groups["vl_model."])
        passt, _dropped_heads = checkpoint_filter_fn(groups["a_model.net."], model.a_model.config)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    return ({f"vl_model.{k}": v for k, v in clip.items()} | {f"a_model.net.{k}": v for k, v in passt.items()}
            | groups[""])


def load_trilip(checkpoint: str | os.PathLike, clip_dir: str | os.PathLike | None,
                passt_config: PasstConfig | None = None, device: torch.device | str = "cpu"):
    """(TriLip in eval mode, CLIP tokenizer, CLIP image processor); ``passt_config`` defaults to the paper's."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPConfig

    state = read_trilip_state(checkpoint)
    clip_dir = model_dir(clip_dir, "AudioScore", "--clip-model", "CLIP ViT-B/32, whose configuration, tokenizer and "
                         "preprocessing TriLip needs (openai/clip-vit-base-patch32)")
    hidden = state["vis_scaler.w_1.weight"].shape[0] if "vis_scaler.w_1.weight" in state else 2048
    model = TriLip(from_folder(CLIPConfig, clip_dir, "AudioScore"), passt_config or PasstConfig.paper(),
                   ffn_hidden=hidden)
    converted = trilip_state_for(model, state, str(checkpoint))
    try:
        missing, unexpected = model.load_state_dict(converted, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{checkpoint}: does not match TriLip built from {clip_dir}: {error}") from None
    # position_ids-style buffers are not parameters of the checkpoint; anything else missing is an error.
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{checkpoint}: does not match TriLip built from {clip_dir} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    tokenizer = from_folder(AutoTokenizer, clip_dir, "AudioScore")
    image_processor = from_folder(AutoImageProcessor, clip_dir, "AudioScore")
    return model.to(device).eval(), tokenizer, image_processor


def read_passt_config(path: str | os.PathLike | None) -> PasstConfig:
    """PasstConfig from a JSON file of its fields (``PasstConfig.to_dict()``); the paper's when ``path`` is None."""
    if path is None:
        return PasstConfig.paper()
    data = read_json(path, "PaSST config JSON (--trilip-passt-config)")
    try:
        return PasstConfig.from_dict(data)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: not a PaSST config JSON ({error})") from None
