"""Command-line spelling rules shared by every ``avlformer`` command and the training config reader: underscore and
hyphen spellings are equal (argv is normalised before parsing); the value parsers ``parse_*``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f", "off"})


def normalize_flag_spelling(argv: list[str]) -> list[str]:
    """Rewrite ``--some_flag[=v]`` to ``--some-flag[=v]`` (a trailing underscore, as in ``--lambda_``, is dropped)."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token.partition("=")
            name = "--" + name[2:].replace("_", "-").rstrip("-")
            token = name + eq + value
        out.append(token)
    return out


def parse_bool(value: str | bool | int) -> bool:
    """``true/false``, ``yes/no``, ``1/0``, ``on/off`` (any case) or a real bool; anything else is an error
    (argparse shows it as a one-line usage error)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    lowered = str(value).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def parse_text(value: Any) -> str:
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected a string, got {value!r}")
    return value


def parse_int(value: Any) -> int:
    """An integer, or an integer written as text (``"16"``); bools, floats and other text are errors."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    try:
        return int(value.strip(), 10) if isinstance(value, str) else value
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def parse_float(value: Any) -> float:
    """A finite number, or one written as text; bools and other text are errors."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number
