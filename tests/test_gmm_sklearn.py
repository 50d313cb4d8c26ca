"""Tests that balancemix_timm.gmm's fit and initialisations match scikit-learn and NumPy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balancemix_timm.gmm import LabelGMM, clean_probability
from balancemix_timm.gmm import chunks as gmm_chunks
from balancemix_timm.gmm import init as gmm_init
from tests._gmm import (
    DTYPES,
    POS_RATES,
    SETTINGS,
    TOL,
    group_values,
    init_from_assignment,
    lloyd_reference,
    make_data,
    sklearn_clean,
)


# ----------------------------------------------------------------- agreement with sklearn
@DTYPES
@pytest.mark.parametrize("settings", [
    SETTINGS,
    dict(max_iter=50, tol=1e-6, reg_covar=5e-4),
    dict(max_iter=3, tol=1e-2, reg_covar=1e-3),
])
def test_matches_sklearn_from_same_initialisation(settings, dtype):
    p_tol, par_tol, lb_tol, _ = TOL[dtype]
    losses, labels = make_data(1200, POS_RATES, seed=0)
    p = clean_probability(losses, labels, dtype=dtype, **settings)
    model = LabelGMM(dtype=dtype, **settings).fit(losses, labels)
    assert p.dtype == torch.float32 and p.shape == losses.shape
    for k in range(len(POS_RATES)):
        for l in (0, 1):
            sel, x = group_values(losses, labels, k, l)
            init = init_from_assignment(x, lloyd_reference(x), settings["reg_covar"])
            ref, sk = sklearn_clean(x, init=init, **settings)
            np.testing.assert_allclose(p[torch.from_numpy(sel), k].double().numpy(), ref,
                                       atol=p_tol, rtol=0)
            if dtype == "float32" and settings["tol"] < 1e-4:
                # float32 sums resolve the mean log-likelihood to ~1e-6: at such a tol the
                # stopping round is not reproducible (hence dtype="auto" -> float64 there).
                continue
            assert int(model.n_iter_[l, k]) == sk.n_iter_
            assert bool(model.converged_[l, k]) == sk.converged_
            np.testing.assert_allclose(model.means_[l, k].numpy(), np.sort(sk.means_[:, 0]),
                                       atol=par_tol)
            np.testing.assert_allclose(model.lower_bound_[l, k].item(), sk.lower_bound_,
                                       rtol=lb_tol)


def _count_splits(monkeypatch) -> list:
    """Record every full-data split (the first Lloyd step or a fallback)."""
    calls = []
    split = gmm_chunks._Chunks.split
    monkeypatch.setattr(gmm_chunks._Chunks, "split",
                        lambda self, thr: calls.append(1) or split(self, thr))
    return calls


@DTYPES
def test_kmeans_init_is_plain_lloyd_on_multimodal_data(monkeypatch, dtype):
    """The histogram-accelerated two-means must stop where plain Lloyd stops (max_iter=0:
    the fitted parameters are the initial ones), whether the first step's direction comes
    from the histogram bounds (no full-data split: the usual case) or from a split."""
    tol = TOL[dtype][3]
    splits = _count_splits(monkeypatch)
    seen = set()
    for seed in range(6):
        del splits[:]
        losses, labels = make_data(3000, POS_RATES, seed=seed, modes=9)
        model = LabelGMM(max_iter=0, dtype=dtype).fit(losses, labels)
        seen.add(len(splits) > 0)
        assert not model.converged_.any() and (model.n_iter_ == 0).all()
        for k in range(len(POS_RATES)):
            for l in (0, 1):
                _, x = group_values(losses, labels, k, l)
                w, mu, var = init_from_assignment(x, lloyd_reference(x), 5e-4)
                order = np.argsort(mu)
                np.testing.assert_allclose(model.means_[l, k].numpy(), mu[order], atol=tol)
                np.testing.assert_allclose(model.variances_[l, k].numpy(), var[order], atol=tol)
                np.testing.assert_allclose(model.weights_[l, k].numpy(), w[order], atol=tol)
    assert False in seen  # at least one data set needed no split for the first step


def test_kmeans_bound_sequences_plain_steps_or_search_agree(monkeypatch):
    """The bound sequences' limits (hence the window and the whole fit) are the same whether
    they are followed step by step, searched for bin by bin, in wide strides (the GPU's
    setting) or mixed."""
    losses, labels = make_data(2500, POS_RATES, seed=5, modes=8)
    windows = []
    window = gmm_chunks._Chunks.window
    monkeypatch.setattr(gmm_chunks._Chunks, "window",
                        lambda self, lo, hi: windows.append((lo, hi)) or window(self, lo, hi))
    results = []
    for setting in [(5000, 64), (0, 1), (0, 512), (3, 7), (24, 64)]:
        monkeypatch.setattr(gmm_init, "_BOUND_SEARCH", {"cpu": setting, "other": setting})
        results.append(clean_probability(losses, labels))
    for (lo, hi), p in zip(windows[1:], results[1:]):
        assert torch.equal(lo, windows[0][0]) and torch.equal(hi, windows[0][1])
        assert torch.equal(p, results[0])


@DTYPES
def test_kmeans_init_exact_with_coarse_histogram(monkeypatch, dtype):
    """With 2 bins the bounds are loose (the first step's direction needs a split) and the
    exact window holds most losses: same result."""
    monkeypatch.setattr(gmm_init, "_INIT_BINS", 2)
    splits = _count_splits(monkeypatch)
    losses, labels = make_data(1500, POS_RATES, seed=3, modes=7)
    model = LabelGMM(max_iter=0, dtype=dtype).fit(losses, labels)
    assert splits  # the direction of the first step was not clear from the bounds
    for k in range(len(POS_RATES)):
        for l in (0, 1):
            _, x = group_values(losses, labels, k, l)
            _, mu, _ = init_from_assignment(x, lloyd_reference(x), 5e-4)
            np.testing.assert_allclose(model.means_[l, k].numpy(), np.sort(mu),
                                       atol=TOL[dtype][3])


@DTYPES
def test_quantile_init_matches_sklearn(dtype):
    losses, labels = make_data(900, POS_RATES, seed=1)
    p = clean_probability(losses, labels, init="quantile", dtype=dtype)
    for k in range(len(POS_RATES)):
        for l in (0, 1):
            sel, x = group_values(losses, labels, k, l)
            median = np.sort(x)[(x.size - 1) // 2]  # lower median
            init = init_from_assignment(x, x > median, 5e-4)
            ref, _ = sklearn_clean(x, init=init, **SETTINGS)
            np.testing.assert_allclose(p[torch.from_numpy(sel), k].numpy(), ref,
                                       atol=TOL[dtype][0])


@DTYPES
def test_normalize_none_matches_sklearn_on_raw_losses(dtype):
    p_tol, par_tol = TOL[dtype][:2]
    losses, labels = make_data(800, POS_RATES, seed=2)
    losses = losses * 3.0 + 5.0  # far from 0: the fit must not depend on the offset
    model = LabelGMM(normalize="none", dtype=dtype)
    p = model.fit_predict_clean_probability(losses, labels)
    for k in range(len(POS_RATES)):
        for l in (0, 1):
            sel, x = group_values(losses, labels, k, l, minmax=False)
            init = init_from_assignment(x, lloyd_reference(x), 5e-4)
            ref, sk = sklearn_clean(x, init=init, **SETTINGS)
            np.testing.assert_allclose(p[torch.from_numpy(sel), k].numpy(), ref, atol=p_tol)
            np.testing.assert_allclose(model.means_[l, k].numpy(), np.sort(sk.means_[:, 0]),
                                       rtol=1e-9 if dtype == "float64" else 1e-5)
    assert (model.shift_ == 0).all() and (model.scale_ == 1).all()


def test_agrees_with_sklearn_default_kmeans_on_separated_data():
    losses, labels = make_data(3000, POS_RATES, seed=4, noise=0.25)
    p = clean_probability(losses, labels)
    agree = total = 0
    for k in range(len(POS_RATES)):
        for l in (0, 1):
            sel, x = group_values(losses, labels, k, l)
            ref, _ = sklearn_clean(x, **SETTINGS)  # scikit-learn's own random k-means init
            ours = p[torch.from_numpy(sel), k].numpy()
            agree += int(((ours > 0.5) == (ref > 0.5)).sum())
            total += x.size
    assert agree / total >= 0.995


@DTYPES
def test_kmeans_init_exact_when_a_threshold_leaves_the_window(monkeypatch, dtype):
    """A window narrower than the path (negative margin) sends the rest to the full data."""
    monkeypatch.setattr(gmm_init, "_WINDOW_MARGIN",
                        {torch.float64: -0.05, torch.float32: -0.05})
    calls = _count_splits(monkeypatch)
    losses, labels = make_data(1500, POS_RATES, seed=14, modes=6)
    model = LabelGMM(max_iter=0, dtype=dtype).fit(losses, labels)
    assert calls  # the iterations that left the window ran on the full data
    for k in range(len(POS_RATES)):
        for l in (0, 1):
            _, x = group_values(losses, labels, k, l)
            _, mu, _ = init_from_assignment(x, lloyd_reference(x), 5e-4)
            np.testing.assert_allclose(model.means_[l, k].numpy(), np.sort(mu),
                                       atol=TOL[dtype][3])
