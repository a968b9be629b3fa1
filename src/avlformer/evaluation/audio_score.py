"""AudioScore (docs/evaluation.md, "AudioScore"): the README formula, not upstream's script.

With TriLip embeddings e_a (audio), e_v (video), e_t (caption): ``s = (½cos(e_a, e_t) + ½cos(e_a, e_v) + 1) / 2``
and ``AudioScore = a·exp(−b·exp(−c·s))`` with c = 10, b = 0.693, a = 1 / exp(−0.69·e^−10), on a 0–1 scale,
averaged over clips. The whole caption is embedded and the frame embeddings are averaged over the sampled frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from avlformer.data.audio import pad_or_truncate
from avlformer.device import resolve_device

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


@dataclass
class AudioScoreResult:
    score: float | None
    per_item: dict[str, float] = field(default_factory=dict)


class AudioScorer:
    """Scores one clip at a time: ``score_item(frames, waveform, caption)``; ``result()`` averages them."""

    def __init__(self, trilip, tokenizer, image_processor, device: torch.device | str = "cpu"):
        self.model = trilip.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = resolve_device(device)
        self.clip_samples = trilip.a_model.config.clip_samples
        self.max_text_tokens = trilip.vl_model.config.text_config.max_position_embeddings
        self.per_item: dict[str, float] = {}

    @torch.inference_mode()
    def score_item(self, image_id: str, frames: np.ndarray, waveform: np.ndarray, caption: str) -> float:
        """``frames`` uint8 (T, H, W, 3); ``waveform`` mono float32 at the PaSST sample rate (padded or cut to
        the clip length here)."""
        pixels = self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
        video = self.model.image_embeddings(pixels).mean(dim=0, keepdim=True)
        tokens = self.tokenizer([caption], padding=True, truncation=True, max_length=self.max_text_tokens,
                                return_tensors="pt").to(self.device)
        text = self.model.text_embeddings(tokens["input_ids"], tokens["attention_mask"])
        wave = pad_or_truncate(np.asarray(waveform, np.float32), self.clip_samples)
        audio = self.model.audio_embeddings(torch.from_numpy(np.ascontiguousarray(wave)).view(1, 1, -1)
                                            .to(self.device))
        value = float(audio_score_from_embeddings(audio, video, text)[0])
        self.per_item[image_id] = value
        return value

    def result(self) -> AudioScoreResult:
        values = list(self.per_item.values())
        return AudioScoreResult(score=sum(values) / len(values) if values else None, per_item=dict(self.per_item))
