"""Reading prediction and reference caption files, and pairing their ids.

Predictions: a COCO result list or a ``{id: caption}`` dict. References: a COCO captions dict or list, or a
caption TSV. Ids that do not match exactly (``test/<id>.mp4`` against ``<id>``, docs/upstream.md §1.5) are matched
again by their clip id when it is unique on both sides.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from avlformer.data.caption_tsv import CaptionTSVError, read_caption_tsv
from avlformer.data.clip_ids import clip_id_from_key
from avlformer.json_files import read_json


class CaptionFileError(ValueError):
    """A prediction or reference file cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"{path}: {problem}")


def _unique_keys(path: Path):
    """object_pairs_hook: a key given twice in one JSON object is an error, not "the last one wins" (a dict of
    predictions with an id twice would otherwise silently keep one of its captions)."""
    def build(pairs: list[tuple[str, object]]) -> dict:
        repeated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
        if repeated:
            raise CaptionFileError(path, f"key {repeated[0]!r} appears more than once in one JSON object "
                                         f"({len(repeated)} repeated key(s)); each id holds one caption")
        return dict(pairs)
    return build


def _read_json(path: Path, what: str):
    try:
        return read_json(path, what, object_pairs_hook=_unique_keys(path))
    except CaptionFileError:
        raise
    except (FileNotFoundError, ValueError) as error:
        # read_json's messages already start with the path; CaptionFileError adds it again.
        raise CaptionFileError(path, str(error).removeprefix(f"{path}: ")) from None


def _entry_id_and_caption(path: Path, entry, where: str) -> tuple[str, str]:
    if not isinstance(entry, dict) or "image_id" not in entry or "caption" not in entry:
        raise CaptionFileError(path, f"{where} must be an object with 'image_id' and 'caption', got {entry!r:.80}")
    image_id, caption = entry["image_id"], entry["caption"]
    if not isinstance(image_id, (str, int)) or isinstance(image_id, bool):
        raise CaptionFileError(path, f"{where}: image_id must be a string or integer, got {image_id!r:.80}")
    if not isinstance(caption, str):
        raise CaptionFileError(path, f"{where}: caption must be a string, got {caption!r:.80}")
    return str(image_id), caption


def load_predictions(path: str | os.PathLike) -> dict[str, str]:
    """``{id: caption}`` from a COCO result list or a ``{id: caption}`` dict."""
    path = Path(path)
    data = _read_json(path, "prediction file")
    if isinstance(data, dict):
        if "annotations" in data:
            raise CaptionFileError(path, "this is a COCO reference dict; predictions must be a COCO result list "
                                         "[{\"image_id\", \"caption\"}] or a {id: caption} dict")
        bad = next(((k, v) for k, v in data.items() if not isinstance(v, str)), None)
        if bad is not None:
            raise CaptionFileError(path, f"caption of id {bad[0]!r} must be a string, got {bad[1]!r:.80}")
        return {str(key): caption for key, caption in data.items()}
    if not isinstance(data, list):
        raise CaptionFileError(path, f"expected a JSON list or object, got {type(data).__name__}")
    pairs = [_entry_id_and_caption(path, entry, f"entry {i}") for i, entry in enumerate(data)]
    repeated = [image_id for image_id, count in Counter(i for i, _ in pairs).items() if count > 1]
    if repeated:
        raise CaptionFileError(path, f"{len(repeated)} id(s) have more than one predicted caption, e.g. "
                                     f"{repeated[0]!r}; a prediction file holds one caption per id")
    return dict(pairs)


def _group(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for image_id, caption in pairs:
        grouped.setdefault(image_id, []).append(caption)
    return grouped


def _references_from_tsv(path: Path) -> dict[str, list[str]]:
    try:
        rows = read_caption_tsv(path)
    except (FileNotFoundError, CaptionTSVError) as error:
        raise CaptionFileError(path, str(error).removeprefix(f"{path}: ")) from None
    pairs = []
    for row in rows:
        # The reader keeps undecodable bytes as surrogates; scoring needs real text.
        if any("\ud800" <= char <= "\udfff" for text in (row.key, *row.captions) for char in text):
            raise CaptionFileError(path, f"line {row.line}: not UTF-8 text")
        pairs += [(row.key, caption) for caption in row.captions]
    return _group(pairs)


def load_references(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{id: [captions]}`` from a COCO captions dict, a COCO list or a caption TSV (by the ``.tsv`` suffix)."""
    path = Path(path)
    if path.suffix.lower() == ".tsv":
        references = _references_from_tsv(path)
    else:
        data = _read_json(path, "reference file")
        if isinstance(data, dict):
            if not isinstance(data.get("annotations"), list):
                raise CaptionFileError(path, "a reference JSON object must be a COCO captions dict with an "
                                             "'annotations' list")
            data = data["annotations"]
            where = "annotations[{}]"
        elif isinstance(data, list):
            where = "entry {}"
        else:
            raise CaptionFileError(path, f"expected a COCO dict or list, got {type(data).__name__}")
        references = _group([_entry_id_and_caption(path, entry, where.format(i)) for i, entry in enumerate(data)])
    if not references:
        raise CaptionFileError(path, "contains no reference captions")
    return references


@dataclass
class PairedCaptions:
    """Predictions and references over the same ids (the reference spelling)."""

    predictions: dict[str, str]
    references: dict[str, list[str]]
    missing_predictions: list[str] = field(default_factory=list)  # reference ids nothing predicted
    extra_predictions: list[str] = field(default_factory=list)    # prediction ids with no reference
    matched_by_stem: int = 0


def _unique_by_stem(ids) -> dict[str, str]:
    counts = Counter(clip_id_from_key(i) for i in ids)
    return {clip_id_from_key(i): i for i in ids if counts[clip_id_from_key(i)] == 1}


def pair_captions(predictions: dict[str, str], references: dict[str, list[str]]) -> PairedCaptions:
    """Match ids exactly, then the leftovers by unique stem; report what stays unmatched on either side."""
    pairs = {ref_id: ref_id for ref_id in references if ref_id in predictions}
    left_refs = [ref_id for ref_id in references if ref_id not in pairs]
    left_preds = [pred_id for pred_id in predictions if pred_id not in references]
    pred_by_stem = _unique_by_stem(left_preds)
    stem_matches = {ref_id: pred_by_stem[stem] for stem, ref_id in _unique_by_stem(left_refs).items()
                    if stem in pred_by_stem}
    pairs.update(stem_matches)
    used_preds = set(pairs.values())
    return PairedCaptions(
        predictions={ref_id: predictions[pred_id] for ref_id, pred_id in pairs.items()},
        references={ref_id: references[ref_id] for ref_id in pairs},
        missing_predictions=sorted(ref_id for ref_id in references if ref_id not in pairs),
        extra_predictions=sorted(pred_id for pred_id in predictions if pred_id not in used_preds),
        matched_by_stem=len(stem_matches),
    )
