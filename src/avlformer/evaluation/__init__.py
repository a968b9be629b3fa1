"""Scoring captions: COCO metrics (pycocoevalcap), EntityScore, AudioScore, CLIPScore; see docs/evaluation.md."""
