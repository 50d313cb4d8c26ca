"""Tests for balancemix_timm.gmm (Eq. 6-8 of BalanceMix) against scikit-learn, NumPy loops and
the package's plain per-group reference."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from balancemix_timm.gmm import LabelGMM, clean_probability
from balancemix_timm.gmm import chunks as gmm_chunks
from balancemix_timm.gmm import init as gmm_init
from balancemix_timm.gmm.reference import reference_fit

EPS10 = 10 * np.finfo(np.float64).eps
SETTINGS = dict(max_iter=10, tol=1e-2, reg_covar=5e-4)


# ----------------------------------------------------------------- data and references
def make_data(n: int, pos_rates: list[float], *, seed: int, noise: float = 0.3,
              modes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels with the given positive rate per class; losses from ``modes`` Gaussian bumps."""
    rng = np.random.default_rng(seed)
    k = len(pos_rates)
    labels = (rng.random((n, k)) < np.asarray(pos_rates)).astype(np.float32)
    if modes == 2:
        noisy = rng.random((n, k)) < noise
        losses = np.where(noisy, rng.normal(1.6, 0.45, (n, k)), np.abs(rng.normal(0.08, 0.06, (n, k))))
    else:
        centres = rng.uniform(0.0, 4.0, modes)
        widths = rng.uniform(0.005, 0.3, modes)
        comp = rng.integers(0, modes, (n, k))
        losses = np.abs(centres[comp] + widths[comp] * rng.standard_normal((n, k)))
    return torch.from_numpy(losses.astype(np.float32)), torch.from_numpy(labels)


def group_values(losses: torch.Tensor, labels: torch.Tensor, k: int, l: int, *,
                 minmax: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The selection mask and (min-max normalised) float64 losses of group (k, l)."""
    sel = (labels[:, k] == l).numpy()
    x = losses[:, k].double().numpy()[sel]
    if minmax:
        x = (x - x.min()) / (x.max() - x.min())
    return sel, x


def lloyd_reference(x: np.ndarray) -> np.ndarray:
    """Plain 1-D two-means from (min, max) until the assignment stops changing: high mask."""
    lo, hi = x.min(), x.max()
    prev = None
    while True:
        high = x > 0.5 * (lo + hi)
        if prev is not None and np.array_equal(high, prev):
            return high
        lo, hi, prev = x[~high].mean(), x[high].mean(), high


def init_from_assignment(x: np.ndarray, high: np.ndarray, reg_covar: float):
    """scikit-learn's _initialize from a hard assignment (weights nk / n), by hand."""
    resp = np.stack([~high, high], axis=1).astype(np.float64)
    nk = resp.sum(0) + EPS10
    means = (resp * x[:, None]).sum(0) / nk
    var = (resp * (x[:, None] - means) ** 2).sum(0) / nk + reg_covar
    return nk / x.size, means, var


def sklearn_clean(x: np.ndarray, *, init: tuple | None = None, **settings) -> tuple[np.ndarray, GaussianMixture]:
    """Clean posterior from scikit-learn, with our initial parameters or its default k-means."""
    kwargs = dict(n_components=2, covariance_type="full", random_state=0, **settings)
    if init is not None:
        w, mu, var = init
        kwargs.update(weights_init=w, means_init=mu[:, None],
                      precisions_init=(1.0 / var)[:, None, None])
    model = GaussianMixture(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x[:, None])
    return model.predict_proba(x[:, None])[:, int(np.argmin(model.means_[:, 0]))], model


POS_RATES = [0.08, 0.3, 0.62, 0.9]  # classes 2 and 3: positives are the majority polarity
# Per working dtype: (probabilities atol, fitted-parameter atol, lower bound rtol, init atol).
# float64 follows scikit-learn to rounding; float32 keeps every label's value in float32 and
# sums chunks of at most 4096 of them in float32 before adding the chunks in float64.
TOL = {"float64": (1e-6, 1e-9, 1e-9, 1e-12), "float32": (2e-4, 2e-5, 1e-5, 2e-6)}
DTYPES = pytest.mark.parametrize("dtype", ["float64", "float32"])


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


# ----------------------------------------------------------------- against the plain reference
def mixed_groups(n: int, k: int, *, seed: int, modes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and losses whose groups cover the layout's cases: both polarities as the dense
    group, a constant group, groups just below and at ``min_group_size`` (8), an empty group."""
    rates = np.random.default_rng(seed).uniform(0.05, 0.95, k)
    losses, labels = make_data(n, list(rates), seed=seed, modes=modes)
    if k >= 4 and n >= 40:
        labels[:, 0] = 0.0
        labels[: n // 3, 0] = 1.0
        losses[n // 3:, 0] = 0.7  # class 0: constant negatives
        labels[:, 1] = 0.0
        labels[:7, 1] = 1.0  # class 1: 7 positives (fallback)
        labels[:, 2] = 1.0
        labels[:8, 2] = 0.0  # class 2: 8 negatives (fitted), positives the dense group
        labels[:, 3] = 1.0  # class 3: no negative label
    return losses, labels


REFERENCE_CASES = {  # n, k, modes, seed
    "mixed": (600, 5, 2, 30),
    "multimodal": (2500, 6, 7, 31),
    "small": (40, 4, 2, 32),
    "several-chunks": (9000, 2, 9, 33),
}


@DTYPES
@pytest.mark.parametrize("normalize", ["minmax", "none"])
@pytest.mark.parametrize("init", ["kmeans", "quantile"])
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_the_plain_reference(case, init, normalize, dtype):
    """The batched fit against the plain float64 loop over the groups: same fallback groups,
    EM rounds and convergence; float64 agrees to rounding, float32 to its per-label rounding
    (its lower bound to about 1e-7 of the log-odds, which grow large for narrow components)."""
    n, k, modes, seed = REFERENCE_CASES[case]
    losses, labels = mixed_groups(n, k, seed=seed, modes=modes)
    if case == "multimodal":  # other input dtypes (cast by the fit)
        losses, labels = losses.double(), labels.bool()
    options = {"init": init, "normalize": normalize, "fallback": 0.25, "max_iter": 20, "tol": 1e-3}
    model = LabelGMM(dtype=dtype, **options)
    p = model.fit_predict_clean_probability(losses, labels)
    ref = reference_fit(losses, labels, **options)

    assert torch.equal(model.fallback_, ref.fallback)
    assert torch.equal(model.n_samples_, ref.n_samples)
    on_fallback = ref.fallback[labels.long(), torch.arange(k)]  # (N, K) per label
    assert (p[on_fallback] == 0.25).all()
    p_tol, par_tol, lb_tol = {"float64": (1e-7, 1e-9, 1e-9), "float32": (2e-4, 5e-5, 2e-3)}[dtype]
    torch.testing.assert_close(p.double(), ref.clean_prob, atol=p_tol, rtol=0)
    fitted = ~ref.fallback
    assert torch.equal(model.n_iter_, ref.n_iter)
    assert torch.equal(model.converged_, ref.converged)
    for name in ("means", "variances", "weights"):
        torch.testing.assert_close(getattr(model, name + "_")[fitted], getattr(ref, name)[fitted],
                                   atol=par_tol, rtol=0)
    torch.testing.assert_close(model.lower_bound_, ref.lower_bound, atol=lb_tol, rtol=0)
    exact = dtype == "float64" or losses.dtype == torch.float32  # shift from the given values
    torch.testing.assert_close(model.shift_, ref.shift, atol=0, rtol=0 if exact else 1e-7)
    torch.testing.assert_close(model.scale_, ref.scale, atol=0, rtol=0 if exact else 1e-6)


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
