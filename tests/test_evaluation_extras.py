"""The evaluation and training packages are optional extras (`avlformer[eval]`, `avlformer[train]`): the model
and inference code must import without them, and a metric whose package is absent is skipped naming the extra."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from avlformer.evaluation import coco_metrics
from avlformer.evaluation.references import pair_captions
from avlformer.evaluation.runner import ModelPaths, evaluate

OPTIONAL = ("tensorboard", "pycocoevalcap", "nltk")


def test_model_and_inference_imports_do_not_load_the_optional_extras():
    code = ("import sys\n"
            "import avlformer.cli, avlformer.inference.pipeline, avlformer.modeling.checkpoint\n"
            "import avlformer.evaluation.cli, avlformer.evaluation.runner\n"
            f"print(sorted(name for name in {OPTIONAL!r} if name in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_without_pycocoevalcap_the_caption_metrics_are_skipped_naming_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(coco_metrics.importlib.util, "find_spec",
                        lambda name, *args: None if name == "pycocoevalcap" else real_find_spec(name, *args))
    report = evaluate(pair_captions({"a": "x"}, {"a": ["x"]}), ["bleu", "spice"], ModelPaths())
    assert report.metrics == {}
    assert set(report.skipped) == {"bleu", "spice"}
    assert all("pip install 'avlformer[eval]'" in reason for reason in report.skipped.values())
