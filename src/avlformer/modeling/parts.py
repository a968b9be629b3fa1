"""The parts of an AVLFormer and the registry that picks each by ``type`` in the model config (docs/parts.md).

Three roles, each filled by one registered part type (a config dataclass and a builder):

* ``video``: the video encoder. ``forward(frames)``: normalised float frames (B, T, 3, H, W) -> tokens
  (B, N, token_width). Its config has ``token_width`` and ``num_tokens(num_frames, image_size)``.
* ``audio``: the audio encoder. ``forward(audio)``: waveform (B, 1, clip_samples) -> tokens (B, N, token_width).
  Its config has ``token_width``, ``num_tokens``, ``sample_rate``, ``clip_seconds`` and ``clip_samples``.
* ``text``: the decoder. ``forward(input_ids, av_tokens, attention_bias, output_rows=...)`` -> hidden states of
  ``[text ; AV]``, ``logits(hidden)``, ``get_input_embeddings()``. Its config has ``img_feature_dim`` (the width of
  the AV tokens it takes) and ``max_position_embeddings``.

Every part module has ``set_gradient_checkpointing(enabled)``. The projections connecting the encoders to the
decoder (``AVLFormer.projection(role)``) map encoder tokens to ``img_feature_dim``; the model builds a Linear for
each, unless the encoder carries its own as a ``projection`` attribute (PaSST's ``linear``, where the released
weights keep it). Optional config hooks: ``check_fits(model_config)`` (raise ValueError when the part cannot serve
that model), ``describe()`` (a short name for logs), ``TRAINING_ONLY`` (fields that leave the eval output alone).

Besides the paper's parts (``video_swin``, ``passt``, ``bert``) the registry holds the Hugging Face ones
(``hf_video``, ``hf_frames``, ``hf_audio``: modeling/hf_encoders.py, hf_audio.py; ``hf_causal_lm``: hf_causal_lm.py;
docs/models.md). A decoder with ``is_prefix_lm`` computes its training loss in its own ``forward(av_tokens,
input_ids, text_len)`` and drives decoding with ``make_stepper``/``special_ids`` (modeling/generation.py).

A registry entry's ``attribute`` is where the model holds the part, hence its state-dict prefix: the paper's parts
keep upstream's (``swin``, ``passt``, ``trans_encoder``) so released weights load by name; only modeling/ and the
weight converters use these names, everything else asks the model for a role.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from avlformer.config_fields import checked_fields
from avlformer.modeling import passt, video_swin
from avlformer.modeling.hf_audio import HFAudioConfig, HFAudioEncoder
from avlformer.modeling.hf_encoders import (HFFramesConfig, HFFramesEncoder, HFVideoConfig, HFVideoEncoder,
                                           load_encoder_weights)
from avlformer.modeling.hf_causal_lm import HFCausalLMConfig, HFCausalLMDecoder, load_pretrained_lm
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig

ROLES = ("video", "audio", "text")
ENCODER_ROLES = ("video", "audio")
ROLE_NOUNS = {"video": "video encoder", "audio": "audio encoder", "text": "decoder"}
# The types of model configs written before parts had a `type`: the paper's.
DEFAULT_TYPES = {"video": "video_swin", "audio": "passt", "text": "bert"}


@dataclass(frozen=True)
class PartType:
    role: str
    name: str
    config: type                                  # the part's config dataclass
    build: Callable[[Any], nn.Module]             # config -> module
    attribute: str                                # the model attribute holding the part = its state-dict prefix
    load_weights: Callable[[nn.Module, str], Any] | None = None  # (module, path): its pretrained weights


_REGISTRY: dict[str, dict[str, PartType]] = {role: {} for role in ROLES}


def register_part(role: str, name: str, config: type, build: Callable[[Any], nn.Module], *,
                  attribute: str | None = None,
                  load_weights: Callable[[nn.Module, str], Any] | None = None) -> PartType:
    """Make ``name`` a ``type`` the model config can choose for ``role``; ``attribute`` defaults to the role."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    taken = _REGISTRY[role].get(name)
    if taken is not None and taken.config is not config:
        raise ValueError(f"a {ROLE_NOUNS[role]} named {name!r} is already registered ({taken.config.__name__})")
    if any(entry.config is config for entry in _REGISTRY[role].values() if entry.name != name):
        raise ValueError(f"{config.__name__} is already the config of another {ROLE_NOUNS[role]}")
    entry = PartType(role, name, config, build, attribute or role, load_weights)
    _REGISTRY[role][name] = entry
    return entry


def part_types(role: str) -> list[str]:
    return sorted(_REGISTRY[role])


def part_type(role: str, name: Any) -> PartType:
    """The entry of ``name``; a one-line error listing the registered names otherwise."""
    entry = _REGISTRY[role].get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"{role}.type {name!r} is not a registered {ROLE_NOUNS[role]} "
                         f"(registered: {', '.join(part_types(role))})")
    return entry


def type_of(role: str, config: Any) -> PartType:
    """The entry whose config class ``config`` is an instance of."""
    for entry in _REGISTRY[role].values():
        if type(config) is entry.config:
            return entry
    raise ValueError(f"{role}: {type(config).__name__} is not the config of a registered {ROLE_NOUNS[role]} "
                     f"(registered: {', '.join(part_types(role))})")


def config_values(config: Any) -> dict[str, Any]:
    """A part config's own fields as JSON-ready values (its ``to_dict`` when it has one), without ``type``."""
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if to_dict is not None else dataclasses.asdict(config)


def part_config_to_dict(role: str, config: Any) -> dict[str, Any]:
    return {"type": type_of(role, config).name, **config_values(config)}


def part_config_from_dict(role: str, data: Mapping[str, Any]) -> Any:
    """``{"type": NAME, **fields}`` -> that part's config; no ``type`` means the paper's part."""
    values = dict(data)
    entry = part_type(role, values.pop("type", DEFAULT_TYPES[role]))
    from_dict = getattr(entry.config, "from_dict", None)
    return from_dict(values) if from_dict is not None else entry.config(**checked_fields(entry.config, values))


def describe_part(role: str, config: Any) -> str:
    describe = getattr(config, "describe", None)
    return describe() if describe is not None else f"{type_of(role, config).name} {ROLE_NOUNS[role]}"


# The paper's parts, then the Hugging Face ones (docs/models.md).
register_part("video", "video_swin", video_swin.VideoSwinConfig, video_swin.VideoSwinEncoder, attribute="swin",
              load_weights=video_swin.load_official_weights)
register_part("audio", "passt", passt.PasstConfig, passt.PasstAudioEncoder, attribute="passt",
              load_weights=passt.load_official_weights)
register_part("text", "bert", TextTransformerConfig, TextTransformer, attribute="trans_encoder",
              load_weights=TextTransformer.load_hf_bert)
register_part("text", "hf_causal_lm", HFCausalLMConfig, HFCausalLMDecoder, load_weights=load_pretrained_lm)
register_part("video", "hf_video", HFVideoConfig, HFVideoEncoder, load_weights=load_encoder_weights)
register_part("video", "hf_frames", HFFramesConfig, HFFramesEncoder, load_weights=load_encoder_weights)
register_part("audio", "hf_audio", HFAudioConfig, HFAudioEncoder, load_weights=load_encoder_weights)
