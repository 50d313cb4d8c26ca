"""The cost options (docs/performance.md): ``view_fraction``, the engine's ``device`` and its sync-free steps.

Timings are not tested here (they live in ``benchmarks/``); these tests check behaviour.
"""

from __future__ import annotations

import math

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.refine import LabelState
from balancemix_timm.sampling import ShardedRandomSampler
from balancemix_timm.trainer import Trainer
from tests._tiny import tiny

TINY = tiny(epochs=1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("perf-demo"))


def _labels(n: int = 300, k: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.5, 0.3, 0.2, 0.1, 0.05])[:k]
    return (torch.rand(n, k, generator=g) < rates).to(torch.uint8)


# ---------------------------------------------------------------------------- view_fraction
@pytest.mark.parametrize("fraction, expected_per_batch", [(1.0, 32), (0.5, 16), (0.25, 8)])
def test_view_fraction_records_the_first_share_of_each_random_batch(data_root, tmp_path, fraction, expected_per_batch):
    cfg = load_config(None, dict(TINY, data_root=data_root, output_dir=str(tmp_path), view_fraction=fraction))
    trainer = Trainer(cfg)
    forwarded: list[tuple[int, int]] = []
    original = trainer.context.view_probs

    def counting(views, model=None, count=None):
        probs = original(views, model, count)  # (V, samples forwarded, K)
        forwarded.append(tuple(probs.shape[:2]))
        return probs

    trainer.context.view_probs = counting  # type: ignore[method-assign]
    trainer.train_epoch(0)
    eng = trainer.method.engine
    # The epoch's random stream (a permutation of the 160 samples) in batches of 32: the
    # first `expected_per_batch` positions of every batch are recorded, nothing else.
    sampler = ShardedRandomSampler(160, seed=cfg.seed)
    sampler.set_epoch(0)
    order = list(sampler)
    expect = torch.zeros(160, dtype=torch.bool)
    for start in range(0, 160, 32):
        expect[order[start:start + expected_per_batch]] = True
    assert torch.equal(eng.seen, expect)
    # 2 views and the un-augmented image of the chosen instances only
    assert forwarded == [(2 + int(cfg.confidence_input == "image"), expected_per_batch)] * 5
    # Unrecorded samples keep the initial 0.5.
    assert bool((eng.probs[~expect] == 0.5).all())


def test_num_viewed_rounds_up_and_keeps_one():
    from balancemix_timm.options import BalanceMixOptions
    from balancemix_timm.recipe import BalanceMixRecipe

    labels = torch.zeros(4, 2, dtype=torch.uint8)

    def viewed(fraction: float, batch_size: int) -> int:
        return BalanceMixRecipe(labels, BalanceMixOptions(view_fraction=fraction)).num_viewed(batch_size)

    assert viewed(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004 in floating point
    assert viewed(0.3, 11) == math.ceil(3.3)
    assert viewed(0.01, 32) == 1
    assert viewed(1.0, 7) == 7


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1, True, "half"])
def test_bad_view_fraction(value):
    with pytest.raises(ValueError, match="view_fraction"):
        load_config(None, dict(view_fraction=value))


def test_view_fraction_needs_per_step_views():
    with pytest.raises(ValueError, match="view_fraction"):
        load_config(None, dict(view_fraction=0.5, label_source="epoch_pass"))


def test_trainer_puts_engine_tables_on_the_training_device(data_root, tmp_path):
    trainer = Trainer(load_config(None, dict(TINY, data_root=data_root, output_dir=str(tmp_path), device="cpu")))
    eng = trainer.method.engine
    assert eng.device == trainer.device
    for name in BalanceMixEngine._TABLES:
        assert getattr(eng, name).device == trainer.device, name


# ---------------------------------------------------------------------------- engine device
def test_engine_tables_are_used_in_place_on_their_device():
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=0, device="cpu")
    cpu = torch.device("cpu")
    for name in ("given_labels", "state", "clean_prob"):
        assert eng._on(name, cpu) is getattr(eng, name), name  # no copy at all
    assert eng.cpu_view() is eng
    assert eng.to("cpu") is eng


def test_state_dict_is_a_cpu_copy():
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=0)
    eng.record(torch.arange(len(labels)), torch.full(labels.shape, 0.7))
    sd = eng.state_dict()
    sd["probs"].zero_()
    sd["seen"].zero_()
    assert bool((eng.probs == 0.7).all()) and bool(eng.seen.all())
    assert all(sd[k].device.type == "cpu" for k in ("probs", "state", "given_labels", "epoch_seen"))


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        BalanceMixEngine(_labels(), device="not-a-device")


def test_mixed_targets_still_checks_cpu_inputs():
    labels = _labels()
    eng = BalanceMixEngine(labels)
    idx = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="lam"):
        eng.mixed_targets(idx, idx, 1.5)
    with pytest.raises(ValueError, match="lam"):
        eng.mixed_targets(idx, idx, torch.full((2,), 0.6))
    with pytest.raises(ValueError, match="index_r"):
        eng.mixed_targets(idx, idx[:2], 0.6)
    lam = torch.tensor([0.5, 0.75, 1.0])
    expect = lam[:, None] * labels[idx].float() + (1 - lam[:, None]) * labels[[2, 0, 1]].float()
    torch.testing.assert_close(eng.mixed_targets(idx, torch.tensor([2, 0, 1]), lam), expect)


def test_loss_after_warmup_matches_a_hand_weighted_bce():
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=0, eps=0.9)
    g = torch.Generator().manual_seed(5)
    # Agreeing predictions near the label; disagreeing ones (15%) with confidence U(0.55, 1):
    # the confident ones get re-labeled, the others stay ambiguous and are weighted by p_G.
    agree = 0.95 + 0.04 * torch.rand(labels.shape, generator=g)
    disagree = 0.55 + 0.45 * torch.rand(labels.shape, generator=g)
    flip = torch.rand(labels.shape, generator=g) < 0.15
    conf = torch.where(flip, 1 - disagree, agree)
    p = torch.where(labels.bool(), conf, 1 - conf)
    eng.record(torch.arange(len(labels)), p)
    eng.refresh(epoch=0)
    assert bool((eng.state == LabelState.AMBIGUOUS).any())
    assert bool((eng.state == LabelState.RELABELED).any())
    idx = torch.arange(40)
    logits = torch.randn(40, labels.shape[1], generator=g)
    y = eng.refined_labels[idx].double()
    x = logits.double()
    bce = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))
    w = torch.where(eng.state[idx] == LabelState.AMBIGUOUS, eng.clean_prob[idx].double(), torch.ones_like(bce))
    expect = (w * bce).sum(1).mean()
    got = eng.loss(logits, eng.targets(idx), idx)
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_tables_steps_do_not_synchronise_and_refresh_matches_cpu():
    dev = torch.device("cuda")
    labels = _labels(n=2000, k=5)
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(labels.shape, generator=g)
    cpu_eng = BalanceMixEngine(labels, warmup_epochs=0)
    gpu_eng = BalanceMixEngine(labels, warmup_epochs=0, device=dev)
    for eng in (cpu_eng, gpu_eng):
        eng.set_epoch(0)
        eng.record(torch.arange(len(labels)), probs.to(eng.device))
        eng.refresh(epoch=0)
    for name in BalanceMixEngine._TABLES:
        assert getattr(gpu_eng, name).device.type == "cuda", name
    torch.testing.assert_close(gpu_eng.clean_prob.cpu(), cpu_eng.clean_prob, rtol=0, atol=1e-5)
    assert (gpu_eng.state.cpu() == cpu_eng.state).float().mean() > 0.999
    sd = gpu_eng.state_dict()
    assert all(v.device.type == "cpu" for v in sd.values() if isinstance(v, torch.Tensor))

    idx_r = torch.arange(64).pin_memory()
    idx_m = torch.arange(64, 128).pin_memory()
    lam = torch.full((64,), 0.7).pin_memory()
    logits = torch.randn(64, 5, device=dev, requires_grad=True)
    view_probs = torch.rand(2, 64, 5, device=dev)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = gpu_eng.mixed_targets(idx_r, idx_m, lam, device=dev)
        loss = gpu_eng.loss(logits, y, idx_r)
        gpu_eng.record(idx_r, view_probs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    loss.backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert gpu_eng.applied
    refined = gpu_eng.refined_labels.cpu().float()
    torch.testing.assert_close(y.cpu(), 0.7 * refined[:64] + 0.3 * refined[64:128])
    torch.testing.assert_close(gpu_eng.probs[:64].cpu(), view_probs.mean(0).cpu())
    # Non-finite records on the device are reported by the next refresh.
    gpu_eng.record(idx_r, torch.full((64, 5), float("nan"), device=dev))
    with pytest.raises(ValueError, match="view_probs"):
        gpu_eng.refresh(epoch=1)
