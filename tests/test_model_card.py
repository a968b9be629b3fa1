"""The README.md model card: Hub metadata (model-index with the metric values and split) and the human-readable
sections (what the model is, data and recipe, flags, metrics, intended use and limits)."""

from __future__ import annotations

import math

from avlformer.data.recipe import PreprocessRecipe
from avlformer.model_card import model_card_text, read_card_metadata, write_model_card
from avlformer.modeling.avlformer import AVLFormerConfig

RECIPE = PreprocessRecipe(stored_frames=8, short_side=64)
METRICS = {"Bleu_4": 0.1234, "CIDEr": 0.5678, "METEOR": 0.2, "EntityScore": 0.3}


def test_card_front_matter_carries_the_model_index(tmp_path):
    path = write_model_card(tmp_path / "best_checkpoint", AVLFormerConfig.tiny(), RECIPE, METRICS, split="val",
                            training_args={"learning_rate": 3e-4, "epochs": 2}, model_name="someone/model")
    meta = read_card_metadata(path)
    assert meta["library_name"] == "avlformer" and meta["pipeline_tag"]
    index = meta["model-index"][0]
    assert index["name"] == "someone/model"
    result = index["results"][0]
    assert result["dataset"]["split"] == "val" and result["dataset"]["name"] == "FAVDBench"
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values == {"BLEU-4": 0.1234, "CIDEr": 0.5678, "METEOR": 0.2, "EntityScore": 0.3}


def test_card_body_says_what_the_model_is_and_how_it_was_made(tmp_path):
    text = model_card_text(AVLFormerConfig.tiny(), RECIPE, METRICS, split="val",
                           training_args={"learning_rate": 3e-4, "epochs": 2})
    for heading in ("## Training data and preprocessing", "## Training flags", "## Validation metrics",
                    "## Intended use and limits", "## Usage"):
        assert heading in text
    assert "| `stored_frames` | 8 |" in text and "| `short_side` | 64 |" in text  # the recipe, not the paper's
    assert "| `learning_rate` | 0.0003 |" in text
    assert "| `CIDEr` | 0.5678 |" in text and "**val** split" in text
    assert "8 frames at 64 px" in text  # the architecture line comes from the config


def test_card_without_metrics_has_no_model_index_and_says_so():
    text = model_card_text(AVLFormerConfig.tiny(), RECIPE)
    assert "model-index" not in text
    assert "No validation metrics were recorded" in text


def test_non_numeric_and_non_finite_metrics_are_not_published(tmp_path):
    path = write_model_card(tmp_path / "card", AVLFormerConfig.tiny(), RECIPE,
                            {"CIDEr": 0.5, "SPICE": math.nan, "note": "n/a", "flag": True}, split="test")
    names = [m["name"] for m in read_card_metadata(path)["model-index"][0]["results"][0]["metrics"]]
    assert names == ["CIDEr"]


def test_card_text_cannot_break_its_tables():
    text = model_card_text(AVLFormerConfig.tiny(), RECIPE, training_args={"note": "a | b\nc"})
    assert "| `note` | a \\| b c |" in text
