"""EM on per-group sufficient statistics, the batched fit, and Eq. 8 for every label.

Per-group quantities are ``(G,)`` or ``(G, 2)`` float64 tensors (``G = 2K`` groups in the
layout's order: dense groups, then ragged groups; last index: component). The M-step follows
scikit-learn's ``GaussianMixture`` (``nk = sum resp + 10 eps``, weights ``nk / sum nk``, or
``nk / n`` for the initial parameters, variances ``+ reg_covar``); the per-label sums come
from :meth:`~.chunks._Chunks.em_stats`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from .chunks import _Chunks, _Stats
from .init import _initial_split
from .layout import _Layout, _layout

# The package's logger ("balancemix_timm.gmm"), whose warnings name the fallback groups.
_logger = logging.getLogger(__package__)

_LOG_2PI = math.log(2.0 * math.pi)
_EPS10 = 10.0 * torch.finfo(torch.float64).eps  # scikit-learn's ``nk = resp.sum() + 10 eps``
_MAX_NAMED_GROUPS = 20  # how many fallback groups the warning names


def _m_step(
    n: Tensor, sx: Tensor, sxx: Tensor, s0: Tensor, s1: Tensor, s2: Tensor, reg_covar: float,
    *, initial: bool,
) -> _Stats:
    """scikit-learn's M-step from the responsibility sums of component 0 (component 1 gets the
    rest). Returns ``(weights, means, variances)``, each ``(G, 2)``; ``initial`` uses
    scikit-learn's initial weights ``nk / n`` instead of ``nk / sum(nk)``."""
    r = torch.stack([s0, (n - s0).clamp(min=0.0)], dim=1)
    m1 = torch.stack([s1, (sx - s1).clamp(min=0.0)], dim=1)
    m2 = torch.stack([s2, (sxx - s2).clamp(min=0.0)], dim=1)
    nk = r + _EPS10
    means = m1 / nk
    # sum_i r_i (x_i - mu)^2 / nk expanded (float64, data shifted to start at 0).
    var = ((m2 - 2.0 * means * m1 + means * means * r) / nk).clamp(min=0.0) + reg_covar
    if initial:
        weights = nk / n.clamp(min=1.0).unsqueeze(1)
    else:
        weights = nk / nk.sum(1, keepdim=True)
    return weights, means, var


def _coefficients(weights: Tensor, means: Tensor, variances: Tensor) -> _Stats:
    """``log(w0 N0(x)) - log(w1 N1(x)) = a + b x + c x^2`` per group."""
    prec = 1.0 / variances
    const = torch.log(weights) - 0.5 * torch.log(variances) - 0.5 * prec * means * means
    lin = prec * means
    return const[:, 0] - const[:, 1], lin[:, 0] - lin[:, 1], -0.5 * (prec[:, 0] - prec[:, 1])


def _sum_log_component1(
    weights: Tensor, means: Tensor, variances: Tensor, n: Tensor, sx: Tensor, sxx: Tensor
) -> Tensor:
    """``sum_i log(w1 N1(x_i))`` over each group, from the group's moments."""
    w, mu, var = weights[:, 1], means[:, 1], variances[:, 1]
    sq = (sxx - 2.0 * mu * sx + n * mu * mu).clamp(min=0.0)
    return n * (torch.log(w) - 0.5 * _LOG_2PI - 0.5 * torch.log(var)) - 0.5 * sq / var


class _Fit:
    """Raw result of one batched fit, in internal group order (dense groups, ragged groups)."""

    weights: Tensor
    means: Tensor
    variances: Tensor
    lower_bound: Tensor
    n_iter: Tensor
    converged: Tensor
    fallback: Tensor
    n: Tensor
    offset: Tensor
    scale: Tensor
    majority: Tensor
    clean_prob: Tensor | None



def _group_names(mask: Tensor, polarity: Tensor) -> str:
    """``'(k=3, positive), ...'`` for the True entries of a ``(G,)`` mask."""
    k = polarity.numel() // 2
    pol = polarity.tolist()
    names = [f"(k={g % k}, {'positive' if pol[g] else 'negative'})"
             for g in torch.nonzero(mask).view(-1).tolist()]
    text = ", ".join(names[:_MAX_NAMED_GROUPS])
    if len(names) > _MAX_NAMED_GROUPS:
        text += f", ... ({len(names) - _MAX_NAMED_GROUPS} more)"
    return text


def _em(
    groups: _Chunks, n: Tensor, sx: Tensor, sxx: Tensor, params: _Stats, fitted: Tensor, *,
    max_iter: int, tol: float, reg_covar: float,
) -> tuple[Tensor, ...]:
    """Up to ``max_iter`` EM rounds of every fitted group from ``params``.

    A round is an E-step with the current parameters (its mean log-likelihood per label is the
    group's lower bound), then an M-step; a group stops, its parameters frozen, as soon as its
    lower bound changes by less than ``tol`` (the first round's change from ``-inf`` never
    does).

    Args:
        groups: the :class:`~.chunks._Chunks` of the groups.
        n, sx, sxx: ``(G,)`` float64 count, sum and sum of squares of each group.
        params: initial ``(weights, means, variances)``, each ``(G, 2)`` float64.
        fitted: ``(G,)`` bool, the groups to run EM on (the others keep ``params``).

    Returns:
        ``(weights, means, variances, lower_bound, n_iter, converged)``: the parameters
        ``(G, 2)`` float64, the last lower bound ``(G,)`` float64 (``-inf`` where no round
        ran), the rounds run ``(G,)`` int64 and ``(G,)`` bool.
    """
    weights, means, variances = params
    lower_bound = torch.full_like(sx, -math.inf)
    n_iter = torch.zeros(n.numel(), dtype=torch.int64, device=n.device)
    converged = torch.zeros(n.numel(), dtype=torch.bool, device=n.device)
    active = fitted.clone()
    safe_n = n.clamp(min=1.0)
    for it in range(1, max_iter + 1):
        if not bool(active.any()):
            break
        a, b, c = _coefficients(weights, means, variances)
        s0, s1, s2, ssp = groups.em_stats(a, b, c, active)
        new_lb = (_sum_log_component1(weights, means, variances, n, sx, sxx) + ssp) / safe_n
        new_w, new_mu, new_var = _m_step(n, sx, sxx, s0, s1, s2, reg_covar, initial=False)
        upd = active.unsqueeze(1)
        weights = torch.where(upd, new_w, weights)
        means = torch.where(upd, new_mu, means)
        variances = torch.where(upd, new_var, variances)
        change = new_lb - lower_bound
        lower_bound = torch.where(active, new_lb, lower_bound)
        n_iter = torch.where(active, torch.full_like(n_iter, it), n_iter)
        done = active & (change.abs() < tol)
        converged |= done
        active &= ~done
    return weights, means, variances, lower_bound, n_iter, converged


def _fit(
    losses: Tensor, labels: Tensor, *, normalize: str, max_iter: int, tol: float,
    reg_covar: float, init: str, init_max_iter: int, min_group_size: int, fallback: float,
    dtype: torch.dtype, device: torch.device, predict: bool,
) -> _Fit:
    """All ``2K`` mixtures: layout, fallback groups, initialisation, EM, components ordered
    clean (smaller mean) first, and with ``predict`` the clean probability of every label.
    Options as in :class:`~.estimator.LabelGMM` (``dtype``: the working dtype)."""
    k = losses.shape[1]
    lay = _layout(losses, labels, normalize=normalize, dtype=dtype, device=device,
                  want_median=init == "quantile")
    groups, constant, majority = lay.chunks, lay.constant, lay.majority
    n, sx, sxx = groups.moments()
    polarity = torch.cat([majority, ~majority])  # (G,) True: the group holds positive labels
    fb = (n < min_group_size) | constant
    fitted = ~fb
    warn = fb & (n > 0)
    if bool(warn.any()):
        _logger.warning(
            "clean_probability: %d of %d (class, polarity) groups have fewer than %d labels "
            "or a constant loss and get the fallback clean probability %s: %s",
            int(warn.sum()), 2 * k, min_group_size, fallback, _group_names(warn, polarity),
        )

    # Initial hard assignment: component 0 = low losses, component 1 = high losses.
    count, s_hi, s2_hi = _initial_split(lay, n, sx, fitted, init, init_max_iter)
    weights, means, variances = _m_step(
        n, sx, sxx, n - count, sx - s_hi, sxx - s2_hi, reg_covar, initial=True
    )
    # Harmless parameters for the groups that are not fitted (keeps every value finite).
    keep = fitted.unsqueeze(1)
    weights = torch.where(keep, weights, torch.full_like(weights, 0.5))
    means = torch.where(keep, means, torch.zeros_like(means))
    variances = torch.where(keep, variances, torch.ones_like(variances))
    weights, means, variances, lower_bound, n_iter, converged = _em(
        groups, n, sx, sxx, (weights, means, variances), fitted, max_iter=max_iter, tol=tol,
        reg_covar=reg_covar,
    )

    # Components in the order clean (smaller mean), noisy.
    swap = (means[:, 1] < means[:, 0]).unsqueeze(1)
    weights, means, variances = (
        torch.where(swap, t.flip(1), t) for t in (weights, means, variances)
    )
    out = _Fit()
    out.weights, out.means, out.variances = weights, means, variances
    out.lower_bound, out.n_iter, out.converged = lower_bound, n_iter, converged
    out.fallback, out.n, out.majority = fb, n, majority
    out.offset, out.scale = lay.offset, lay.scale
    out.clean_prob = None
    if predict:
        a, b, c = _coefficients(weights, means, variances)
        out.clean_prob = _predict(losses, lay, a, b, c, fb, fallback)
    _logger.debug(
        "clean_probability: %d groups fitted, %d converged, at most %d EM rounds",
        int(fitted.sum()), int(converged.sum()), int(n_iter.max()) if n_iter.numel() else 0,
    )
    return out


def _predict(losses: Tensor, lay: _Layout, a: Tensor, b: Tensor, c: Tensor,
             fallback_groups: Tensor, fallback: float) -> Tensor:
    """Eq. 8 for every label, ``(N, K)`` float32: the posterior ``sigmoid(a + (b + c z) z)``
    of the clean component with each group's coefficients, ``z`` the normalised loss.

    The dense groups (column ``k`` of ``losses`` for class ``k``, bar the ragged entries) are
    evaluated straight in the ``(N, K)`` layout of ``losses``, slab by slab with the same
    arithmetic as the fit's (so from the same normalised values), which spares a transposed
    copy of the whole output; the ragged groups are evaluated on their chunks and written
    over their entries. Groups in ``fallback_groups`` ``(G,)`` get ``fallback``."""
    chunks, out = lay.chunks, lay.output
    n, k, dtype = out.n_samples, out.k, chunks.dtype
    device = chunks.x.device
    result = torch.empty((n, k), dtype=torch.float32, device=device)
    if n == 0:
        return result
    offset, scale, a_k, b_k, c_k = (t[:k].to(dtype).unsqueeze(0)
                                    for t in (lay.offset, lay.scale, a, b, c))
    rows = min(n, max(1, chunks.slab * chunks.chunk // k))
    work = torch.empty((3, rows, k), dtype=dtype, device=device)
    x = losses.to(device=device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        z, inner, d = work[:, : stop - start]
        z.copy_(x[start:stop]).sub_(offset).div_(scale)
        torch.addcmul(b_k, z, c_k, out=inner)
        torch.sigmoid(torch.addcmul(a_k, inner, z, out=d), out=result[start:stop])
    dense_fallback = torch.nonzero(fallback_groups[:k]).view(-1)
    if dense_fallback.numel():
        result.index_fill_(1, dense_fallback, fallback)
    p = chunks.posterior(a, b, c, first=out.m_dense)  # (ragged chunks, CH)
    p.masked_fill_(fallback_groups.index_select(0, chunks.group[out.m_dense:]).unsqueeze(1),
                   fallback)
    values = p.reshape(-1)[out.where - out.m_dense * chunks.chunk].to(torch.float32)
    result.view(-1).index_copy_(0, out.col * k + out.seg, values)
    return result
