"""Parameter groups, learning rates, weight decay and the warmup-linear schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from avlformer.training.args import parse_train_args
from avlformer.training.optim import build_optimizer, build_scheduler, parameter_groups


class Toy(nn.Module):
    """Shaped like the real model: a video encoder (the backbone, found by role) with a relative-position bias
    table and a norm, and non-backbone layers with biases and LayerNorms."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.proj = nn.Linear(2, 2)
        self.encoder.norm = nn.LayerNorm(2)
        self.encoder.relative_position_bias_table = nn.Parameter(torch.ones(3))
        self.fc = nn.Linear(2, 2)
        self.decoder = nn.Module()
        self.decoder.LayerNorm = nn.LayerNorm(2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def part(self, role):
        return {"video": self.encoder, "text": self.decoder}[role]


def group_members(model, groups):
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {g["name"]: sorted(by_id[id(p)] for p in g["params"]) for g in groups}


def test_four_upstream_groups_by_name_with_backbone_lr():
    model = Toy()
    groups = parameter_groups(model.named_parameters(), learning_rate=1e-4, backbone_coef_lr=0.05, weight_decay=0.3,
                              backbone=model.part("video").parameters())
    members = group_members(model, groups)
    assert [g["name"] for g in groups] == ["backbone_decay", "decay", "backbone_no_decay", "no_decay"]
    # Upstream's substring rule: the bias table is "no decay", Swin's norm.weight is decayed.
    assert members["backbone_decay"] == ["encoder.norm.weight", "encoder.proj.weight"]
    assert members["backbone_no_decay"] == ["encoder.norm.bias", "encoder.proj.bias",
                                            "encoder.relative_position_bias_table"]
    assert members["decay"] == ["fc.weight"]
    assert members["no_decay"] == ["decoder.LayerNorm.bias", "decoder.LayerNorm.weight", "fc.bias"]
    assert [g["lr"] for g in groups] == pytest.approx([5e-6, 1e-4, 5e-6, 1e-4])
    assert [g["weight_decay"] for g in groups] == [0.3, 0.3, 0.0, 0.0]
    assert all("frozen" not in name for names in members.values() for name in names)


def test_weight_decay_flag_takes_effect():
    """With zero gradients AdamW's update is 0, so each step only decays: p <- p * (1 - lr * wd)."""
    args = parse_train_args(["--weight_decay", "0.5", "--learning_rate", "0.1", "--backbone_coef_lr", "1"])
    model = Toy()
    optim = args.optim
    optimizer = build_optimizer(model, optim.learning_rate, optim.backbone_coef_lr, optim.weight_decay,
                                optim.adam_epsilon)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()
    assert torch.allclose(model.fc.weight, before["fc.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(model.fc.bias, before["fc.bias"])  # no-decay group
    assert torch.equal(model.frozen.weight, before["frozen.weight"])


def expected_factor(step, total, ratio):
    warmup = int(ratio * total)
    return step / warmup if step < warmup else (total - step) / (total - warmup)


def test_warmup_linear_schedule_values_with_floor():
    model = Toy()
    optimizer = build_optimizer(model, 1e-3, 0.1, 0.0, 1e-8)
    total, ratio, floor = 50, 0.2, 1e-8
    scheduler = build_scheduler(optimizer, "warmup_linear", total, ratio, floor)
    seen = []
    for step in range(total + 1):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for step, lrs in enumerate(seen):
        factor = expected_factor(step, total, ratio)
        assert lrs == pytest.approx([max(floor, base * factor) for base in (1e-4, 1e-3, 1e-4, 1e-3)], rel=1e-9)
    assert seen[0] == [floor] * 4               # upstream: the first optimizer step runs at the floor
    assert seen[10][1] == pytest.approx(1e-3)   # peak right after the 10 warm-up steps
    assert seen[total] == [floor] * 4


def test_step_schedule_halves_then_drops_tenfold():
    optimizer = build_optimizer(Toy(), 1.0, 1.0, 0.0, 1e-8)
    scheduler = build_scheduler(optimizer, "step", 10, 0.1, 1e-8)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0] * 5 + [0.1] * 5)


def test_groups_emptied_by_freezing_are_left_out_so_the_optimizer_state_reloads():
    backbone = torch.nn.Linear(2, 2)
    head = torch.nn.Linear(2, 2)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head})
    for param in backbone.parameters():
        param.requires_grad_(False)  # a frozen backbone empties both backbone groups
    groups = parameter_groups(model.named_parameters(), 1e-3, 0.05, 0.01, backbone=backbone.parameters())
    assert [g["name"] for g in groups] == ["decay", "no_decay"]
    optimizer = torch.optim.AdamW(groups)
    head(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    again = torch.optim.AdamW(parameter_groups(model.named_parameters(), 1e-3, 0.05, 0.01,
                                               backbone=backbone.parameters()))
    again.load_state_dict(optimizer.state_dict())  # resume itself: tests/test_features.py (frozen Video Swin)
    assert [g["name"] for g in again.param_groups] == ["decay", "no_decay"]


def test_unsharded_parameters_get_the_fused_adamw_and_match_the_default_one():
    torch.manual_seed(0)
    model, reference = Toy(), Toy()
    reference.load_state_dict(model.state_dict())
    fused = build_optimizer(model, 1e-2, 0.1, 0.05, 1e-8)
    assert all(group["fused"] for group in fused.param_groups)
    default = torch.optim.AdamW(parameter_groups(reference.named_parameters(), 1e-2, 0.1, 0.05,
                                                 backbone=reference.part("video").parameters()),
                                lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(3):
        for net, optimizer in ((model, fused), (reference, default)):
            optimizer.zero_grad()
            sum((p ** 2).sum() for p in net.parameters()).backward()
            optimizer.step()
    for (name, value), other in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(value, other, rtol=1e-6, atol=1e-7, msg=name)
