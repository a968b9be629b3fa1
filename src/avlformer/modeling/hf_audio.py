"""Audio models from ``transformers`` as the ``hf_audio`` part (docs/models.md): AST, Whisper's encoder, CLAP's
audio tower, wav2vec2 and HuBERT, each fed by its own feature extractor (docs/models.md, Preprocessing), whose
settings are stored in the part's config. A feature map output (CLAP's ``(B, C, F, T)``) gives F·T tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from avlformer.modeling.hf_encoders import _HFEncoder, _HFEncoderConfig, _kind_error, _preprocessor
from avlformer.modeling.hf_folder import check_model_folder, read_model_config

AUDIO_TYPES = ("audio-spectrogram-transformer", "whisper", "clap", "wav2vec2", "hubert")
WAVEFORM_TYPES = ("wav2vec2", "hubert")  # models fed the waveform, through their own convolutional front end


@dataclass
class HFAudioConfig(_HFEncoderConfig):
    feature_extractor: dict = field(default_factory=dict)  # the folder's preprocessor_config.json
    sample_rate: int = 32000     # the data's rate (what the loaders read); resampled to the extractor's
    clip_seconds: float = 10.0

    @classmethod
    def from_folder(cls, path: str, **values) -> "HFAudioConfig":
        folder = check_model_folder(path, "audio encoder")
        hf_config = read_model_config(folder, "audio encoder")
        if hf_config["model_type"] not in AUDIO_TYPES:
            raise _kind_error(folder, hf_config, "an audio encoder", AUDIO_TYPES)
        return cls(hf_config=hf_config, path=str(folder), feature_extractor=_preprocessor(folder, "audio encoder"),
                   **values)

    def tower(self):
        """The audio model's config (a CLAP folder holds text and audio towers)."""
        hf = self.hf()
        return hf.audio_config if self.hf_config["model_type"] == "clap" else hf

    @property
    def model_sample_rate(self) -> int:
        return int(self.feature_extractor.get("sampling_rate", 16000))

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def token_width(self) -> int:
        tower = self.tower()
        if self.hf_config["model_type"] == "clap":  # the last Swin stage's width
            return int(tower.patch_embeds_hidden_size * 2 ** (len(tower.depths) - 1))
        return int(getattr(tower, "hidden_size", None) or tower.d_model)

    @property
    def num_tokens(self) -> int:
        kind, tower = self.hf_config["model_type"], self.tower()
        if kind == "whisper":
            return int(tower.max_source_positions)
        if kind == "clap":  # the spectrogram is resized to spec_size² and halved at each stage after the first
            side = tower.spec_size // 2 ** (len(tower.depths) - 1)
            stride = tower.patch_stride if isinstance(tower.patch_stride, (list, tuple)) else [tower.patch_stride] * 2
            return (side // stride[0]) * (side // stride[1])
        if kind in WAVEFORM_TYPES:  # the resampled clip through each convolution of the front end
            length = math.ceil(self.clip_samples * self.model_sample_rate / self.sample_rate)
            for kernel, stride in zip(tower.conv_kernel, tower.conv_stride):
                length = (length - kernel) // stride + 1
            return length
        patch = getattr(tower, "patch_size", 16)
        freq = (tower.num_mel_bins - patch) // tower.frequency_stride + 1
        time = (tower.max_length - patch) // tower.time_stride + 1
        return freq * time + 2


class HFAudioEncoder(_HFEncoder):
    def __init__(self, config: HFAudioConfig):
        super().__init__(config, lambda: _audio_model(config))

    def inputs(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """Waveforms (B, 1, S) at the data's rate -> the model's inputs, by its own feature extractor."""
        import torchaudio.functional as AF

        cfg = self.config
        wave = audio[:, 0].float()
        if cfg.sample_rate != cfg.model_sample_rate:
            wave = AF.resample(wave, cfg.sample_rate, cfg.model_sample_rate)
        out = _extractor(cfg)([row.cpu().numpy() for row in wave], sampling_rate=cfg.model_sample_rate,
                              return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {name: out[name].to(audio.device, dtype) for name in ("input_features", "input_values") if name in out}
        if "is_longer" in out:
            inputs["is_longer"] = torch.as_tensor(out["is_longer"]).to(audio.device)
        return inputs

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        hidden = self.model(**self.inputs(audio)).last_hidden_state
        return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden  # a feature map's cells


def _audio_model(config: HFAudioConfig):
    kind = config.hf_config["model_type"]
    if kind == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(config.hf())
    if kind == "clap":
        from transformers import ClapAudioModel

        return ClapAudioModel(config.tower())
    from transformers import AutoModel

    return AutoModel.from_config(config.hf())


_EXTRACTORS: dict[str, Any] = {}


def _extractor(config: HFAudioConfig):
    from transformers.models.auto.feature_extraction_auto import feature_extractor_class_from_name

    key = json.dumps(config.feature_extractor, sort_keys=True)
    if key not in _EXTRACTORS:
        values = dict(config.feature_extractor)
        cls = feature_extractor_class_from_name(values.pop("feature_extractor_type", ""))
        if cls is None:
            raise ValueError(f"{config.path}: the preprocessor config names no known feature extractor")
        _EXTRACTORS[key] = cls(**values)
    return _EXTRACTORS[key]
