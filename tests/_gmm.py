"""Synthetic losses, labels and scikit-learn references shared by the test_gmm* modules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

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
