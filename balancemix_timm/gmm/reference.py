"""The algorithm of :mod:`balancemix_timm.gmm`, written as a plain loop over the groups.

This is the tests' oracle for :class:`~.estimator.LabelGMM`: one group at a time, in
float64, with no layout, chunking, histogram or batching, the same rules:

* group ``(l, k)`` holds the losses of the labels with ``labels[:, k] == l`` (Eq. 6);
* a group with fewer than ``min_group_size`` labels, or whose losses span at most
  ``_RANGE_RTOL * max(1, max |loss|)`` ("constant"), is not fitted: its labels get
  ``fallback`` (an empty group too);
* ``normalize="minmax"`` fits ``z = (x - min) / (max - min)``, ``"none"`` fits ``x``;
* initial hard assignment: ``init="kmeans"``: Lloyd's two-means from the group's minimum and
  maximum, threshold ``(min + max) / 2`` then the midpoint of the two clusters' means, until
  the assignment stops changing, at most ``init_max_iter`` steps; ``init="quantile"``: the
  high cluster is ``{z > lower median}``;
* initial parameters: scikit-learn's M-step from the hard responsibilities
  (``nk = sum resp + 10 eps``, weights ``nk / n``, variances ``+ reg_covar``);
* up to ``max_iter`` EM rounds: E-step (its mean log-likelihood is the lower bound), M-step
  (weights ``nk / sum nk``); stop as soon as the lower bound changes by less than ``tol``;
* components ordered by mean; Eq. 8: the clean probability of a label is the posterior of the
  smaller-mean component under the final parameters.

The estimator takes the two-means' exact steps from a window found by a histogram, so
``init_max_iter`` caps the steps after that window (see :mod:`.init`); here it caps the steps
from the start. Both run Lloyd to its end unless the cap is reached (the default 300 is never
reached on real losses), so the two only differ when the cap stops Lloyd early.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .em import _EPS10
from .estimator import _check_inputs, _check_options
from .layout import _RANGE_RTOL

__all__ = ["ReferenceFit", "reference_fit"]


@dataclass
class ReferenceFit:
    """The result of :func:`reference_fit`, indexed like :class:`~.estimator.LabelGMM`'s
    fitted attributes: ``[l, k]`` = polarity ``l`` of class ``k``, last index the component,
    clean (smaller mean) first. Parameters are in the fitted units (normalised for
    ``"minmax"``, raw for ``"none"``); NaN for groups that are not fitted.

    Attributes:
        clean_prob: ``(N, K)`` float64 clean probability of every label.
        means, variances, weights: ``(2, K, 2)`` float64.
        shift, scale: ``(2, K)`` float64 normalisation (``z = (loss - shift) / scale``).
        n_samples: ``(2, K)`` int64 group sizes.
        lower_bound: ``(2, K)`` float64 (``-inf`` if not fitted).
        n_iter: ``(2, K)`` int64 EM rounds run.
        converged, fallback: ``(2, K)`` bool.
    """

    clean_prob: Tensor
    means: Tensor
    variances: Tensor
    weights: Tensor
    shift: Tensor
    scale: Tensor
    n_samples: Tensor
    lower_bound: Tensor
    n_iter: Tensor
    converged: Tensor
    fallback: Tensor


def reference_fit(
    losses: Tensor, labels: Tensor, *, normalize: str = "minmax", max_iter: int = 10,
    tol: float = 1e-2, reg_covar: float = 5e-4, init: str = "kmeans", init_max_iter: int = 300,
    min_group_size: int = 8, fallback: float = 1.0,
) -> ReferenceFit:
    """Fit the ``2K`` mixtures one by one in float64 (options as in
    :class:`~.estimator.LabelGMM`).

    Args:
        losses: ``(N, K)`` finite per-label losses.
        labels: ``(N, K)`` given labels in {0, 1}.

    Returns:
        The clean probabilities and the fitted groups, see :class:`ReferenceFit`.
    """
    _check_inputs(losses, labels)
    _check_options(normalize, max_iter, tol, reg_covar, init, init_max_iter, min_group_size,
                   fallback)
    x_all = losses.detach().cpu().to(torch.float64)
    positive = labels.detach().cpu() != 0
    n, k = x_all.shape
    f64 = {"dtype": torch.float64}
    out = ReferenceFit(
        clean_prob=torch.full((n, k), math.nan, **f64),
        means=torch.full((2, k, 2), math.nan, **f64),
        variances=torch.full((2, k, 2), math.nan, **f64),
        weights=torch.full((2, k, 2), math.nan, **f64),
        shift=torch.zeros((2, k), **f64),
        scale=torch.ones((2, k), **f64),
        n_samples=torch.zeros((2, k), dtype=torch.int64),
        lower_bound=torch.full((2, k), -math.inf, **f64),
        n_iter=torch.zeros((2, k), dtype=torch.int64),
        converged=torch.zeros((2, k), dtype=torch.bool),
        fallback=torch.zeros((2, k), dtype=torch.bool),
    )
    for cls in range(k):
        for pol in (0, 1):
            rows = positive[:, cls] == bool(pol)
            x = x_all[rows, cls]
            out.n_samples[pol, cls] = x.numel()
            if x.numel() == 0:
                out.fallback[pol, cls] = True
                continue
            lo, hi = float(x.min()), float(x.max())
            constant = hi - lo <= _RANGE_RTOL * max(1.0, abs(lo), abs(hi))
            if normalize == "minmax":
                out.shift[pol, cls] = lo
                out.scale[pol, cls] = 1.0 if constant else hi - lo
            if x.numel() < min_group_size or constant:
                out.fallback[pol, cls] = True
                out.clean_prob[rows, cls] = fallback
                continue
            z = (x - out.shift[pol, cls]) / out.scale[pol, cls]
            high = _two_means(z, init_max_iter) if init == "kmeans" else _median_split(z)
            resp = torch.stack([~high, high], dim=1).to(torch.float64)
            params = _m_step(z, resp, reg_covar, initial=True)
            lower_bound, n_iter, converged = -math.inf, 0, False
            for it in range(1, max_iter + 1):
                log_norm, resp = _e_step(z, *params)
                params = _m_step(z, resp, reg_covar, initial=False)
                change = log_norm.mean().item() - lower_bound
                lower_bound, n_iter = log_norm.mean().item(), it
                if abs(change) < tol:
                    converged = True
                    break
            weights, means, variances = params
            order = [1, 0] if means[1] < means[0] else [0, 1]
            weights, means, variances = weights[order], means[order], variances[order]
            out.clean_prob[rows, cls] = _e_step(z, weights, means, variances)[1][:, 0]
            out.weights[pol, cls], out.means[pol, cls] = weights, means
            out.variances[pol, cls] = variances
            out.lower_bound[pol, cls], out.n_iter[pol, cls] = lower_bound, n_iter
            out.converged[pol, cls] = converged
    return out


def _two_means(z: Tensor, max_iter: int) -> Tensor:
    """Lloyd's 1-D two-means from the minimum and the maximum: the high cluster, ``(n,)``
    bool, after the assignment stopped changing or after ``max_iter`` steps."""
    high = z > 0.5 * (z.min() + z.max())
    for _ in range(max_iter):
        new = z > 0.5 * (z[~high].mean() + z[high].mean())
        same = torch.equal(new, high)
        high = new
        if same:
            break
    return high


def _median_split(z: Tensor) -> Tensor:
    """The values above the lower median, ``(n,)`` bool."""
    median = torch.sort(z).values[(z.numel() - 1) // 2]
    return z > median


def _m_step(z: Tensor, resp: Tensor, reg_covar: float, *,
            initial: bool) -> tuple[Tensor, Tensor, Tensor]:
    """scikit-learn's M-step: ``(weights, means, variances)``, each ``(2,)``, from the
    responsibilities ``resp`` ``(n, 2)``; ``initial`` weights are ``nk / n``."""
    nk = resp.sum(0) + _EPS10
    means = (resp * z[:, None]).sum(0) / nk
    variances = (resp * (z[:, None] - means) ** 2).sum(0) / nk + reg_covar
    weights = nk / z.numel() if initial else nk / nk.sum()
    return weights, means, variances


def _e_step(z: Tensor, weights: Tensor, means: Tensor,
            variances: Tensor) -> tuple[Tensor, Tensor]:
    """``log(sum_j w_j N_j(z))`` ``(n,)`` and the responsibilities ``(n, 2)``."""
    log_p = (torch.log(weights) - 0.5 * torch.log(2.0 * math.pi * variances)
             - 0.5 * (z[:, None] - means) ** 2 / variances)
    log_norm = torch.logsumexp(log_p, dim=1)
    return log_norm, torch.exp(log_p - log_norm[:, None])
