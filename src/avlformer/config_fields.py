"""The one rule for building config dataclasses from JSON: unknown keys and values of the wrong type are errors,
never ignored or coerced.

Types come from the field annotations: ``int`` (not bool/float/str), ``float`` (int or float), ``bool``, ``str``,
sequences as JSON arrays, nested config dataclasses as objects, ``X | None``; other annotations are not checked.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from typing import Any, Mapping

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class FieldTypeError(ValueError):
    """A config value of the wrong type; ``field`` is its name (dotted inside nested configs)."""

    def __init__(self, field: str, expected: str, value: Any):
        self.field, self.expected, self.value = field, expected, value
        super().__init__(f"{field} must be {expected}, got {_shown(value)}")

    def inside(self, parent: str) -> "FieldTypeError":
        """The same error for the field as seen from the config holding ``parent`` (``video.embed_dim``)."""
        return FieldTypeError(f"{parent}.{self.field}", self.expected, self.value)


def checked_fields(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as a dict, after refusing any key that the dataclass ``cls`` does not declare and any value whose
    type does not fit its field; the message names the field, e.g. ``num_frames must be an integer, got 'many'``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {_shown(data)}")
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown} (known: {sorted(known)})")
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # an annotation names a type imported only for type checkers: nothing to check against
        hints = {}
    for name, value in data.items():
        problem = type_problem(hints.get(name, Any), value)
        if problem:
            raise FieldTypeError(name, problem, value)
    return dict(data)


def type_problem(annotation: Any, value: Any) -> str | None:
    """None when ``value`` (parsed JSON) fits ``annotation``, else what it should have been ("an integer")."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(member, value) for member in args]
        return None if None in problems else " or ".join(p for p in problems if p)
    if annotation is type(None):
        return None if value is None else "null"
    if annotation is bool:
        return None if isinstance(value, bool) else _NAMES[bool]
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else _NAMES[int]
    if annotation is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and not (isinstance(value, float) and math.isnan(value)) else _NAMES[float]
    if annotation is str:
        return None if isinstance(value, str) else _NAMES[str]
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return None if isinstance(value, (Mapping, annotation)) else "an object"
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return "a list"
        problems = [type_problem(args[0] if args else Any, entry) for entry in value]
        wrong = next((p for p in problems if p), None)
        return None if wrong is None else f"a list of entries that are each {wrong}"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class JsonDataclass:
    """``to_dict`` / ``from_dict`` for a config dataclass; unknown keys and wrong types are errors."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        return cls(**checked_fields(cls, data))
