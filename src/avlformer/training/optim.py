"""Optimizer and learning-rate schedule as upstream trained (docs/upstream.md §4.1): four AdamW parameter groups
split by name, the video encoder (the backbone) at a reduced learning rate, and a warmup-linear schedule with a floor.

Upstream vendored an HF-style AdamW that adds eps to sqrt(v) before bias correction and decays after the update;
torch's AdamW (used here) adds eps after bias correction and decays before the update. Both are AdamW; the
difference is O(eps) and O(lr^2 * wd) per step, below anything a training run can tell apart.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

# Upstream's name rule: a substring match, so Swin's relative_position_bias_table is "no decay" too.
NO_DECAY_SUBSTRINGS = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], learning_rate: float,
                     backbone_coef_lr: float, weight_decay: float,
                     backbone: Iterable[nn.Parameter] = (),
                     parts: Iterable[tuple[str, float, Iterable[nn.Parameter]]] = ()) -> list[dict]:
    """The four upstream groups, in upstream order, each named (``group["name"]``); ``backbone``: the parameters
    at ``backbone_coef_lr``; ``parts``: (name, multiplier, parameters) of parts with their own learning-rate
    multiplier, each in two more groups (``<name>_decay``, ``<name>_no_decay``) after the four. Frozen parameters
    are left out (upstream kept them, but they never received a gradient), and so is a group left empty by
    freezing (a frozen backbone empties both backbone groups): torch's optimizer state loading refuses more than
    one empty group, which would make such a run impossible to resume."""
    backbone_ids = {id(param) for param in backbone}
    part_of = {id(param): part for part, _, params in parts for param in params}
    rates = {"backbone_": learning_rate * backbone_coef_lr, "": learning_rate}  # prefix -> lr (upstream's four)
    rates.update({f"{part}_": learning_rate * coef for part, coef, _ in parts})
    buckets: dict[str, list[nn.Parameter]] = {prefix + decay: [] for prefix in rates for decay in ("decay", "no_decay")}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        decay = "no_decay" if any(part in name for part in NO_DECAY_SUBSTRINGS) else "decay"
        if id(param) in part_of:
            key = f"{part_of[id(param)]}_{decay}"
        else:
            key = ("backbone_" if id(param) in backbone_ids else "") + decay
        buckets[key].append(param)
    # upstream's order first (backbone_decay, decay, backbone_no_decay, no_decay), then each part's two
    names = [prefix + decay for decay in ("decay", "no_decay") for prefix in ("backbone_", "")]
    names += [f"{part}_{decay}" for part, _, _ in parts for decay in ("decay", "no_decay")]
    groups = [{"name": name, "params": buckets[name],
               "weight_decay": 0.0 if name.endswith("no_decay") else weight_decay,
               "lr": rates[name.removesuffix("no_decay").removesuffix("decay")]} for name in names]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, learning_rate: float, backbone_coef_lr: float, weight_decay: float,
                    adam_epsilon: float) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``; the backbone is the model's video encoder (``model.part("video")``). A
    part whose config has an ``lr_multiplier`` (the Hugging Face parts) trains at that multiple of the learning
    rate instead (``backbone_coef_lr`` generalised; the paper's parts have none)."""
    config = getattr(model, "config", None)
    parts = [(role, getattr(getattr(config, role), "lr_multiplier"), model.part(role).parameters())
             for role in ("video", "audio", "text") if hasattr(getattr(config, role, None), "lr_multiplier")]
    own = {role for role, _, _ in parts}
    groups = parameter_groups(model.named_parameters(), learning_rate, backbone_coef_lr, weight_decay,
                              backbone=() if "video" in own else model.part("video").parameters(), parts=parts)
    # The fused kernel updates each tensor in one pass; the default (foreach) one makes temporary copies of every
    # parameter (docs/training.md, Training speed and memory). FSDP2's sharded (DTensor) parameters keep the
    # foreach one, which handles them.
    fused = not any(_is_sharded(p) for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=adam_epsilon, fused=fused)


def _is_sharded(parameter: torch.Tensor) -> bool:
    if not torch.distributed.is_available():  # torch builds without distributed have no DTensor
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


def warmup_linear_factor(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Upstream WarmupLinearLR: linear ramp from 0 over int(ratio*T) steps, then linear decay to 0 at T."""
    warmup = int(warmup_ratio * total_steps)
    if step < warmup:
        return step / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_ratio: float,
                    min_lr: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Schedules are functions of the optimizer step count, so their state_dict is just that count."""
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, total_steps // 2), gamma=0.1)
    if kind != "warmup_linear":
        raise ValueError(f"unknown --scheduler {kind!r} (warmup_linear or step)")

    def factor_for(base_lr: float):
        floor = min_lr / base_lr if base_lr > 0 else 0.0
        # lr = max(min_lr, base_lr * factor), per group, as upstream
        return lambda step: max(floor, warmup_linear_factor(step, total_steps, warmup_ratio))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])
