"""A part named on the command line (``--video-encoder``, ``--audio-encoder``, ``--decoder``): a registered type
name, or ``hf:PATH`` for a Hugging Face model folder whose kind is read from its ``config.json`` (docs/models.md);
a bad folder is a one-line error before any weight is read.
"""

from __future__ import annotations

from typing import Any

from avlformer.modeling.hf_causal_lm import HFCausalLMConfig
from avlformer.modeling.hf_audio import AUDIO_TYPES, HFAudioConfig
from avlformer.modeling.hf_encoders import IMAGE_KINDS, VIDEO_TYPES, HFFramesConfig, HFVideoConfig
from avlformer.modeling.hf_folder import check_model_folder, read_model_config, resolve_model_source
from avlformer.modeling.parts import ROLE_NOUNS, part_type

HF_PREFIX = "hf:"


def part_from_spec(role: str, spec: str, current: dict[str, Any], *, img_feature_dim: int,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model-config entry (``{"type": ..., **fields}``) for ``role`` chosen by ``spec``. ``current``: the
    entry it replaces (a registered name equal to its type keeps its fields); ``options``: fields of the new part
    (``training``, ``lora_rank``, ``trust_remote_code``, ...)."""
    options = dict(options or {})
    if not spec.startswith(HF_PREFIX):
        part_type(role, spec)  # a one-line error naming the registered types
        if options:
            raise ValueError(f"{', '.join(sorted(options))}: only for a Hugging Face {ROLE_NOUNS[role]} (hf:PATH)")
        return dict(current) if current.get("type") == spec else {"type": spec}
    path = spec[len(HF_PREFIX):]
    if not path:
        raise ValueError(f"{spec!r}: give the model folder after 'hf:' (e.g. hf:./models/SmolLM2-135M)")
    path = resolve_model_source(path, ROLE_NOUNS[role], bool(options.get("trust_remote_code")))
    folder = check_model_folder(path, ROLE_NOUNS[role])
    model_type = read_model_config(folder, ROLE_NOUNS[role])["model_type"]
    if role == "text":
        config = HFCausalLMConfig.from_folder(path, img_feature_dim=img_feature_dim, **options)
        return {"type": "hf_causal_lm", **config.to_dict()}
    if role == "audio":  # the clip the data loaders read (rate, length) stays the configuration's
        for name in ("sample_rate", "clip_seconds"):
            if name in current:
                options.setdefault(name, current[name])
        return {"type": "hf_audio", **HFAudioConfig.from_folder(path, **options).to_dict()}
    if model_type in VIDEO_TYPES:
        return {"type": "hf_video", **HFVideoConfig.from_folder(path, **options).to_dict()}
    if model_type in IMAGE_KINDS:
        return {"type": "hf_frames", **HFFramesConfig.from_folder(path, **options).to_dict()}
    raise ValueError(f"{folder}: model_type {model_type!r} cannot serve as a video encoder (video models: "
                     f"{', '.join(VIDEO_TYPES)}; image models applied per frame: {', '.join(IMAGE_KINDS)}; audio "
                     f"models: {', '.join(AUDIO_TYPES)})")
