"""The ``README.md`` model card of a checkpoint folder, in the Hugging Face Hub's format; its YAML front matter
carries a ``model-index`` so the Hub shows the validation metrics.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from avlformer.atomic import write_text_atomic
from avlformer.data.recipe import PreprocessRecipe

CARD_NAME = "README.md"
DATASET_NAME = "FAVDBench"
TASK_NAME = "Fine-grained audible video description"
# The Hub's task id for "video in, text out"; the model reads the video's audio as well.
PIPELINE_TAG = "video-text-to-text"
# Display names on the Hub page for the metric keys `avlformer evaluate` writes.
METRIC_NAMES = {"Bleu_1": "BLEU-1", "Bleu_2": "BLEU-2", "Bleu_3": "BLEU-3", "Bleu_4": "BLEU-4",
                "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr", "SPICE": "SPICE",
                "EntityScore": "EntityScore", "AudioScore": "AudioScore", "CLIPScore": "CLIPScore"}


def _metric_rows(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric metrics, in a stable order; anything else (counts as strings, NaN) is not a score."""
    rows = {}
    for name in sorted(metrics, key=lambda key: (list(METRIC_NAMES).index(key) if key in METRIC_NAMES else 99, key)):
        value = metrics[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        rows[str(name)] = float(value)
    return rows


def card_metadata(model_name: str, rows: Mapping[str, float], split: str | None) -> dict[str, Any]:
    """The YAML front matter (with metric ``rows``, the ``model-index`` the Hub renders)."""
    meta: dict[str, Any] = {"library_name": "avlformer", "pipeline_tag": PIPELINE_TAG,
                            "tags": ["avlformer", "audio-visual", "video-captioning", "favd"],
                            "datasets": [DATASET_NAME]}
    if rows:
        meta["model-index"] = [{
            "name": model_name,
            "results": [{
                "task": {"type": "video-captioning", "name": TASK_NAME},
                "dataset": {"name": DATASET_NAME, "type": DATASET_NAME.lower(), "split": split or "unknown"},
                "metrics": [{"type": name.lower(), "name": METRIC_NAMES.get(name, name), "value": value}
                            for name, value in rows.items()],
            }],
        }]
    return meta


def _architecture(config) -> str:
    try:
        from avlformer.modeling.avlformer import describe_model
        return describe_model(config)
    except (ImportError, ValueError, RuntimeError):  # a description is a courtesy, never a reason to fail a save
        return f"AVLFormer, {config.num_frames} frames at {config.image_size} px"


def _decoder_base(config) -> str:
    """For a decoder with LoRA adapters: the base model they were trained on and the hash of its weights."""
    text = getattr(config, "text", None)
    if getattr(text, "training", None) != "lora":
        return ""
    return (f" The decoder is LoRA adapters (rank {text.lora_rank}) on the base model `{text.path}`, whose "
            f"safetensors weights have SHA-256 `{text.weights_sha256}`.")


def _table(rows: Mapping[str, Any], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| `{key}` | {_cell(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def model_card_text(config, recipe: PreprocessRecipe, metrics: Mapping[str, Any] | None = None,
                    split: str | None = None, training_args: Mapping[str, Any] | None = None, *,
                    model_name: str = "avlformer") -> str:
    """The card as text. ``metrics``: validation scores by `avlformer evaluate`'s names, on ``split``."""
    metrics = metrics or {}
    rows = _metric_rows(metrics)
    front = yaml.safe_dump(card_metadata(model_name, rows, split), sort_keys=False, allow_unicode=True)
    decoding = {"num_beams": config.num_beams, "max_gen_length": config.max_gen_length,
                "length_penalty": config.length_penalty}
    parts = [
        f"---\n{front}---",
        f"# {model_name}",
        "An AVLFormer model for fine-grained audible video description (FAVD): it writes a paragraph describing "
        "what is seen and heard in a short video clip. A Video Swin encoder reads the frames, a PaSST encoder the "
        "soundtrack, and a BERT-style text transformer writes the caption while attending to both through a learned "
        "audio-visual attention mask.",
        f"**Architecture:** {_architecture(config)}; learned attention mask: "
        f"{'yes' if config.learn_mask_enabled else 'no'}.{_decoder_base(config)}",
        "## Usage",
        "```python\nfrom avlformer import AVLFormer, caption\n\n"
        f"model = AVLFormer.from_pretrained(\"{model_name}\")\n"
        "for result in caption(model, [\"clip.mp4\"]):\n    print(result.caption, result.confidence)\n```",
        "Or from the command line: `avlformer caption --model CHECKPOINT clip.mp4`, and in the browser: "
        "`avlformer serve --model CHECKPOINT`.",
        "## Training data and preprocessing",
        f"Trained on {DATASET_NAME}-layout data. Every input is rebuilt from raw media with the preprocessing recipe "
        "below (`preprocessor_config.json` in this folder), the one the training data was prepared with, so "
        "captioning feeds the model the pixels and samples it learned from.",
        _table(recipe.to_dict(), ("recipe field", "value")),
        "## Decoding defaults",
        _table(decoding, ("setting", "value")),
    ]
    if training_args:
        parts += ["## Training flags", _table({str(k): v for k, v in sorted(training_args.items())},
                                              ("flag", "value"))]
    parts.append("## Validation metrics")
    if rows:
        parts += [f"Measured on the **{split or 'unknown'}** split.", _table(rows, ("metric", "value"))]
    else:
        parts.append("No validation metrics were recorded with this checkpoint.")
    parts += [
        "## Intended use and limits",
        "Research on audio-visual captioning: describing short (about 10 s) clips of everyday scenes in English. "
        "Captions are model output and can be wrong, in particular about sounds the clip does not contain, "
        "counts, small objects and anything outside the training data's domain; do not use them as a record of "
        "what happened, for surveillance, or for decisions about people. Clips are read as the recipe says: "
        f"{recipe.stored_frames} frames spread over the whole clip and its first {recipe.clip_seconds:g} s of "
        "audio, so longer videos are summarised coarsely.",
    ]
    return "\n\n".join(parts) + "\n"


def write_model_card(folder: str | os.PathLike, config, recipe: PreprocessRecipe,
                     metrics: Mapping[str, Any] | None = None, split: str | None = None,
                     training_args: Mapping[str, Any] | None = None, *, model_name: str | None = None) -> Path:
    """Write ``folder/README.md``; ``model_name`` defaults to the folder's name."""
    folder = Path(folder)
    path = folder / CARD_NAME
    write_text_atomic(path, model_card_text(config, recipe, metrics, split, training_args,
                                            model_name=model_name or folder.name or "avlformer"))
    return path


def read_card_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML front matter of a card (empty when it has none)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    if end < 0:
        return {}
    return yaml.safe_load(text[4:end]) or {}

