"""AVLFormer: a video encoder and an audio encoder feeding a text decoder, each a part chosen by ``type``
(modeling/parts.py, docs/parts.md).

Token order, projections and norms are upstream's (docs/upstream.md §3.1): ``[text ; video (projected) ; audio
(projected, then a parameter-free RMS norm)]``, with a learned AV→AV attention mask (``learn_vid_att``). Code
outside modeling/ reaches the parts by role (``part``, ``projection``), never by attribute name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from avlformer.config_fields import FieldTypeError, checked_fields
from avlformer.atomic import write_text_atomic
from avlformer.data.token_ids import PAD_ID
from avlformer.data.transforms import frames_for_model
from avlformer.json_files import read_json
from avlformer.modeling.attention_mask import build_attention_mask, learned_av_mask, mask_to_bias, sparsity_loss
from avlformer.modeling.generation import GenerationOutput, decoding, generate
from avlformer.modeling.meta_device import build_on_meta
from avlformer.modeling.parts import ROLES, describe_part, part_config_from_dict, part_config_to_dict, type_of
from avlformer.modeling.passt import PasstConfig, rms_norm
from avlformer.modeling.text_transformer import TextTransformerConfig
from avlformer.modeling.video_swin import VideoSwinConfig

FEATURE_KEYS = ("video_features", "audio_features")  # the batch keys forward reads instead of frames and audio
# Video Swin's activations dominate a paper-size step; PaSST's and the text model's are small next to the weights
# and optimizer state (docs/training.md, "Training speed and memory").
WORTH_CHECKPOINTING = ("video",)


@dataclass
class AVLFormerConfig:
    """Everything that defines an AVLFormer; saved as ``config.json`` with every checkpoint."""

    video: Any = field(default_factory=VideoSwinConfig.base)
    audio: Any = field(default_factory=PasstConfig.paper)
    text: Any = field(default_factory=TextTransformerConfig.base)
    num_frames: int = 32
    image_size: int = 224
    img_feature_dim: int = 512
    learn_mask_enabled: bool = True
    sparse_mask_soft2hard: bool = False
    lm_loss_weight: float = 0.1        # upstream lambda_: loss = λ·LM + (1-λ)·MLM
    sparsity_loss_weight: float = 0.5  # upstream loss_sparse_w
    max_seq_length: int = 300
    max_gen_length: int = 115
    num_beams: int = 1
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        for role in ROLES:
            type_of(role, getattr(self, role))  # a registered part's config
            try:
                getattr(getattr(self, role), "check_fits", lambda _: None)(self)
            except ValueError as error:
                problems.append(str(error))
        if self.text.img_feature_dim != self.img_feature_dim:
            problems.append(f"text.img_feature_dim {self.text.img_feature_dim} != img_feature_dim "
                            f"{self.img_feature_dim}")
        for name in ("max_seq_length", "max_gen_length"):
            if not 2 <= getattr(self, name) <= self.text.max_position_embeddings:
                problems.append(f"{name} {getattr(self, name)} must lie in [2, text.max_position_embeddings="
                                f"{self.text.max_position_embeddings}]")
        if not 0.0 <= self.lm_loss_weight <= 1.0:
            problems.append(f"lm_loss_weight {self.lm_loss_weight} must lie in [0, 1]")
        if self.num_beams < 1:
            problems.append(f"num_beams {self.num_beams} must be >= 1")
        if problems:
            raise ValueError("invalid AVLFormerConfig: " + "; ".join(problems))

    @classmethod
    def paper(cls) -> "AVLFormerConfig":
        """The released model: 32 frames at 224 px (784 video tokens) + 473 audio tokens = 1257 AV tokens."""
        return cls()

    @classmethod
    def tiny(cls) -> "AVLFormerConfig":
        """Nano parts: 8 frames of 64x64 (16 video tokens) + 1 s audio (19 tokens)."""
        return cls(video=VideoSwinConfig.nano(), audio=PasstConfig.nano(),
                   text=replace(TextTransformerConfig.nano(), img_feature_dim=32), num_frames=8, image_size=64,
                   img_feature_dim=32, max_seq_length=64, max_gen_length=40)

    @property
    def num_video_tokens(self) -> int:
        return self.video.num_tokens(self.num_frames, self.image_size)

    @property
    def num_audio_tokens(self) -> int:
        return self.audio.num_tokens

    @property
    def num_av_tokens(self) -> int:
        return self.num_video_tokens + self.num_audio_tokens

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for role in ROLES:
            data[role] = part_config_to_dict(role, data[role])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AVLFormerConfig":
        values = checked_fields(cls, data)
        for role in ROLES:
            if role not in values:
                continue
            if not isinstance(values[role], Mapping):
                raise ValueError(f"{role} must be an object, got {values[role]!r}")
            try:
                values[role] = part_config_from_dict(role, values[role])
            except FieldTypeError as error:
                raise error.inside(role) from None
            except (TypeError, ValueError) as error:
                message = str(error)
                raise ValueError(message if message.startswith(f"{role}.type") else f"{role}: {message}") from None
        return cls(**values)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "AVLFormerConfig":
        data = read_json(path, "model config")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


PROJECTION_ATTRIBUTES = {"video": "fc", "audio": "audio_fc"}


class AVLFormer(nn.Module):
    def __init__(self, config: AVLFormerConfig):
        super().__init__()
        self.config = config
        self._attributes = {role: type_of(role, getattr(config, role)).attribute for role in ROLES}
        # Upstream's state_dict order, which saved optimizer states follow.
        self._add_part("video")
        self._add_part("text")
        self._add_projection("video")
        self._add_part("audio")
        self._add_projection("audio")
        if config.learn_mask_enabled:
            num_av = config.num_av_tokens
            self.learn_vid_att = nn.Embedding(num_av * num_av, 1)  # N(0, 1) init, as upstream

    def _add_part(self, role: str) -> None:
        part_config = getattr(self.config, role)
        setattr(self, self._attributes[role], type_of(role, part_config).build(part_config))

    def _add_projection(self, role: str) -> None:
        if getattr(self.part(role), "projection", None) is None:
            width = getattr(self.config, role).token_width
            setattr(self, PROJECTION_ATTRIBUTES[role], nn.Linear(width, self.config.img_feature_dim))

    def part(self, role: str) -> nn.Module:
        return getattr(self, self._attributes[role])

    def projection(self, role: str) -> nn.Module:
        carried = getattr(self.part(role), "projection", None)
        return carried if carried is not None else getattr(self, PROJECTION_ATTRIBUTES[role])

    def load_part_weights(self, role: str, path: str) -> Any:
        entry = type_of(role, getattr(self.config, role))
        if entry.load_weights is None:
            raise ValueError(f"the {role} part type {entry.name!r} has no loader for pretrained weights")
        return entry.load_weights(self.part(role), path)

    def set_activation_checkpointing(self, parts=WORTH_CHECKPOINTING) -> None:
        """Recompute in backward the activations of exactly ``parts``; ``()`` turns checkpointing off."""
        unknown = sorted(set(parts) - set(ROLES))
        if unknown:
            raise ValueError(f"activation checkpointing: unknown parts {unknown}; choose from {ROLES}")
        for role in ROLES:
            self.part(role).set_gradient_checkpointing(role in parts)

    # ------------------------------------------------------------------------------------------- encoders
    def encode_av(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, 3, H, W; uint8 as the loaders give them, or normalised float) + audio (B, 1, S) -> AV
        tokens (B, V, img_feature_dim), video first."""
        return self.project_av(*self.encoder_outputs(frames, audio))

    def encoder_outputs(self, frames: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoders' outputs before the projections (what ``extract-features`` caches): (B, Nv, video width)
        and (B, Na, audio width)."""
        self._check_av_inputs(frames, audio)
        # Through each part's forward(), where FSDP2 gathers its parameters (training/distributed.py).
        return self.part("video")(frames_for_model(frames)), self.part("audio")(audio)

    def project_av(self, video: torch.Tensor, sound: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (live or cached) -> AV tokens."""
        return torch.cat([self.projection("video")(video), rms_norm(self.projection("audio")(sound))], dim=1)

    def _check_av_inputs(self, frames: torch.Tensor, audio: torch.Tensor) -> None:
        cfg = self.config
        expected_frames = (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected_frames:
            raise ValueError(f"frames: expected shape (B, {', '.join(map(str, expected_frames))}) "
                             f"= (batch, num_frames, RGB, image_size, image_size), got {tuple(frames.shape)}")
        samples = cfg.audio.clip_samples
        if audio.dim() != 3 or tuple(audio.shape[1:]) != (1, samples):
            raise ValueError(f"audio: expected shape (B, 1, {samples}) = mono {cfg.audio.clip_seconds} s at "
                             f"{cfg.audio.sample_rate} Hz, got {tuple(audio.shape)}")
        if frames.shape[0] != audio.shape[0]:
            raise ValueError(f"frames and audio batch sizes differ: {frames.shape[0]} vs {audio.shape[0]}")

    def av_attention_mask(self) -> torch.Tensor | None:
        """The (V, V) AV→AV mask: learned σ(W) with diagonal 1, or None (attend to all) without a learned mask."""
        if not self.config.learn_mask_enabled:
            return None
        return learned_av_mask(self.learn_vid_att.weight, self.config.num_av_tokens,
                               self.config.sparse_mask_soft2hard)

    # ------------------------------------------------------------------------------------------- training
    def forward(self, batch: Mapping[str, Any], av_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training losses for a collated batch (docs/architecture.md, "Batch contract"): loss, lm_loss, mlm_loss,
        sparsity_loss, mlm_accuracy; ``av_tokens``: the batch's, when the caller has encoded it already. A prefix-LM
        decoder (``is_prefix_lm``) computes its LM loss itself (MLM and sparsity then zero)."""
        input_ids, target_ids, masked_pos, text_len = self._checked_text(batch)
        if av_tokens is None:
            av_tokens = self.batch_av_tokens(batch)
        if getattr(self.part("text"), "is_prefix_lm", False):
            losses = self.part("text")(av_tokens, input_ids, text_len)
            zero = losses["loss"].new_zeros(())
            return {"loss": losses["loss"], "lm_loss": losses["loss"], "mlm_loss": zero, "sparsity_loss": zero,
                    "mlm_accuracy": losses["accuracy"]}
        max_text_len, num_av = input_ids.shape[1], av_tokens.shape[1]
        mask = build_attention_mask(text_len, max_text_len, num_av, self.av_attention_mask(), dtype=av_tokens.dtype)
        decoder = self.part("text")
        hidden = decoder(input_ids, av_tokens, mask_to_bias(mask), output_rows=max_text_len)

        lm_targets = F.pad(target_ids[:, 1:], (0, 1), value=PAD_ID)
        lm_positions = lm_targets != PAD_ID
        needed = lm_positions | masked_pos
        # The 30522-way head only where a loss needs it (not over all 300 positions).
        logits = decoder.logits(hidden[needed])
        is_lm, is_mlm = lm_positions[needed], masked_pos[needed]
        # One log-softmax over the needed rows, both targets gathered from it: indexing the (rows, vocab) logits
        # per loss would copy them twice and scatter both copies back in the backward pass.
        log_probs = logits.float().log_softmax(-1)
        mlm_targets = target_ids[needed]
        picked = log_probs.gather(1, torch.stack([lm_targets[needed], mlm_targets], dim=1))
        lm_loss = _masked_mean(-picked[:, 0], is_lm)
        mlm_loss = _masked_mean(-picked[:, 1], is_mlm)
        sparsity = self.sparsity_term(hidden)
        cfg = self.config
        loss = (cfg.lm_loss_weight * lm_loss + (1 - cfg.lm_loss_weight) * mlm_loss
                + cfg.sparsity_loss_weight * sparsity)
        with torch.no_grad():
            accuracy = ((logits[is_mlm].argmax(-1) == mlm_targets[is_mlm]).float().mean() if is_mlm.any()
                        else hidden.new_zeros(()))
        return {"loss": loss, "lm_loss": lm_loss, "mlm_loss": mlm_loss, "sparsity_loss": sparsity,
                "mlm_accuracy": accuracy}

    def batch_av_tokens(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The AV tokens of a batch: from its frames and audio, or from cached encoder outputs."""
        if FEATURE_KEYS[0] in batch:
            return self.project_av(batch[FEATURE_KEYS[0]], batch[FEATURE_KEYS[1]])
        return self.encode_av(batch["frames"], batch["audio"])

    def sparsity_term(self, like: torch.Tensor) -> torch.Tensor:
        """The learned mask's unweighted sparsity loss (zero without one)."""
        if not self.config.learn_mask_enabled:
            return like.new_zeros((), dtype=torch.float32)
        return sparsity_loss(self.learn_vid_att.weight, self.config.num_av_tokens)

    def _checked_text(self, batch: Mapping[str, Any]):
        media = FEATURE_KEYS if FEATURE_KEYS[0] in batch else ("frames", "audio")
        required = (*media, "input_ids", "target_ids", "masked_pos", "text_len")
        missing = [k for k in required if k not in batch]
        if missing:
            raise KeyError(f"training batch lacks {missing}")
        input_ids, target_ids = batch["input_ids"], batch["target_ids"]
        masked_pos, text_len = batch["masked_pos"].bool(), batch["text_len"]
        if input_ids.dim() != 2 or target_ids.shape != input_ids.shape or masked_pos.shape != input_ids.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)}, target_ids {tuple(target_ids.shape)} and "
                             f"masked_pos {tuple(masked_pos.shape)} must all be (B, L)")
        if input_ids.shape[1] > self.config.text.max_position_embeddings:
            raise ValueError(f"text length {input_ids.shape[1]} exceeds the position table "
                             f"({self.config.text.max_position_embeddings})")
        if text_len.shape != (input_ids.shape[0],):
            raise ValueError(f"text_len must be (B,) = ({input_ids.shape[0]},), got {tuple(text_len.shape)}")
        return input_ids, target_ids, masked_pos, text_len

    # ------------------------------------------------------------------------------------------- decoding
    def generate(self, frames: torch.Tensor, audio: torch.Tensor, num_beams: int | None = None,
                 max_length: int | None = None, length_penalty: float | None = None,
                 use_cache: bool = True) -> GenerationOutput:
        """Captions as token ids (B, max_length) after [CLS], ending in [SEP] then [PAD], plus confidences;
        defaults from the config."""
        cfg = self.config
        with decoding(self):
            av_tokens = self.encode_av(frames, audio)
            return generate(self.part("text"), av_tokens, self.av_attention_mask(),
                            max_length=max_length or cfg.max_gen_length, num_beams=num_beams or cfg.num_beams,
                            length_penalty=cfg.length_penalty if length_penalty is None else length_penalty,
                            use_cache=use_cache)


def describe_model(config: AVLFormerConfig, parameters: int | None = None) -> str:
    """One line saying what ``AVLFormer(config)`` is and costs, e.g. ``AVLFormer: Swin-B, PaSST-S, 12-layer text
    transformer, 32 frames at 224 px: 308.8 M parameters, 1235 MB fp32`` (``parameters`` is counted on the meta
    device unless the caller has counted it)."""
    if parameters is None:
        parameters = sum(p.numel() for p in build_on_meta(lambda: AVLFormer(config)).parameters())
    names = ", ".join(describe_part(role, getattr(config, role)) for role in ROLES)
    return (f"AVLFormer: {names}, {config.num_frames} frames at {config.image_size} px: {parameters / 1e6:.1f} M "
            f"parameters, {parameters * 4 / 1e6:.0f} MB fp32")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]``; 0 (still attached to the graph) when the mask is empty, instead of NaN."""
    if not mask.any():
        return values.sum() * 0.0
    return values[mask].mean()
