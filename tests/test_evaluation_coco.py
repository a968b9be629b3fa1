"""BLEU/METEOR/ROUGE-L/CIDEr through pycocoevalcap: identical to calling it directly; CIDEr as
docs/upstream.md §6.1."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest

from avlformer.evaluation import coco_metrics
from avlformer.evaluation.coco_metrics import caption_metrics, spice_missing_reason
from avlformer.evaluation.references import load_predictions, load_references, pair_captions
from avlformer.evaluation.runner import ModelPaths, evaluate

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap needs Java")

REFERENCES = {
    "test/v1.mp4": ["A man speaks into a microphone on a stage.", "On stage, a man is talking."],
    "test/v2.mp4": ["A brown dog barks at the door!", "The dog is barking loudly."],
    "test/v3.mp4": ["Rain falls on a red car; thunder rumbles."],
    "test/v4.mp4": ["Two children play the piano while a woman sings."],
}
PREDICTIONS = {
    "test/v1.mp4": "a man is speaking on a stage.",
    "test/v2.mp4": "A dog barks, loudly.",
    "test/v3.mp4": "rain falls on a car and thunder rumbles",
    "test/v4.mp4": "a woman sings",
}


@needs_java
@pytest.mark.slow  # METEOR's JVM loads a paraphrase table: 15-45 s
def test_values_identical_to_cocoevalcap(tmp_path, monkeypatch):
    from pycocoevalcap import eval as cocoeval
    from pycocotools.coco import COCO

    annotations = [{"image_id": key, "caption": caption, "id": index}
                   for index, (key, caption) in enumerate((k, c) for k, refs in REFERENCES.items() for c in refs)]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"annotations": annotations, "images": [{"id": k} for k in REFERENCES],
                                   "type": "captions", "info": "dummy", "licenses": "dummy"}))
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps([{"image_id": k, "caption": c} for k, c in PREDICTIONS.items()]))

    class NoSpice:  # COCOEvalCap always runs SPICE, whose constructor downloads Stanford CoreNLP
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(cocoeval, "Spice", NoSpice)
    # The same pycocoevalcap Meteor object serves both sides: starting a second METEOR JVM costs 15+ s.
    monkeypatch.setattr(cocoeval, "Meteor", coco_metrics.shared_meteor)
    coco = COCO(str(gt_path))
    direct = cocoeval.COCOEvalCap(coco, coco.loadRes(str(pred_path)))
    direct.evaluate()

    paired = pair_captions(load_predictions(pred_path), load_references(gt_path))
    ours = caption_metrics(paired.predictions, paired.references)
    assert set(ours) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    for name, value in ours.items():
        assert value == direct.eval[name], name
    assert 0 < ours["Bleu_1"] < 1 and ours["CIDEr"] > 0


def independent_cider_d(candidates: dict[str, str], references: dict[str, list[str]], n: int = 4,
                        sigma: float = 6.0) -> float:
    """docs/upstream.md §6.1 written out from the description (tokenised inputs)."""
    def grams(sentence):
        words = sentence.split()
        return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    ref_grams = {key: [grams(r) for r in refs] for key, refs in references.items()}
    df = Counter(g for refs in ref_grams.values() for g in set().union(*refs))
    log_images = math.log(len(references))

    def vectors(counts):
        vec = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
        norms = [math.sqrt(sum(v * v for v in part.values())) for part in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    total = 0.0
    for key, candidate in candidates.items():
        cand_vec, cand_norm, cand_len = vectors(grams(candidate))
        per_n = [0.0] * n
        for ref in ref_grams[key]:
            ref_vec, ref_norm, ref_len = vectors(ref)
            for k in range(n):
                dot = sum(min(v, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, v in cand_vec[k].items())
                if cand_norm[k] and ref_norm[k]:
                    dot /= cand_norm[k] * ref_norm[k]
                per_n[k] += dot * math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma ** 2))
        total += sum(per_n) / n / len(ref_grams[key]) * 10
    return total / len(candidates)


def test_pycocoevalcap_cider_is_upstream_cider_d():
    from pycocoevalcap.cider.cider import Cider

    references = {"a": ["a man speaks into a microphone", "a man talks on a stage"],
                  "b": ["a dog barks at the door", "the brown dog is barking"],
                  "c": ["rain falls on a red car while thunder rumbles"]}
    candidates = {"a": "a man speaks on a stage", "b": "a dog is barking at a man", "c": "rain falls"}
    score, _ = Cider().compute_score(references, {k: [v] for k, v in candidates.items()})
    assert score == pytest.approx(independent_cider_d(candidates, references), rel=1e-12)


def test_cider_hand_case_exact_match_with_disjoint_references_is_ten():
    from pycocoevalcap.cider.cider import Cider

    # Each n-gram occurs in one of two images: idf = log 2 > 0, clipped cosine 1 for n = 1..4 (both captions
    # have 4-grams), no length penalty -> mean 1, x10.
    references = {"a": ["red car drives fast"], "b": ["small dog sleeps quietly"]}
    score, _ = Cider().compute_score(references, {k: [v[0]] for k, v in references.items()})
    assert score == pytest.approx(10.0)


@needs_java
def test_line_breaks_inside_captions_do_not_shift_ids():
    references = {"x": ["a man speaks"], "y": ["a dog barks"]}
    clean = caption_metrics({"x": "a man speaks", "y": "a dog barks"}, references, scorers=("bleu",))
    broken = caption_metrics({"x": "a man\rspeaks", "y": "a dog barks"}, references, scorers=("bleu",))
    assert broken == clean and clean["Bleu_1"] == pytest.approx(1.0)


def test_caption_metrics_requires_the_same_ids():
    with pytest.raises(ValueError, match="same ids"):
        caption_metrics({"a": "x"}, {"b": ["x"]})


def test_spice_is_skipped_with_a_message_when_stanford_models_are_absent(monkeypatch):
    from pycocoevalcap.spice import spice as spice_module
    from pathlib import Path

    lib = Path(spice_module.__file__).parent / "lib"
    if (lib / "stanford-corenlp-3.6.0.jar").is_file():
        pytest.skip("Stanford models installed here")
    assert "stanford-corenlp-3.6.0" in spice_missing_reason()
    report = evaluate(pair_captions({"a": "x"}, {"a": ["x"]}), ["spice"], ModelPaths())
    assert report.metrics == {} and "SPICE skipped" in report.skipped["spice"]
    with pytest.raises(RuntimeError, match="stanford-corenlp-3.6.0"):
        caption_metrics({"a": "x"}, {"a": ["x"]}, scorers=("spice",))


def test_without_java_the_caption_metrics_are_skipped_naming_java(monkeypatch):
    monkeypatch.setattr(coco_metrics.shutil, "which", lambda name: None)
    report = evaluate(pair_captions({"a": "x"}, {"a": ["x"]}), ["bleu", "cider"], ModelPaths())
    assert report.metrics == {}
    assert set(report.skipped) == {"bleu", "cider"}
    assert all("Java runtime" in reason for reason in report.skipped.values())
