"""BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its Stanford models are installed) through pycocoevalcap.

What ``COCOEvalCap.evaluate`` does (PTB tokenisation, then each scorer), without pycocotools ``COCO`` objects and
without SPICE's CoreNLP download; values equal pycocoevalcap's (tests/test_evaluation_coco.py).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
from pathlib import Path

# CoreNLP is run with -preserveLines: any character Java treats as a line break would shift every later caption
# onto the wrong id, so those become spaces (pycocoevalcap only replaces "\n").
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x85\u2028\u2029]")


EVAL_EXTRA = "pip install 'avlformer[eval]'"


def tools_missing_reason() -> str | None:
    """Why BLEU/METEOR/ROUGE-L/CIDEr cannot run here: pycocoevalcap (an optional extra) or Java is missing."""
    if importlib.util.find_spec("pycocoevalcap") is None:
        return f"needs the pycocoevalcap package, part of the evaluation extra ({EVAL_EXTRA})"
    if shutil.which("java") is None:
        return ("needs a Java runtime on PATH for Stanford PTBTokenizer and METEOR "
                "(install one, e.g. `apt-get install default-jre-headless`)")
    return None


def spice_missing_reason() -> str | None:
    """SPICE needs Stanford CoreNLP 3.6.0 next to pycocoevalcap's spice jar; it cannot be downloaded here."""
    tools = tools_missing_reason()
    if tools:
        return tools
    from pycocoevalcap.spice import spice as spice_module

    lib = Path(spice_module.__file__).parent / "lib"
    needed = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    absent = [path for path in needed if not path.is_file()]
    if absent:
        return ("needs Stanford CoreNLP 3.6.0 (stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar "
                f"from stanford-corenlp-full-2015-12-09.zip) in {lib}; run "
                "`python -m pycocoevalcap.spice.get_stanford_models` where downloads are possible")
    return None


def _check_same_ids(predictions: dict, references: dict) -> None:
    if predictions.keys() != references.keys():
        only_pred = len(predictions.keys() - references.keys())
        only_ref = len(references.keys() - predictions.keys())
        raise ValueError(f"predictions and references must cover the same ids ({only_pred} only predicted, "
                         f"{only_ref} only in references); pair them first (evaluation.references.pair_captions)")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} id(s) have no reference caption, e.g. {empty[0]!r}")
    if not predictions:
        raise ValueError("no captions to score")


def tokenize(predictions: dict, references: dict[object, list[str]]) -> tuple[dict, dict]:
    """PTB-tokenise (lower-cased, punctuation removed) as pycocoevalcap does: ({id: [ref...]}, {id: [pred]})."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    def as_coco(captions):
        return [{"caption": _LINE_BREAKS.sub(" ", caption)} for caption in captions]

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({key: as_coco(refs) for key, refs in references.items()})
    res = tokenizer.tokenize({key: as_coco([predictions[key]]) for key in references})
    return gts, res


SCORER_OUTPUTS = {"bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"), "meteor": ("METEOR",), "rouge": ("ROUGE_L",),
                   "cider": ("CIDEr",), "spice": ("SPICE",)}


@functools.lru_cache(maxsize=1)
def shared_meteor():
    """One METEOR JVM per process: starting one loads a paraphrase table, and training validates every epoch. Scoring is
    stateless per request and the wrapper serialises requests with a lock."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


# scorer -> (pycocoevalcap module, class); METEOR is the shared one
_SCORER_CLASSES = {"bleu": ("bleu.bleu", "Bleu"), "rouge": ("rouge.rouge", "Rouge"), "cider": ("cider.cider", "Cider"),
                   "spice": ("spice.spice", "Spice")}


def _make_scorer(name: str):
    """A pycocoevalcap scorer and the keyword arguments of its compute_score."""
    if name == "meteor":
        return shared_meteor(), {}
    if name not in _SCORER_CLASSES:
        raise ValueError(f"unknown caption metric {name!r}; choose from {', '.join(SCORER_OUTPUTS)}")
    module, cls = _SCORER_CLASSES[name]
    scorer = getattr(importlib.import_module(f"pycocoevalcap.{module}"), cls)
    # verbose=0: Bleu would print its length statistics
    return (scorer(4), {"verbose": 0}) if name == "bleu" else (scorer(), {})


def caption_metrics(predictions: dict, references: dict,
                    scorers: tuple[str, ...] = ("bleu", "meteor", "rouge", "cider")) -> dict[str, float]:
    """Corpus-level metrics (``SCORER_OUTPUTS`` of each of ``scorers``) for ``predictions = {id: caption}`` and
    ``references = {id: [captions]}`` over the same ids. Raises RuntimeError when pycocoevalcap or Java (or, for
    SPICE, the Stanford models) is missing."""
    _check_same_ids(predictions, references)
    reason = spice_missing_reason() if "spice" in scorers else tools_missing_reason()
    if reason:
        raise RuntimeError(f"caption metrics {reason}")
    gts, res = tokenize(predictions, references)
    results: dict[str, float] = {}
    for name in scorers:
        scorer, options = _make_scorer(name)
        score, _ = scorer.compute_score(gts, res, **options)
        values = score if isinstance(score, list) else [score]
        results.update({key: float(value) for key, value in zip(SCORER_OUTPUTS[name], values)})
    return results
