"""The user's captions (docs/data.md, "3. Your own dataset"): a JSON object, a CSV ``id,caption`` file or a released
``<split>.caption.tsv``, whose bytes are kept as ``<split>.caption.released.tsv`` before prepare writes its own
output over that path (docs/data.md, "Reruns").
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from avlformer.atomic import atomic_write
from avlformer.data.caption_tsv import CaptionTSVError, parse_caption_row, split_rows
from avlformer.data.clip_ids import clip_id_from_key, id_problem
from avlformer.data.prepare.layout import ERROR, Layout, PrepareError, Problem
from avlformer.data.prepare.outputs_record import OutputsRecord

USER_FILES = ("captions.json", "captions.csv")


@dataclass
class Captions:
    texts: dict[str, list[str]] = field(default_factory=dict)   # id -> its references (usually one)
    rejected: set[str] = field(default_factory=set)    # ids whose caption entry was bad (already reported)
    problems: list[Problem] = field(default_factory=list)
    source: str = ""


def _has_invalid_utf8(text: str) -> bool:
    # Text is decoded with surrogateescape, so bytes that are not UTF-8 show up as lone surrogates.
    return any(0xDC80 <= ord(char) <= 0xDCFF for char in text)


def _add_caption(captions: Captions, clip_id: str, text, where: str, format_problem: str | None = None) -> None:
    """Add one entry, or report why it is left out (``format_problem``: what the file format says is wrong)."""
    def reject(reason: str) -> None:
        captions.rejected.add(clip_id)
        captions.texts.pop(clip_id, None)
        captions.problems.append(Problem(ERROR, captions.source, f"{where}: {reason}", id=clip_id))

    if not clip_id or _has_invalid_utf8(clip_id):
        captions.problems.append(Problem(ERROR, captions.source, f"{where}: empty or non-UTF-8 id"))
    elif (bad_id := id_problem(clip_id)) is not None:
        reject(bad_id)
    elif format_problem is not None:
        reject(format_problem)
    elif clip_id in captions.texts or clip_id in captions.rejected:
        reject(f"duplicate id {clip_id!r}; give each clip one entry (several references go in one JSON list)")
    elif isinstance(text, list) and not text:
        reject(f"caption list of {clip_id!r} is empty")
    elif not all(isinstance(t, str) for t in (text if isinstance(text, list) else [text])):
        reject(f"caption of {clip_id!r} is {type(text).__name__}, not text or a list of texts")
    elif any(_has_invalid_utf8(t) for t in (text if isinstance(text, list) else [text])):
        reject(f"caption of {clip_id!r} is not valid UTF-8")
    elif not all(t.strip() for t in (text if isinstance(text, list) else [text])):
        reject(f"caption of {clip_id!r} is empty")
    else:
        captions.texts[clip_id] = [t.strip() for t in (text if isinstance(text, list) else [text])]


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def _load_json(path: Path, captions: Captions) -> None:
    pairs = json.loads(_read_text(path), object_pairs_hook=lambda items: items)
    if not isinstance(pairs, list) or not all(isinstance(item, tuple) for item in pairs):
        raise PrepareError(f"{path}: expected a JSON object {{\"<id>\": \"caption\" or [\"reference\", ...], ...}}")
    for clip_id, text in pairs:
        _add_caption(captions, clip_id, text, f"id {clip_id!r}")


def _load_csv(path: Path, captions: Captions) -> None:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if not reader.fieldnames or not {"id", "caption"} <= {name.strip() for name in reader.fieldnames}:
        raise PrepareError(f"{path}: the first line must be the header 'id,caption' (found {reader.fieldnames})")
    for line_number, row in enumerate(reader, start=2):
        extra = row.pop(None, None)     # fields beyond the header's: a caption with unquoted commas
        row = {(name or "").strip(): value for name, value in row.items()}
        problem = None
        if extra:
            problem = (f"{len(reader.fieldnames) + len(extra)} fields where the header has "
                       f"{len(reader.fieldnames)}: quote a caption that holds commas (\"a dog runs, then barks\")")
        _add_caption(captions, (row.get("id") or "").strip(), row.get("caption") or "", f"line {line_number}",
                     problem)


def _load_caption_tsv(path: Path, captions: Captions) -> None:
    """The released ``<split>.caption.tsv`` (docs/upstream.md §1.5); a bad row is reported and left out."""
    for number, line in split_rows(path.read_bytes()):
        try:
            row = parse_caption_row(line, number, captions.source)
        except CaptionTSVError as error:
            clip_id = clip_id_from_key(line.partition("\t")[0])
            captions.rejected.add(clip_id)
            reason = str(error).removeprefix(f"{captions.source}: ")
            captions.problems.append(Problem(ERROR, captions.source, reason, id=clip_id))
            continue
        clip_id = clip_id_from_key(row.key)
        _add_caption(captions, clip_id, list(row.captions) or "", f"line {row.line}")


LOADERS = {".json": _load_json, ".csv": _load_csv, ".tsv": _load_caption_tsv}


def released_copy(layout: Layout) -> Path:
    """Where the user's own ``metadata/<split>.caption.tsv`` is kept once prepare writes its output there."""
    return layout.meta("caption.released.tsv")


def caption_source(layout: Layout, override: Path | None, record: OutputsRecord) -> Path | None:
    """The user's captions for ``layout.split``: ``override``, else a ``metadata/<split>.caption.tsv`` prepare did
    not write, else the kept copy of one, else ``captions.json``, else ``captions.csv``. Never a prepare output."""
    if override is not None:
        if record.wrote(override):
            raise PrepareError(f"{override}: this caption file was written by a previous prepare run; give the "
                               f"captions file it was made from")
        return override
    candidates = [layout.meta("caption.tsv"), released_copy(layout)] + [layout.data_dir / n for n in USER_FILES]
    return next((path for path in candidates if path.is_file() and not record.wrote(path)), None)


def keep_released_copy(source: Path, layout: Layout) -> None:
    """Prepare is about to write over the user's ``metadata/<split>.caption.tsv``: keep its bytes first."""
    if source == layout.meta("caption.tsv"):
        with atomic_write(released_copy(layout), "wb") as handle:
            handle.write(source.read_bytes())


def load_captions(path: Path, data_dir: Path) -> Captions:
    """Read a captions file. A file that cannot be parsed at all raises PrepareError naming it; a bad entry is
    reported and left out."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise PrepareError(f"{path}: unknown captions format; use .json, .csv or a released .caption.tsv")
    captions = Captions(source=str(path.relative_to(data_dir) if path.is_relative_to(data_dir) else path))
    try:
        loader(path, captions)
    except (OSError, ValueError, csv.Error) as error:   # JSONDecodeError and CaptionTSVError are ValueErrors
        message = str(error) if str(path) in str(error) else f"{path}: cannot parse captions ({error})"
        raise PrepareError(message) from None
    return captions
