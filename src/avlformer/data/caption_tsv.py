"""The one reader of caption TSVs: ``key \t JSON`` rows, the JSON a list of ``{"caption": text}``, one such object or
a string. Rows end at ``\n`` (or ``\r\n``) only: ``str.splitlines`` would also split at U+2028 and the like.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptionRow:
    line: int            # 1-based line number in the file
    key: str
    captions: list[str]


class CaptionTSVError(ValueError):
    """A caption TSV row cannot be read; the message names the file and the line."""


def parse_caption_field(field: str, where: str) -> list[str]:
    try:
        entries = json.loads(field)
    except json.JSONDecodeError as error:
        raise CaptionTSVError(f"{where}: caption column is not JSON ({error.msg})") from None
    if isinstance(entries, (dict, str)):
        entries = [entries]
    if not isinstance(entries, list):
        raise CaptionTSVError(f"{where}: expected a JSON list of {{\"caption\": text}} objects")
    captions = []
    for entry in entries:
        caption = entry.get("caption") if isinstance(entry, dict) else entry
        if not isinstance(caption, str):
            raise CaptionTSVError(f"{where}: expected a JSON list of {{\"caption\": text}} objects, "
                                  f"found {entry!r:.80}")
        captions.append(caption)
    return captions


def split_rows(data: bytes) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank row; rows split at ``\\n`` only."""
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            rows.append((number, line))
    return rows


def parse_caption_row(line: str, number: int, path: str | os.PathLike) -> CaptionRow:
    where = f"{path}: line {number}"
    key, tab, payload = line.partition("\t")
    if not tab:
        raise CaptionTSVError(f"{where}: expected 'key<TAB>caption JSON', found no tab")
    if "\t" in payload:
        raise CaptionTSVError(f"{where}: more than two tab-separated columns")
    return CaptionRow(line=number, key=key.strip(), captions=parse_caption_field(payload, where))


def read_caption_tsv(path: str | os.PathLike) -> list[CaptionRow]:
    """Every row of ``path``; raises CaptionTSVError (a ValueError) naming the file and line of the first bad
    row, FileNotFoundError when the file is missing."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: caption TSV not found") from None
    except IsADirectoryError:
        raise CaptionTSVError(f"{path}: caption TSV expected, found a folder") from None
    return [parse_caption_row(line, number, path) for number, line in split_rows(data)]
