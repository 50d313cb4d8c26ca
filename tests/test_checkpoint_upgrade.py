"""Checkpoints of an earlier layout resume: missing config keys take their former behaviour, and
Co-teaching's second optimiser merges into the trainer's one optimiser without changing a step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from balancemix_timm.config import LEGACY_VALUES, TrainConfig
from balancemix_timm.methods.coteaching import CoTeachingMethod
from balancemix_timm.trainer.optim import build_optimizer


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _step(optimizer: torch.optim.Optimizer, nets: list[nn.Module], x: torch.Tensor) -> None:
    optimizer.zero_grad()
    sum(net(x).square().mean() for net in nets).backward()
    optimizer.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_coteaching_two_optimiser_checkpoint_steps_as_before(optimizer: str) -> None:
    cfg = TrainConfig(method="coteaching", optimizer=optimizer, lr=0.05, weight_decay=1e-3, scheduler="none")
    net_a, net_b = _net(0), _net(1)
    opt_a, _ = build_optimizer(cfg, [net_a], 10)
    opt_b, _ = build_optimizer(cfg, [net_b], 10)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    for _ in range(2):
        _step(opt_a, [net_a], x)
        _step(opt_b, [net_b], x)
    old = {"optimizer": opt_a.state_dict(),
           "method": {"epoch": 1, "model2": net_b.state_dict(), "optimizer2": opt_b.state_dict(), "scheduler2": None}}
    merged_a, merged_b = copy.deepcopy(net_a), copy.deepcopy(net_b)
    method = object.__new__(CoTeachingMethod)  # the upgrade reads only the checkpoint
    new = method.upgrade_checkpoint(copy.deepcopy(old))
    assert "optimizer2" not in new["method"] and "scheduler2" not in new["method"]
    assert new["method"]["model2"] is not None
    merged, _ = build_optimizer(cfg, [merged_a, merged_b], 10)
    merged.load_state_dict(new["optimizer"])
    for _ in range(3):
        _step(opt_a, [net_a], x)
        _step(opt_b, [net_b], x)
        _step(merged, [merged_a, merged_b], x)
    for before, after in ((net_a, merged_a), (net_b, merged_b)):
        for p, q in zip(before.parameters(), after.parameters()):
            torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert method.upgrade_checkpoint(new) is new  # the current layout is left as it is


def test_a_config_saved_before_a_key_existed_resumes_with_that_keys_former_value(tmp_path) -> None:
    from balancemix_timm.config import load_config
    from balancemix_timm.trainer import Trainer
    from tests._tiny import tiny

    values = tiny(data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"), run_name="old", epochs=2,
                  device="cpu", label_diagnostics=False, **LEGACY_VALUES)
    Trainer(load_config(None, values)).fit(stop_after=1)
    path = tmp_path / "runs" / "old" / "last.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k not in LEGACY_VALUES}  # an older file
    torch.save(ckpt, path)
    summary = Trainer(load_config(None, values)).fit(resume=path)
    assert summary["last"]["epoch"] == 2
    with pytest.raises(ValueError, match="confidence_input: checkpoint 'views', now 'image'"):
        Trainer(load_config(None, {k: v for k, v in values.items() if k != "confidence_input"})).fit(resume=path)
