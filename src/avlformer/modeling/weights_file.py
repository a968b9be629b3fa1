"""Reading weight files safely: ``torch.load(weights_only=True)`` or safetensors; every failure names the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from avlformer.error_text import one_line


def read_weights_file(path: str | os.PathLike, what: str = "checkpoint") -> Mapping[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for truncated/corrupt data
            raise ValueError(f"{path}: cannot read safetensors weights: {one_line(error)}") from None
    try:
        try:  # memory-mapped: a 1.25 GB file is not held twice while a model copies it
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            content = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file format
    except Exception as error:  # torch raises several types (RuntimeError, UnpicklingError, EOFError, ...)
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True) (corrupt, or it holds "
                         f"objects other than tensors, which are never unpickled): {one_line(error)}") from None
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(content).__name__}")
    return content


def read_safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a ``.safetensors`` file, from its header alone."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: weights file not found") from None
    except Exception as error:  # safetensors raises its own error types for a truncated or corrupt header
        raise ValueError(f"{path}: cannot read safetensors weights: {error}") from None


def load_converted(target: torch.nn.Module, path: str | os.PathLike, what: str, convert, config) -> list[str]:
    """Read an official weight file, convert it with an encoder's ``checkpoint_filter_fn`` and load it strictly
    into ``target``; returns the dropped keys."""
    path = Path(path)
    content = read_weights_file(path, what)
    try:
        state_dict, dropped = convert(content, config)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    target.load_state_dict(state_dict, strict=True)
    return dropped
