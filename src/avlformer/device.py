"""The one rule for choosing a torch device: ``auto`` is CUDA when this machine has it (device ``local_rank``
under torchrun), else the CPU; an explicit ``cuda`` (or ``cuda:N``) without CUDA is an error, never a fall-back.
"""

from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    name = str(name or "auto").strip().lower()
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank) if local_rank is not None else torch.device("cuda")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name}: not a device (use {DEVICE_CHOICES})") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: not supported (use {DEVICE_CHOICES})")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextlib.contextmanager
def one_cpu_thread():
    """Run the block at one torch intra-op thread, for work made of many small parallel regions, whose barriers
    a descheduled thread stalls on a busy machine."""
    caller = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(caller)
