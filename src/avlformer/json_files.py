"""Reading a JSON file with an error that names the file and the problem (never a bare traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike, what: str = "JSON file", **loads_kwargs) -> Any:
    """The parsed content of ``path``. Raises FileNotFoundError or ValueError whose message starts with the
    path: ``<path>: <what> not found`` / ``is a folder`` / ``not UTF-8 text`` / ``not valid JSON (...)``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: {what} expected, found a folder") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        return json.loads(text, **loads_kwargs)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: {what} is not valid JSON ({error.msg} at line {error.lineno} column "
                         f"{error.colno})") from None
