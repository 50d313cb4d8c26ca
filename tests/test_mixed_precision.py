"""Mixed precision: ``amp`` (float16 on CUDA, bfloat16 on CPU) and ``channels_last``."""

from __future__ import annotations

import math

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.trainer import Trainer
from balancemix_timm.utils import amp_enabled, autocast, autocast_dtype, view_probabilities
from tests._tiny import tiny


@pytest.mark.parametrize(("amp", "device", "expected"), [
    (None, "cpu", False), (None, "cuda", True), (True, "cpu", True), (True, "cuda", True),
    (False, "cpu", False), (False, "cuda", False),
])
def test_amp_setting_rule(amp, device, expected):
    assert amp_enabled(amp, torch.device(device)) is expected


def test_autocast_types():
    assert autocast_dtype(torch.device("cuda")) is torch.float16
    assert autocast_dtype(torch.device("cpu")) is torch.bfloat16
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), True):
        assert lin(x).dtype is torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert lin(x).dtype is torch.float32


def test_view_probabilities_are_float32_under_cpu_autocast():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    views = torch.rand(2, 3, 3, 4, 4)
    probs = view_probabilities(model, views, torch.device("cpu"), amp=True)
    ref = view_probabilities(model, views, torch.device("cpu"), amp=False)
    assert probs.dtype is torch.float32 and probs.shape == (2, 3, 5)
    assert torch.allclose(probs, ref, atol=2e-2)  # bfloat16 keeps 8 bits of mantissa
    assert not torch.equal(probs, ref)  # the reduced type was used


def test_amp_config_accepts_true_false_null_only(tmp_path):
    assert load_config(None, tiny(data_root=str(tmp_path))).amp is None
    assert load_config(None, tiny(data_root=str(tmp_path), amp=True)).amp is True
    with pytest.raises(ValueError, match="amp must be true, false or null"):
        load_config(None, tiny(data_root=str(tmp_path), amp="fast"))


@pytest.mark.parametrize("method", ["balancemix", "coteaching"])
def test_cpu_bfloat16_channels_last_run(tmp_path, method):
    cfg = load_config(None, tiny(data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"), device="cpu",
                                 amp=True, channels_last=True, method=method, epochs=1))
    trainer = Trainer(cfg)
    assert trainer.amp and not trainer.scaler.is_enabled()  # bfloat16 needs no loss scaling
    for module in trainer.trained_modules:
        conv = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    with trainer.autocast():
        assert trainer.model(x).dtype is torch.bfloat16
    summary = trainer.fit()
    assert math.isfinite(summary["last"]["mAP"])
    assert all(math.isfinite(float(p.detach().sum())) for p in trainer.model.parameters())


def test_cpu_default_stays_float32(tmp_path):
    cfg = load_config(None, tiny(data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "runs"), device="cpu"))
    trainer = Trainer(cfg)
    assert not trainer.amp
    with trainer.autocast():
        assert trainer.model(torch.rand(2, 3, cfg.image_size, cfg.image_size)).dtype is torch.float32
