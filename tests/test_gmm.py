"""Tests of balancemix_timm.gmm's behaviour: groups, fallbacks, inputs, state, dtypes and devices."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from balancemix_timm.gmm import LabelGMM, clean_probability
from balancemix_timm.gmm import chunks as gmm_chunks
from tests._gmm import (
    DTYPES,
    POS_RATES,
    make_data,
)


# ----------------------------------------------------------------- behaviour
def test_clean_component_is_the_small_mean_one():
    rng = np.random.default_rng(5)
    n = 1000
    # 70% of the labels are noisy (large loss): the clean component is the minority one.
    noisy = rng.random(n) < 0.7
    x = np.where(noisy, rng.normal(2.0, 0.3, n), np.abs(rng.normal(0.1, 0.05, n)))
    losses = torch.from_numpy(np.stack([x, x[::-1].copy()], 1)).float()
    labels = torch.zeros(n, 2)
    labels[: n // 2, 1] = 1
    model = LabelGMM()
    p = model.fit_predict_clean_probability(losses, labels)
    fitted = ~model.fallback_
    assert (model.means_[..., 0] < model.means_[..., 1])[fitted].all()
    col0 = p[:, 0].numpy()
    assert (col0[~noisy] > 0.5).mean() > 0.99 and (col0[noisy] < 0.5).mean() > 0.99
    # the weight of the clean component is the small one here
    assert model.weights_[0, 0, 0] < 0.5


def test_fallback_for_tiny_and_constant_groups(caplog):
    losses, labels = make_data(400, [0.4, 0.4, 0.4], seed=6)
    labels[:, 1] = 0
    labels[:3, 1] = 1  # class 1: 3 positives (< min_group_size = 8)
    labels[:, 2] = 0
    labels[:200, 2] = 1
    losses[200:, 2] = 0.7  # class 2: constant negative losses
    with caplog.at_level(logging.WARNING, logger="balancemix_timm.gmm"):
        model = LabelGMM(fallback=0.25)
        p = model.fit_predict_clean_probability(losses, labels)
    assert torch.isfinite(p).all()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "2 of 6" in messages[0]
    assert "(k=1, positive)" in messages[0] and "(k=2, negative)" in messages[0]
    assert (p[:3, 1] == 0.25).all() and (p[200:, 2] == 0.25).all()
    expected = torch.zeros(2, 3, dtype=torch.bool)
    expected[1, 1] = expected[0, 2] = True
    assert torch.equal(model.fallback_, expected)
    # the other groups are fitted normally
    assert ((p[:, 0] > 0.5) | (p[:, 0] < 0.5)).all()
    for name in ("means_", "variances_", "weights_", "lower_bound_"):
        assert not torch.isnan(getattr(model, name)).any()
    # default fallback: treat as clean
    assert (clean_probability(losses, labels)[:3, 1] == 1.0).all()


def test_empty_groups_and_empty_input(caplog):
    losses, labels = make_data(200, [0.5, 0.5], seed=7)
    labels[:, 0] = 1  # class 0 has no negative label: an empty group, no warning
    with caplog.at_level(logging.WARNING, logger="balancemix_timm.gmm"):
        model = LabelGMM()
        p = model.fit_predict_clean_probability(losses, labels)
    assert not caplog.records
    assert torch.isfinite(p).all() and model.n_samples_[0, 0] == 0 and model.fallback_[0, 0]
    empty = clean_probability(torch.zeros(0, 3), torch.zeros(0, 3))
    assert empty.shape == (0, 3)


@DTYPES
def test_groups_are_independent(dtype):
    losses, labels = make_data(1000, POS_RATES, seed=8)
    p = clean_probability(losses, labels, dtype=dtype)
    for k, l in ((1, 1), (3, 1), (0, 0)):  # a ragged group, a dense positive one, a dense negative one
        sel = torch.nonzero(labels[:, k] == l).view(-1)
        perm = sel[torch.randperm(sel.numel(), generator=torch.Generator().manual_seed(k))]
        shuffled = losses.clone()
        shuffled[sel, k] = losses[perm, k]
        q = clean_probability(shuffled, labels, dtype=dtype)
        other = torch.ones_like(labels, dtype=torch.bool)
        other[sel, k] = False
        assert torch.equal(p[other], q[other])  # every other group: bit for bit
        # the shuffled group's probabilities follow its losses (up to the order of the sums:
        # float32 sums of 4096 terms are good to a few 1e-6)
        atol = {"float64": 1e-12, "float32": 5e-6}[dtype]
        torch.testing.assert_close(q[sel, k], p[perm, k], atol=atol, rtol=0)


def test_input_dtypes_and_label_types():
    losses, labels = make_data(500, POS_RATES, seed=9)
    p = clean_probability(losses, labels)
    torch.testing.assert_close(clean_probability(losses.double(), labels.bool()), p,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(clean_probability(losses.half().float(), labels.long()),
                               clean_probability(losses.half().float(), labels), atol=0, rtol=0)
    assert ((p >= 0) & (p <= 1)).all()


def test_inputs_are_not_modified():
    """A single class whose positives are the majority, as bool labels: the fit must not flip
    the caller's labels (their transpose is a view of them)."""
    losses, _ = make_data(300, [0.5], seed=16)
    labels = torch.rand(300, 1, generator=torch.Generator().manual_seed(3)) < 0.8
    before_labels, before_losses = labels.clone(), losses.clone()
    clean_probability(losses, labels)
    assert torch.equal(labels, before_labels) and torch.equal(losses, before_losses)


def test_predict_matches_fit_and_state_dict_round_trip():
    losses, labels = make_data(700, POS_RATES, seed=10)
    model = LabelGMM(max_iter=20, min_group_size=10)
    p = model.fit_predict_clean_probability(losses, labels)
    torch.testing.assert_close(model.predict_clean_probability(losses, labels), p, atol=1e-6, rtol=0)
    state = model.state_dict()
    other = LabelGMM()
    other.load_state_dict(state)
    assert other.max_iter == 20 and other.min_group_size == 10
    for name in LabelGMM._FITTED:
        assert torch.equal(getattr(other, name), getattr(model, name))
    torch.testing.assert_close(other.predict_clean_probability(losses, labels), p, atol=1e-6, rtol=0)
    # new losses are normalised with the fitted shift / scale, not refitted
    new = losses * 1.5
    z = ((new[:, 0] - model.shift_[0, 0]) / model.scale_[0, 0]).double()
    w, mu, var = model.weights_[0, 0], model.means_[0, 0], model.variances_[0, 0]
    dens = w * torch.exp(-0.5 * (z[:, None] - mu) ** 2 / var) / torch.sqrt(2 * torch.pi * var)
    expected = (dens[:, 0] / dens.sum(1)).float()
    neg = labels[:, 0] == 0
    torch.testing.assert_close(other.predict_clean_probability(new, labels)[neg, 0], expected[neg],
                               atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError):
        LabelGMM().predict_clean_probability(losses, labels)
    with pytest.raises(ValueError, match="missing"):
        LabelGMM().load_state_dict({"means_": state["means_"]})


def test_fitted_attribute_shapes():
    losses, labels = make_data(300, [0.2, 0.5, 0.7], seed=11)
    model = LabelGMM().fit(losses, labels)
    for name in ("means_", "variances_", "weights_"):
        value = getattr(model, name)
        assert value.shape == (2, 3, 2) and value.dtype == torch.float64
    for name in ("shift_", "scale_", "lower_bound_"):
        assert getattr(model, name).shape == (2, 3)
    assert model.n_iter_.shape == (2, 3) and model.n_iter_.dtype == torch.int64
    assert model.n_samples_.shape == (2, 3) and model.n_samples_.dtype == torch.int64
    assert model.converged_.dtype == torch.bool and model.fallback_.dtype == torch.bool
    assert torch.equal(model.n_samples_[1], labels.sum(0).long())
    assert torch.equal(model.n_samples_[0], (1 - labels).sum(0).long())
    torch.testing.assert_close(model.weights_.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    assert (model.variances_ >= 5e-4).all()


def test_bad_input():
    losses, labels = make_data(50, [0.5, 0.5], seed=12)
    with pytest.raises(ValueError, match="losses"):
        clean_probability(losses.numpy(), labels)
    with pytest.raises(ValueError, match="losses"):
        clean_probability(losses[:, 0], labels[:, 0])
    with pytest.raises(ValueError, match="losses and labels"):
        clean_probability(losses, labels[:-1])
    with pytest.raises(ValueError, match="losses"):
        clean_probability(losses.long(), labels)
    bad = losses.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="losses"):
        clean_probability(bad, labels)
    with pytest.raises(ValueError, match="labels"):
        clean_probability(losses, labels * 2)
    for option, value in [("normalize", "zscore"), ("init", "random"), ("max_iter", -1),
                          ("dtype", "half"),
                          ("max_iter", 2.5), ("tol", -1.0), ("reg_covar", float("nan")),
                          ("min_group_size", 1), ("fallback", 1.5), ("init_max_iter", 0)]:
        with pytest.raises(ValueError, match=option):
            clean_probability(losses, labels, **{option: value})
    model = LabelGMM().fit(losses, labels)
    with pytest.raises(ValueError, match="columns"):
        model.predict_clean_probability(torch.cat([losses, losses], 1), torch.cat([labels, labels], 1))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    losses, labels = make_data(2000, POS_RATES, seed=13)
    p = clean_probability(losses, labels)
    q = clean_probability(losses.cuda(), labels.cuda())
    assert q.device.type == "cuda"
    torch.testing.assert_close(q.cpu(), p, atol=1e-5, rtol=0)
    r = clean_probability(losses, labels, device="cuda")
    assert r.device.type == "cpu"
    torch.testing.assert_close(r, p, atol=1e-5, rtol=0)


def test_auto_dtype_follows_the_tolerance():
    losses, labels = make_data(1200, POS_RATES, seed=0)
    assert LabelGMM().working_dtype == torch.float32
    assert LabelGMM(tol=1e-6).working_dtype == torch.float64
    assert LabelGMM(tol=1e-6, dtype="float32").working_dtype == torch.float32
    settings = dict(max_iter=50, tol=1e-6, reg_covar=5e-4)
    auto = LabelGMM(**settings).fit(losses, labels)
    exact = LabelGMM(dtype="float64", **settings).fit(losses, labels)
    assert torch.equal(auto.n_iter_, exact.n_iter_) and torch.equal(auto.means_, exact.means_)
    with pytest.raises(ValueError, match="dtype"):
        LabelGMM(dtype="float16")


def test_float32_and_float64_agree_on_coco_like_data():
    """The fast default against the exact path on long-tailed, noisy labels at scale."""
    rng = np.random.default_rng(21)
    n, k = 6000, 30
    freq = np.exp(rng.uniform(np.log(0.005), np.log(0.3), size=k))
    labels = torch.from_numpy((rng.random((n, k)) < freq).astype(np.float32))
    wrong = rng.random((n, k)) < 0.1
    q = np.where(wrong, rng.beta(1.2, 3.0, (n, k)), rng.beta(6.0, 1.0, (n, k)))
    losses = torch.from_numpy(-np.log(np.clip(q, 1e-7, 1.0))).float()
    p32 = clean_probability(losses, labels, dtype="float32")
    p64 = clean_probability(losses, labels, dtype="float64")
    assert ((p32 > 0.5) == (p64 > 0.5)).float().mean() > 0.9999
    assert (p32 - p64).abs().max() < 1e-3


def test_losses_requiring_grad_are_detached():
    losses, labels = make_data(300, POS_RATES, seed=15)
    leaf = losses.clone().requires_grad_(True)
    p = clean_probability(leaf, labels)
    assert not p.requires_grad
    assert torch.equal(p, clean_probability(losses, labels))
    assert not LabelGMM().fit(leaf, labels).predict_clean_probability(leaf, labels).requires_grad


@DTYPES
def test_result_does_not_depend_on_the_slab_size(monkeypatch, dtype):
    """The work space's slab size (one chunk per slab here, all chunks at once on a GPU) only
    changes how the passes are cut, not the per-chunk sums."""
    losses, labels = make_data(3000, POS_RATES, seed=17)
    model = LabelGMM(dtype=dtype)
    p = model.fit_predict_clean_probability(losses, labels)
    for entries in (1, 1 << 62):
        monkeypatch.setattr(gmm_chunks, "_SLAB_ENTRIES", {"cpu": entries, "other": entries})
        other = LabelGMM(dtype=dtype)
        torch.testing.assert_close(other.fit_predict_clean_probability(losses, labels), p, rtol=0,
                                   atol=1e-6)
        assert torch.equal(other.n_iter_, model.n_iter_)


def test_float32_small_ragged_groups_match_float64():
    """Rare classes with 8 to 40 positives among 40000 samples: each positive group is one
    chunk of 4096 entries, nearly all filler. float32 EM masks that filler out of its sums, so
    these groups agree with float64 as closely as groups that fill their chunks: the same EM
    rounds, clean probabilities within 1e-4 and lower bounds within about 1e-7 of the largest
    log-odds (up to about 1e3 for a component narrowed to ``reg_covar``)."""
    rng = np.random.default_rng(0)
    n, k = 40000, 40
    labels = torch.zeros(n, k)
    for c, count in enumerate(rng.integers(8, 40, k)):
        labels[rng.choice(n, count, replace=False), c] = 1.0
    wrong = rng.random((n, k)) < 0.3
    q = np.where(wrong, rng.beta(1.2, 3.0, (n, k)), rng.beta(6.0, 1.0, (n, k)))
    losses = torch.from_numpy(-np.log(np.clip(q, 1e-7, 1.0))).float()
    m32, m64 = LabelGMM(dtype="float32"), LabelGMM(dtype="float64")
    p32 = m32.fit_predict_clean_probability(losses, labels)
    p64 = m64.fit_predict_clean_probability(losses, labels)
    assert (p32 - p64).abs().max() < 1e-4
    assert torch.equal(m32.n_iter_, m64.n_iter_)
    torch.testing.assert_close(m32.lower_bound_, m64.lower_bound_, atol=2e-4, rtol=0)
