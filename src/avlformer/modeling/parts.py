"""The parts of an AVLFormer and the registry that picks each by ``type`` in the model config.

docs/parts.md states each role's contract (``video``, ``audio``, ``text``) and the optional config hooks
(``check_fits``, ``describe``, ``TRAINING_ONLY``). A registry entry's ``attribute`` is where the model holds the
part, hence its state-dict prefix: the paper's parts keep upstream's (``swin``, ``passt``, ``trans_encoder``).
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
# A config without a part ``type`` (written before parts had one) means the paper's.
DEFAULT_TYPES = {"video": "video_swin", "audio": "passt", "text": "bert"}


@dataclass(frozen=True)
class PartType:
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
    entry = PartType(name, config, build, attribute or role, load_weights)
    _REGISTRY[role][name] = entry
    return entry


def part_types(role: str) -> list[str]:
    return sorted(_REGISTRY[role])


def part_type(role: str, name: Any) -> PartType:
    entry = _REGISTRY[role].get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"{role}.type {name!r} is not a registered {ROLE_NOUNS[role]} "
                         f"(registered: {', '.join(part_types(role))})")
    return entry


def type_of(role: str, config: Any) -> PartType:
    for entry in _REGISTRY[role].values():
        if type(config) is entry.config:
            return entry
    raise ValueError(f"{role}: {type(config).__name__} is not the config of a registered {ROLE_NOUNS[role]} "
                     f"(registered: {', '.join(part_types(role))})")


def config_values(config: Any) -> dict[str, Any]:
    """A part config's own fields as JSON-ready values, without ``type``."""
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if to_dict is not None else dataclasses.asdict(config)


def part_config_to_dict(role: str, config: Any) -> dict[str, Any]:
    return {"type": type_of(role, config).name, **config_values(config)}


def part_config_from_dict(role: str, data: Mapping[str, Any]) -> Any:
    values = dict(data)
    entry = part_type(role, values.pop("type", DEFAULT_TYPES[role]))
    from_dict = getattr(entry.config, "from_dict", None)
    return from_dict(values) if from_dict is not None else entry.config(**checked_fields(entry.config, values))


def describe_part(role: str, config: Any) -> str:
    describe = getattr(config, "describe", None)
    return describe() if describe is not None else f"{type_of(role, config).name} {ROLE_NOUNS[role]}"


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
