"""CLIPScore and RefCLIPScore (Hessel et al., 2021) for videos (docs/evaluation.md, "CLIPScore")."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from avlformer.device import resolve_device

CLIP_S_WEIGHT = 2.5
PROMPT = "A photo depicts "


def clip_s(candidate: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,) CLIP-S."""
    return CLIP_S_WEIGHT * F.cosine_similarity(candidate, video, dim=-1).clamp(min=0)


def ref_clip_s(clip_s_value: torch.Tensor, candidate: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """One item: CLIP-S (scalar), candidate (D,), references (R, D) -> RefCLIP-S (scalar)."""
    reference_term = F.cosine_similarity(candidate[None], references, dim=-1).max().clamp(min=0)
    total = clip_s_value + reference_term
    return torch.where(total > 0, 2 * clip_s_value * reference_term / total.clamp(min=1e-12), total * 0)


class FrameTextScorer:
    """CLIP's image processing and tokenizer on ``device``, for a CLIPModel or a TriLip (its CLIP is ``vl_model``);
    ``per_item`` holds the scores so far."""

    def __init__(self, model, tokenizer, image_processor, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = resolve_device(device)
        self.max_text_tokens = getattr(model, "vl_model", model).config.text_config.max_position_embeddings
        self.per_item: dict[str, object] = {}

    def pixels(self, frames: np.ndarray) -> torch.Tensor:
        return self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)

    def tokens(self, texts: list[str]):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_tokens,
                              return_tensors="pt").to(self.device)


class ClipScorer(FrameTextScorer):
    """Scores one video at a time: ``score_item(id, frames, caption, references)``; ``means()`` averages."""

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokens([PROMPT + text for text in texts])
        pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                       attention_mask=tokens["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def embed_video(self, frames: np.ndarray) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=self.pixels(frames)).pooler_output
        per_frame = F.normalize(self.model.visual_projection(pooled).float(), dim=-1)
        return F.normalize(per_frame.mean(dim=0), dim=-1)

    @torch.inference_mode()
    def score_item(self, image_id: str, frames: np.ndarray, caption: str, references: list[str]) -> dict[str, float]:
        video = self.embed_video(frames)
        texts = self.embed_texts([caption, *references])
        candidate, refs = texts[0], texts[1:]
        plain = clip_s(candidate[None], video[None])[0]
        scores = {"CLIP-S": float(plain), "RefCLIP-S": float(ref_clip_s(plain, candidate, refs))}
        self.per_item[image_id] = scores
        return scores

    def means(self) -> dict[str, float]:
        """CLIP-S and RefCLIP-S averaged over the videos scored so far (empty before the first)."""
        scores = list(self.per_item.values())
        return {key: sum(s[key] for s in scores) / len(scores) for key in ("CLIP-S", "RefCLIP-S")} if scores else {}
