"""The BalanceMix engine: targets, loss weights, refresh and checkpoint state."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from balancemix_timm.engine import ABLATIONS, BalanceMixEngine
from balancemix_timm.refine import LabelState
from balancemix_timm.sampling import MinoritySampler, ShardedRandomSampler


def _labels(n: int = 400, k: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.5, 0.3, 0.1, 0.05])[:k]
    return (torch.rand(n, k, generator=g) < rates).to(torch.uint8)


def _bimodal_probs(labels: torch.Tensor, noisy_mask: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Predictions that agree with the label except on ``noisy_mask`` (where they disagree)."""
    g = torch.Generator().manual_seed(seed)
    agree = 0.96 + 0.035 * torch.rand(labels.shape, generator=g)
    p = torch.where(labels.bool(), agree, 1 - agree)
    return torch.where(noisy_mask, 1 - p, p)


def test_warmup_loss_is_plain_bce_with_mixed_targets():
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=2)
    eng.set_epoch(0)
    idx_r = torch.tensor([0, 5, 9])
    idx_m = torch.tensor([3, 3, 7])
    y = eng.mixed_targets(idx_r, idx_m, 0.7)
    expect = 0.7 * labels[idx_r].float() + 0.3 * labels[idx_m].float()
    torch.testing.assert_close(y, expect)
    logits = torch.randn(3, labels.shape[1])
    loss = eng.loss(logits, y, idx_r)
    ref = F.binary_cross_entropy_with_logits(logits, expect, reduction="none").sum(1).mean()
    torch.testing.assert_close(loss, ref)


def test_refresh_finds_flipped_labels_and_weights_them():
    torch.manual_seed(0)
    labels = _labels(n=600)
    g = torch.Generator().manual_seed(3)
    noisy_mask = torch.rand(labels.shape, generator=g) < 0.1
    eng = BalanceMixEngine(labels, warmup_epochs=1, eps=0.95)
    eng.set_epoch(0)
    probs = _bimodal_probs(labels, noisy_mask)
    eng.record(torch.arange(len(labels)), torch.stack([probs, probs]))
    report = eng.refresh()
    assert report.applied and report.unseen == 0
    clean = eng.state == LabelState.CLEAN
    # Labels the predictions agree with are clean; most disagreeing ones are not.
    assert clean[~noisy_mask].float().mean() > 0.97
    assert clean[noisy_mask].float().mean() < 0.1
    # Disagreeing predictions are confident (>= 0.96 > eps), so they are re-labeled to the prediction.
    relabeled = eng.state == LabelState.RELABELED
    assert relabeled[noisy_mask].float().mean() > 0.9
    assert torch.equal(eng.refined_labels[relabeled], (probs[relabeled] > 0.5).to(torch.uint8))
    # After the warm-up refresh, targets use refined labels.
    eng.set_epoch(1)
    idx = torch.nonzero(relabeled.any(1)).flatten()[:4]
    torch.testing.assert_close(eng.targets(idx), eng.refined_labels[idx].float())
    # Sampler got Eq. 4's probabilities.
    assert isinstance(eng.second_sampler, MinoritySampler)
    assert math.isclose(float(eng.second_sampler.weights.sum()), 1.0, rel_tol=1e-6)


def test_refresh_during_warmup_is_not_applied_but_updates_sampler():
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=3)
    eng.set_epoch(0)
    probs = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
    eng.record(torch.arange(len(labels)), probs)
    before = eng.second_sampler.weights.clone()
    report = eng.refresh()
    assert not report.applied
    assert not torch.allclose(before, eng.second_sampler.weights)
    idx = torch.arange(10)
    torch.testing.assert_close(eng.targets(idx), labels[idx].float())


def test_ablation_rows_configure_components():
    labels = _labels()
    probs = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
    for name, kwargs in ABLATIONS.items():
        eng = BalanceMixEngine(labels, warmup_epochs=0, **kwargs)
        eng.set_epoch(0)
        eng.record(torch.arange(len(labels)), probs)
        eng.refresh()
        if name == "mixup":
            assert isinstance(eng.second_sampler, ShardedRandomSampler)
        if kwargs["label_management"] == "none":
            assert bool((eng.state == LabelState.CLEAN).all())
        if kwargs["label_management"] == "clean":
            assert not bool((eng.state == LabelState.RELABELED).any())
        logits = torch.randn(8, labels.shape[1])
        idx = torch.arange(8)
        loss = eng.loss(logits, eng.targets(idx), idx)
        assert torch.isfinite(loss)


def test_state_dict_round_trip_and_config_guard():
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=0, seed=4)
    eng.set_epoch(2)
    probs = torch.rand(labels.shape, generator=torch.Generator().manual_seed(2))
    eng.record(torch.arange(len(labels)), probs)
    eng.refresh()
    sd = eng.state_dict()
    other = BalanceMixEngine(labels, warmup_epochs=0, seed=4)
    other.load_state_dict(sd)
    for name in ("refined_labels", "state", "clean_prob", "probs", "losses", "seen"):
        assert torch.equal(getattr(eng, name), getattr(other, name)), name
    eng.set_epoch(3)
    other.set_epoch(3)
    assert list(eng.paired_sampler) == list(other.paired_sampler)
    with pytest.raises(ValueError, match="another configuration"):
        BalanceMixEngine(labels, warmup_epochs=5, seed=4).load_state_dict(sd)
    flipped = labels.clone()
    flipped[0, 0] ^= 1
    with pytest.raises(ValueError, match="different given labels"):
        BalanceMixEngine(flipped, warmup_epochs=0, seed=4).load_state_dict(sd)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0.5), "eps"),
        (dict(alpha=-1.0), "alpha"),
        (dict(label_management="most"), "label_management"),
        (dict(warmup_epochs=-1), "warmup_epochs"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BalanceMixEngine(_labels(), **kwargs)


def test_bad_labels_and_records():
    with pytest.raises(ValueError, match="labels"):
        BalanceMixEngine(torch.full((4, 3), 2))
    with pytest.raises(ValueError, match="labels"):
        BalanceMixEngine(torch.zeros(0, 3))
    eng = BalanceMixEngine(_labels())
    with pytest.raises(ValueError, match="view_probs"):
        eng.record(torch.arange(3), torch.rand(3, 7))
    with pytest.raises(ValueError, match="view_probs"):
        eng.record(torch.arange(2), torch.tensor([[float("nan"), 0.1, 0.2, 0.3]] * 2))


def test_unseen_samples_stay_clean(caplog):
    labels = _labels()
    eng = BalanceMixEngine(labels, warmup_epochs=0)
    eng.set_epoch(0)
    seen = torch.arange(0, len(labels), 2)
    eng.record(seen, torch.rand(len(seen), labels.shape[1], generator=torch.Generator().manual_seed(0)))
    with caplog.at_level("WARNING"):
        report = eng.refresh()
    assert report.unseen == len(labels) - len(seen)
    assert "no recorded prediction" in caplog.text
    odd = torch.arange(1, len(labels), 2)
    assert bool((eng.state[odd] == LabelState.CLEAN).all())
    assert torch.equal(eng.refined_labels[odd], labels[odd])
