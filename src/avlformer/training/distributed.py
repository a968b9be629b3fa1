"""Process-group setup from torchrun's environment, model wrapping (DDP, FSDP2) and the few collective helpers
the loop needs. One process without torchrun's variables is simply not distributed: no CUDA call is made on a CPU
machine (upstream's dist_init assumed CUDA, docs/upstream.md §4.2). The device follows ``avlformer.device``'s
one rule."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from avlformer.device import resolve_device
from avlformer.modeling.parts import ENCODER_ROLES, ROLES


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(requested_device: str = "auto", fallback_local_rank: int = 0) -> DistEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; NCCL on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(fallback_local_rank)))
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: launch with torchrun "
                               "(run.sh does) or set them")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.is_distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / env.world_size


def any_rank_true(flag: bool, env: DistEnv) -> bool:
    """So every rank stops together (a NaN on one rank must stop all of them)."""
    if not env.is_distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


# FSDP2 gathers a unit's parameters around its forward(), so the units are the modules the model calls through
# forward: each part and each projection (AVLFormer.encoder_outputs, project_av); the learned mask, read directly,
# stays in the root unit. The decoder's LM head is called after its forward (``logits``), so the decoder keeps its
# parameters gathered until backward instead of resharding at the end of forward.
RESHARD_AFTER_FORWARD = {"video": True, "audio": True, "text": False}


def fsdp_units(model: nn.Module, *, features: bool = False) -> list[tuple[nn.Module, bool]]:
    """(module, reshard_after_forward) of each unit, projections before the parts that may hold them. End to end,
    a frozen module stays in the root unit; on cached features (training/features.py) the frozen encoders run
    only when validation decodes raw videos, which gathers every unit first (training/validation.py), so as units
    of their own they stay sharded through the training steps."""
    units = [(model.projection(role), True) for role in ENCODER_ROLES]
    units += [(model.part(role), RESHARD_AFTER_FORWARD[role]) for role in ROLES]
    return [(module, reshard) for module, reshard in units
            if features or any(p.requires_grad for p in module.parameters())]


def wrap_model(model: nn.Module, strategy: str, env: DistEnv, *, features: bool = False) -> nn.Module:
    """DDP (default) or FSDP2 (`fully_shard`, parameters sharded per part, ``fsdp_units``; ``features``: the
    layout for training on cached features). A single process is never wrapped."""
    if not env.is_distributed:
        return model
    if strategy == "ddp":
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        # find_unused_parameters: frozen encoders and the unused-at-some-steps learned mask must not hang DDP
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module, reshard in fsdp_units(model, features=features):
            fully_shard(module, reshard_after_forward=reshard)
        return fully_shard(model)
    raise ValueError(f"strategy {strategy!r} is not wrapped here")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The library model under a DDP wrapper (FSDP2 shards in place: the model is its own module)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model

