"""Shared rule for building config dataclasses from JSON: unknown keys are an error, never silently ignored
(a misspelt key in a config file would otherwise leave the default in place without a word)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def checked_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as a dict, after refusing any key that the dataclass ``cls`` does not declare."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown} (known: {sorted(known)})")
    return dict(data)
