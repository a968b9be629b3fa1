"""Models on the meta device: state-dict shapes without memory, and checkpoint loading by assignment.

Computed buffers are in no state dict: modules holding them define ``computed_buffers() -> {name: tensor}``,
recomputed after an assignment load; a tensor left on the meta device is an error.
"""

from __future__ import annotations

import contextlib
from itertools import chain
from typing import Any, Callable, Iterator, Mapping, TypeVar

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class TooManyTensors(RuntimeError):
    """Building a module registered more tensors than allowed (a configuration far larger than expected)."""


def build_on_meta(factory: Callable[[], ModuleT], max_tensors: int | None = None) -> ModuleT:
    """``factory()`` on the meta device; with ``max_tensors``, :class:`TooManyTensors` as soon as more parameters
    and buffers are registered (a crafted config of 100000 layers would take minutes even there)."""
    budget = contextlib.nullcontext() if max_tensors is None else _tensor_budget(max_tensors)
    with torch.device("meta"), budget:
        return factory()


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model; the message lists every missing, unexpected and misshaped key."""


def check_state_dict(state_dict: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], strict: bool = True,
                     what: str = "state dict") -> tuple[list[str], list[str]]:
    """Compare names and shapes (values are tensors or shapes) with ``expected``; raise listing every problem
    (misshaped always, missing/unexpected when strict). Returns (missing, unexpected)."""
    given = {name: tuple(value.shape) if isinstance(value, torch.Tensor)
             else tuple(value) if isinstance(value, (tuple, list)) else type(value).__name__
             for name, value in state_dict.items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(f"{name} (file {list(shape) if isinstance(shape, tuple) else shape}, model "
                       f"{list(expected[name])})" for name, shape in given.items()
                       if name in expected and shape != expected[name])
    problems = [f"{label} ({len(keys)}): {', '.join(keys)}" for label, keys in (
        ("missing keys", missing if strict else []), ("unexpected keys", unexpected if strict else []),
        ("misshaped keys", misshaped)) if keys]
    if problems:
        raise CheckpointMismatchError(f"{what} does not match the model: " + "; ".join(problems))
    return missing, unexpected


def load_by_assignment(module: ModuleT, state_dict: Mapping[str, torch.Tensor]) -> ModuleT:
    """Give a meta-built ``module`` the tensors of ``state_dict`` (strict), in the dtypes it declares, then
    recompute its computed buffers."""
    own = module.state_dict()
    cast = {name: tensor.to(own[name].dtype) if name in own and tensor.dtype != own[name].dtype else tensor
            for name, tensor in state_dict.items()}
    module.load_state_dict(cast, strict=True, assign=True)
    for submodule in module.modules():
        compute = getattr(submodule, "computed_buffers", None)
        if compute is not None:
            with torch.device("cpu"):
                for name, value in compute().items():
                    setattr(submodule, name, value)
    left = [name for name, tensor in chain(module.named_parameters(), module.named_buffers()) if tensor.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensor(s) left on the meta device after loading (no stored value and no "
                           f"computed_buffers() entry): {', '.join(left[:5])}")
    return module


@contextlib.contextmanager
def _tensor_budget(limit: int) -> Iterator[None]:
    count = 0

    def count_tensor(_module, name, _tensor):
        nonlocal count
        count += 1
        if count > limit:
            raise TooManyTensors(f"more than {limit} parameters and buffers (stopped at {name!r})")

    handles = [register_module_parameter_registration_hook(count_tensor),
               register_module_buffer_registration_hook(count_tensor)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
