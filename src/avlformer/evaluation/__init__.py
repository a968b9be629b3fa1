"""Scoring captions: COCO metrics (pycocoevalcap), EntityScore, AudioScore, CLIPScore; see docs/evaluation.md."""

from avlformer.evaluation.coco_metrics import caption_metrics

__all__ = ["caption_metrics"]
