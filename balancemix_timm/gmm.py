"""Clean-label probabilities from per-(class, polarity) Gaussian mixtures (Eq. 6-8 of BalanceMix).

BalanceMix splits the per-label BCE losses of the whole training set into ``2K`` sets, one per
class ``k`` and polarity ``l`` (the given label ``y~_k = l``, Eq. 6), fits a two-component
univariate Gaussian mixture to each set with EM (Eq. 7) and takes the posterior of the
small-mean component as the probability that a label is clean (Eq. 8); ``p_G > 0.5`` marks a
label as clean.

This module fits all ``2K`` mixtures at once with dense tensor operations in float64 (no Python
loop over groups) and follows :class:`sklearn.mixture.GaussianMixture` (``n_components=2``,
one feature, ``covariance_type="full"``) step for step, so that from the same initial
responsibilities both give the same posteriors up to rounding:

* initial responsibilities from a hard assignment (``init="kmeans"``: deterministic 1-D
  two-means, Lloyd's algorithm started from each group's minimum and maximum and run until the
  assignment stops changing; ``init="quantile"``: a split at each group's median), turned into
  parameters by one M-step with weights ``n_c / n``;
* then up to ``max_iter`` rounds of E-step, M-step (``nk = sum resp + 10 eps``, weights
  ``nk / sum nk``, means, variances ``+ reg_covar``) and lower bound (mean log-likelihood of the
  group's losses under the parameters of that E-step); a group stops, its parameters frozen, as
  soon as its lower bound changes by less than ``tol``;
* a final E-step with the final parameters gives the posteriors.

Implementation notes (the layout is what makes it fast):

* For each class the more frequent polarity is stored densely as a ``(K, N)`` float64 tensor in
  which the other polarity's entries are replaced by a filler ``0.0``. The filler adds nothing
  to the sums of ``x`` and ``x**2``; its share of the sums of responsibilities and
  log-likelihoods is one known value per class, subtracted analytically. The rarer polarity of
  each class (the positives, for a typical multi-label data set) is stored as a ragged vector
  with a class index. Every label is thus processed once per EM round, with per-class
  coefficients broadcast along rows instead of gathered per entry. Rows whose group has
  converged are dropped from the dense tensor once they are the majority.
* Inside the fit each group's losses are shifted by the group minimum (and, with
  ``normalize="minmax"``, divided by its range). EM is translation-equivariant, so the shift
  changes nothing but keeps the filler at the bottom of the data and the one-pass variance
  ``E[x^2] - mean^2`` well conditioned (float32 loses about 7e-3 there, hence float64).
* Plain Lloyd iterations need up to ~60 passes over the data on realistic losses; see
  :func:`_two_means` for how a histogram bounds the trajectory so that one or two passes and
  cheap iterations on a narrow window of losses reach exactly the same assignment.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from balancemix_timm._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_same_shape,
    check_tensor,
    check_unit_interval,
)

__all__ = ["clean_probability", "LabelGMM"]

_logger = logging.getLogger(__name__)

_LOG_2PI = math.log(2.0 * math.pi)
_EPS10 = 10.0 * torch.finfo(torch.float64).eps  # scikit-learn's ``nk = resp.sum() + 10 eps``
# A group whose losses span at most this (relative to max(1, max |loss|)) is "constant".
_RANGE_RTOL = 1e-9
_NORMALIZE = ("minmax", "none")
_INIT = ("kmeans", "quantile")
_MAX_NAMED_GROUPS = 20  # how many fallback groups the warning names
_INIT_BINS = 1024  # histogram bins that bound the k-means trajectory (see _two_means)
_WINDOW_MARGIN = 1e-9  # relative widening of the exact k-means window (see _two_means)

_Stats = tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------------------------
# Storage blocks. Row / group r of a block is the group of class r (dense: the majority
# polarity; ragged: the minority polarity). Values are shifted so that each group starts at 0.
# --------------------------------------------------------------------------------------------


class _DenseBlock:
    """Groups stored as rows of a ``(R, 3, N)`` float64 tensor ``[1, x, x^2]``, other entries
    being filler zeros (``x = 0``).

    Args:
        design: ``(R, 3, N)`` float64 rows ``1``, ``x`` and ``x**2``, ``x`` shifted / scaled
            per row, 0 at filler entries.
        n_fill: ``(R,)`` float64 number of filler entries per row.
        filler: ``(R, N)`` bool filler mask (only needed for :meth:`median`).
    """

    def __init__(self, design: Tensor, n_fill: Tensor, filler: Tensor | None = None) -> None:
        rows, _, size = design.shape
        self.design = design
        self.design_t = design.transpose(1, 2)  # (R, N, 3) view for batched dot products
        self.x, self.x2 = design[:, 1], design[:, 2]
        self.n_fill = n_fill
        self.filler = filler
        self.n = size - n_fill
        # Work space: rows 0 / 1 hold responsibilities / softplus in EM, scratch otherwise.
        self._rs = torch.empty((rows, 2, size), dtype=torch.float64, device=design.device)
        self._mask = torch.empty((rows, size), dtype=torch.bool, device=design.device)

    def subset(self, rows: Tensor) -> _DenseBlock:
        """A new block holding only ``rows`` (for the rows whose EM is still running)."""
        return _DenseBlock(self.design.index_select(0, rows), self.n_fill.index_select(0, rows))

    def moments(self) -> _Stats:
        s = self.design.sum(2)
        return self.n, s[:, 1], s[:, 2]

    def _weighted(self, w: Tensor) -> Tensor:
        """Row sums of ``w[:, m] * [1, x, x^2]``, ``(R, M, 3)``, for ``w`` ``(R, M, N)``."""
        return torch.bmm(w, self.design_t)

    def split(self, thr: Tensor) -> _Stats:
        """Count, sum and sum of squares of the entries ``> thr`` per row (filler never is)."""
        torch.gt(self.x, thr.unsqueeze(1), out=self._mask)
        s = self._weighted(self._rs[:, :1].copy_(self._mask.unsqueeze(1))).squeeze(1)
        return s[:, 0], s[:, 1], s[:, 2]

    def window(self, lo: Tensor, hi: Tensor) -> tuple[_Stats, Tensor, Tensor]:
        """Stats of the entries ``> hi``, and values / rows of the entries in ``(lo, hi]``."""
        above = self.split(hi)  # leaves self._mask = x > hi
        inside = torch.gt(self.x, lo.unsqueeze(1))
        inside ^= self._mask  # lo <= hi, so {x > hi} is a subset of {x > lo}
        flat = torch.nonzero(inside.view(-1)).view(-1)
        size = self.x.shape[1]
        rows = torch.div(flat, size, rounding_mode="floor")
        return above, self.x[rows, flat - rows * size], rows

    def histogram(self, inv_width: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row counts and sums over ``_INIT_BINS`` bins, ``bin = floor(x * inv_width)``."""
        rows, size = self.x.shape
        b = torch.mul(self.x, inv_width.unsqueeze(1), out=self._rs[:, 0])
        b.floor_().clamp_(0, _INIT_BINS - 1)
        idx = self._rs[:, 1].view(torch.int64).copy_(b)
        zeros = torch.zeros((rows, _INIT_BINS), dtype=torch.float64, device=idx.device)
        counts = zeros.clone().scatter_add_(1, idx, self.design[:, 0])
        sums = zeros.scatter_add_(1, idx, self.x)
        counts[:, 0] -= self.n_fill  # the filler sits at x = 0, in bin 0
        return counts, sums

    def median(self) -> Tensor:
        assert self.filler is not None
        values = self.x.masked_fill(self.filler, float("nan"))
        return torch.nanmedian(values, dim=1).values

    def _diff(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """``d = a + b x + c x^2`` per row, written to work-space row 0."""
        d = torch.addcmul(a.unsqueeze(1), self.x, b.unsqueeze(1), out=self._rs[:, 0])
        return d.addcmul_(self.x2, c.unsqueeze(1))

    def em_stats(self, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Row sums of ``r``, ``r x``, ``r x^2`` and ``softplus(d)``, where ``d = a + b x + c x^2``
        and ``r = sigmoid(d)``, over the real (non-filler) entries."""
        d = self._diff(a, b, c)
        torch.ops.aten.softplus.out(d, 1, 20, out=self._rs[:, 1])
        torch.sigmoid_(d)  # row 0 now holds the responsibilities r
        s = self._weighted(self._rs)  # (R, 2, 3)
        # The filler sits at x = 0 where d = a: remove its share.
        s0 = (s[:, 0, 0] - self.n_fill * torch.sigmoid(a)).clamp_(min=0.0)
        ssp = s[:, 1, 0] - self.n_fill * torch.nn.functional.softplus(a)
        return s0, s[:, 0, 1], s[:, 0, 2], ssp

    def posterior(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """``sigmoid(a + b x + c x^2)`` for every entry, ``(R, N)`` (filler entries meaningless)."""
        return torch.sigmoid_(self._diff(a, b, c))


class _RaggedBlock:
    """Groups stored as one flat vector with a group index.

    Args:
        v: ``(P,)`` float64 values, shifted / scaled per group.
        seg: ``(P,)`` int64 group of each value, non-decreasing.
        groups: number of groups.
    """

    def __init__(self, v: Tensor, seg: Tensor, groups: int) -> None:
        self.v = v
        self.v2 = v * v
        self.design = torch.stack([torch.ones_like(v), v, self.v2], dim=1)  # (P, 3)
        self.seg = seg
        self.groups = groups
        self.n = self._sum(self.design[:, 0])

    def _sum(self, w: Tensor) -> Tensor:
        out = torch.zeros((self.groups,) + w.shape[1:], dtype=torch.float64, device=w.device)
        return out.index_add_(0, self.seg, w)

    def _per_entry(self, t: Tensor) -> Tensor:
        return t.index_select(0, self.seg)

    def moments(self) -> _Stats:
        s = self._sum(self.design)
        return s[:, 0], s[:, 1], s[:, 2]

    def split(self, thr: Tensor) -> _Stats:
        hi = self.v > self._per_entry(thr)
        s = self._sum(self.design * hi.unsqueeze(1))
        return s[:, 0], s[:, 1], s[:, 2]

    def window(self, lo: Tensor, hi: Tensor) -> tuple[_Stats, Tensor, Tensor]:
        above = self.split(hi)
        keep = (self.v > self._per_entry(lo)) & (self.v <= self._per_entry(hi))
        return above, self.v[keep], self.seg[keep]

    def histogram(self, inv_width: Tensor) -> tuple[Tensor, Tensor]:
        idx = (self.v * self._per_entry(inv_width)).floor_()
        idx = idx.clamp_(0, _INIT_BINS - 1).to(torch.int64) + self.seg * _INIT_BINS
        size = self.groups * _INIT_BINS
        zeros = torch.zeros(size, dtype=torch.float64, device=idx.device)
        counts = zeros.clone().scatter_add_(0, idx, self.design[:, 0])
        sums = zeros.scatter_add_(0, idx, self.v)
        return counts.view(self.groups, -1), sums.view(self.groups, -1)

    def median(self) -> Tensor:
        """Lower median per group (``torch.nanmedian`` convention); NaN for an empty group."""
        out = torch.full((self.groups,), float("nan"), dtype=torch.float64, device=self.v.device)
        if self.v.numel() == 0:
            return out
        order = torch.argsort(self.v, stable=True)
        order = order[torch.argsort(self.seg[order], stable=True)]
        counts = self.n.long()
        start = torch.cumsum(counts, 0) - counts
        has = counts > 0
        out[has] = self.v[order][(start + (counts - 1) // 2)[has]]
        return out

    def _diff(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        d = torch.addcmul(self._per_entry(a), self.v, self._per_entry(b))
        return d.addcmul_(self.v2, self._per_entry(c))

    def em_stats(self, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        d = self._diff(a, b, c)
        s = self._sum(self.design * torch.sigmoid(d).unsqueeze(1))
        return s[:, 0], s[:, 1], s[:, 2], self._sum(torch.nn.functional.softplus(d))

    def posterior(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return torch.sigmoid_(self._diff(a, b, c))


class _SortedWindow:
    """The losses of each group that lie in its Lloyd window, sorted, with prefix sums, so that
    the stats of ``{x > t}`` cost one ``searchsorted`` of ``G`` queries.

    Args:
        v: ``(P,)`` float64 values; seg: ``(P,)`` int64 non-decreasing group; groups: ``G``.
    """

    def __init__(self, v: Tensor, seg: Tensor, groups: int) -> None:
        counts = torch.bincount(seg, minlength=groups)
        width = int(counts.max()) if v.numel() else 0
        start = torch.cumsum(counts, 0) - counts
        pos = torch.arange(v.numel(), device=v.device) - start.index_select(0, seg)
        padded = torch.full((groups, width), float("inf"), dtype=torch.float64, device=v.device)
        padded[seg, pos] = v
        self.sorted = padded.sort(dim=1).values
        real = torch.where(torch.isinf(self.sorted), torch.zeros_like(self.sorted), self.sorted)
        zero = torch.zeros((groups, 1), dtype=torch.float64, device=v.device)
        self.s1 = torch.cat([zero, real.cumsum(1)], dim=1)  # (G, width + 1) prefix sums
        self.s2 = torch.cat([zero, (real * real).cumsum(1)], dim=1)
        self.count = counts.to(torch.float64)

    def split(self, thr: Tensor) -> _Stats:
        below = torch.searchsorted(self.sorted, thr.unsqueeze(1).contiguous(), right=True)
        return (
            self.count - below.squeeze(1).to(torch.float64),
            self.s1[:, -1] - self.s1.gather(1, below).squeeze(1),
            self.s2[:, -1] - self.s2.gather(1, below).squeeze(1),
        )


class _Groups:
    """All ``G = 2K`` groups: dense rows are groups ``0..K-1``, ragged groups ``K..2K-1``."""

    def __init__(self, dense: _DenseBlock, ragged: _RaggedBlock) -> None:
        self.dense = dense
        self.ragged = ragged
        self.k = ragged.groups
        self._em_block = dense
        self._em_rows = torch.arange(self.k, device=dense.design.device)

    @staticmethod
    def _cat(p: tuple[Tensor, ...], q: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(torch.cat([s, t]) for s, t in zip(p, q))

    def moments(self) -> _Stats:
        return self._cat(self.dense.moments(), self.ragged.moments())  # type: ignore[return-value]

    def split(self, thr: Tensor) -> _Stats:
        k = self.k
        return self._cat(self.dense.split(thr[:k]), self.ragged.split(thr[k:]))  # type: ignore

    def histogram(self, top: Tensor) -> tuple[Tensor, Tensor]:
        k = self.k
        inv = torch.where(top > 0, _INIT_BINS / top, torch.zeros_like(top))
        dense, ragged = self.dense.histogram(inv[:k]), self.ragged.histogram(inv[k:])
        return self._cat(dense, ragged)  # type: ignore[return-value]

    def window(self, lo: Tensor, hi: Tensor) -> tuple[_Stats, _SortedWindow]:
        """Stats of the losses ``> hi`` and the losses in ``(lo, hi]``, sorted per group."""
        k = self.k
        above_d, v_d, seg_d = self.dense.window(lo[:k], hi[:k])
        above_r, v_r, seg_r = self.ragged.window(lo[k:], hi[k:])
        window = _SortedWindow(torch.cat([v_d, v_r]), torch.cat([seg_d, seg_r + k]), 2 * k)
        return self._cat(above_d, above_r), window  # type: ignore[return-value]

    def median(self) -> Tensor:
        return torch.cat([self.dense.median(), self.ragged.median()])

    def em_stats(self, a: Tensor, b: Tensor, c: Tensor, active: Tensor) -> tuple[Tensor, ...]:
        """EM sums for every group; only ``active`` groups' values are meaningful."""
        k = self.k
        keep = active[:k][self._em_rows]
        if 2 * int(keep.sum()) <= keep.numel():  # drop converged rows once they are the majority
            sel = torch.nonzero(keep).view(-1)
            self._em_block = self._em_block.subset(sel)
            self._em_rows = self._em_rows[sel]
        rows = self._em_rows
        dense = tuple(
            torch.zeros(k, dtype=torch.float64, device=a.device).index_copy_(0, rows, s)
            for s in self._em_block.em_stats(a[rows], b[rows], c[rows])
        )
        return self._cat(dense, self.ragged.em_stats(a[k:], b[k:], c[k:]))


# --------------------------------------------------------------------------------------------
# Initialisation: batched 1-D two-means
# --------------------------------------------------------------------------------------------


def _midpoint(n: Tensor, sx: Tensor, count_hi: Tensor, sum_hi: Tensor) -> Tensor:
    """Lloyd's next threshold: the midpoint of the means below and above the split."""
    lo = (sx - sum_hi) / (n - count_hi).clamp(min=1.0)
    hi = sum_hi / count_hi.clamp(min=1.0)
    return 0.5 * (lo + hi)


def _two_means(
    groups: _Groups, n: Tensor, sx: Tensor, top: Tensor, fitted: Tensor, max_iter: int
) -> _Stats:
    """Batched 1-D two-means (Lloyd) from each group's minimum (0) and maximum (``top``).

    Returns count, sum and sum of squares of the high cluster at Lloyd's fixed point, ``(G,)``.

    Lloyd's iteration is ``t_{i+1} = T(t_i)`` with ``T(t) = (mean{x <= t} + mean{x > t}) / 2``
    and ``t_0 = top / 2``; it stops when the set ``{x > t}`` no longer changes. Both
    conditional means are non-decreasing in ``t``, hence so is ``T``: the thresholds move
    monotonically, say upwards, to the first fixed point ``t*`` above ``t_1``, and
    ``T(t) <= t*`` for every ``t <= t*``. For ``t`` in histogram bin ``b``,
    ``T_lo = T(bins >= b high) <= T(t) <= T(bins > b high) = T_hi``. So the sequence
    ``l <- max(T_lo(l), t_1)`` from ``t_1`` rises to some ``l* <= t*`` with ``T(l*) >= l*``,
    and ``u <- T_hi(u)`` from ``t_1`` rises to some ``u* >= t*``: exact Lloyd resumed from
    ``l*`` rises monotonically to the same ``t*`` as plain Lloyd, never leaving
    ``[l*, u*]`` (symmetrically downwards). The bound sequences cost no data pass, and the
    exact steps only need the few losses inside ``(l*, u*]`` (widened by
    ``_WINDOW_MARGIN * top`` against rounding) plus the totals above ``u*`` (one pass). Should
    rounding ever push a threshold out of the window anyway, the remaining iterations run on
    the full data.
    """
    t0 = 0.5 * top
    count, s1, _ = groups.split(t0)
    t1 = _midpoint(n, sx, count, s1)
    up, down = fitted & (t1 > t0), fitted & (t1 < t0)

    counts, sums = groups.histogram(top)
    c_ge = counts.flip(1).cumsum(1).flip(1)  # count of bins >= b
    s_ge = sums.flip(1).cumsum(1).flip(1)
    c_gt = torch.nn.functional.pad(c_ge[:, 1:], (0, 1))  # count of bins > b
    s_gt = torch.nn.functional.pad(s_ge[:, 1:], (0, 1))
    c_tot, s_tot = c_ge[:, :1], s_ge[:, :1]
    top_ = top.unsqueeze(1)
    zero = torch.zeros_like(top_)

    def mean(s: Tensor, c: Tensor, empty: Tensor) -> Tensor:
        return torch.where(c > 0, s / c.clamp(min=1.0), empty)

    # Counting the straddled bin high (low) can only lower (raise) both means.
    t_lo = 0.5 * (mean(s_tot - s_ge, c_tot - c_ge, zero) + mean(s_ge, c_ge, top_))
    t_hi = 0.5 * (mean(s_tot - s_gt, c_tot - c_gt, zero) + mean(s_gt, c_gt, top_))
    inv = torch.where(top > 0, _INIT_BINS / top, torch.zeros_like(top))

    def bound(table: Tensor, t: Tensor) -> Tensor:
        b = (t * inv).floor_().clamp_(0, _INIT_BINS - 1).to(torch.int64)
        return table.gather(1, b.unsqueeze(1)).squeeze(1)

    moving = up | down
    lo = torch.where(moving, t1, t0)
    hi = lo.clone()
    for _ in range(_INIT_BINS + 2):  # monotone over finitely many bins: always terminates
        new_lo = bound(t_lo, lo)
        new_lo = torch.where(up, torch.maximum(new_lo, t1), torch.where(down, new_lo, lo))
        new_hi = bound(t_hi, hi)
        new_hi = torch.where(down, torch.minimum(new_hi, t1), torch.where(up, new_hi, hi))
        if bool((new_lo == lo).all() & (new_hi == hi).all()):
            break
        lo, hi = new_lo, new_hi
    thr = torch.where(up, lo, torch.where(down, hi, t0))
    # The bounds come from sums in another order than the exact steps: widen by a margin far
    # above rounding (a wider window only costs a few more losses in it).
    margin = _WINDOW_MARGIN * top
    lo, hi = torch.minimum(lo, hi) - margin, torch.maximum(lo, hi) + margin

    # Exact Lloyd inside the window; in 1-D the sets {x > t} are nested, so an unchanged
    # count means an unchanged assignment.
    above, window = groups.window(lo, hi)
    on_full = False

    def stats(t: Tensor) -> _Stats:
        nonlocal on_full
        if not on_full and bool((((t < lo) | (t > hi)) & fitted).any()):
            on_full = True  # rounding pushed a threshold out of the window
        if on_full:
            return groups.split(t)
        inside = window.split(t)
        return above[0] + inside[0], above[1] + inside[1], above[2] + inside[2]

    count, s1, s2 = stats(thr)
    for _ in range(max_iter):
        new_count, new_s1, new_s2 = stats(_midpoint(n, sx, count, s1))
        same = bool(((new_count == count) | ~fitted).all())
        count, s1, s2 = new_count, new_s1, new_s2
        if same:
            break
    return count, s1, s2


# --------------------------------------------------------------------------------------------
# EM on per-group sufficient statistics (tensors (G,) or (G, 2), G = 2K groups)
# --------------------------------------------------------------------------------------------


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
    clean_proba: Tensor | None


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_inputs(losses: Tensor, labels: Tensor) -> None:
    check_tensor(losses, "losses")
    check_tensor(labels, "labels")
    check_ndim(losses, "losses", 2)
    check_ndim(labels, "labels", 2)
    check_same_shape(losses, "losses", labels, "labels")
    if not losses.is_floating_point():
        raise ValueError(f"losses must be a floating-point tensor, got {losses.dtype}")
    check_finite(losses, "losses")
    check_binary(labels, "labels")


def _check_options(
    normalize: str, max_iter: int, tol: float, reg_covar: float, init: str, init_max_iter: int,
    min_group_size: int, fallback: float,
) -> None:
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if init not in _INIT:
        raise ValueError(f"init must be one of {_INIT}, got {init!r}")
    for name, value, low in (
        ("max_iter", max_iter, 0), ("init_max_iter", init_max_iter, 1),
        ("min_group_size", min_group_size, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("tol", tol), ("reg_covar", reg_covar)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    check_unit_interval(fallback, "fallback")


# --------------------------------------------------------------------------------------------
# The batched fit
# --------------------------------------------------------------------------------------------


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


def _fit(
    losses: Tensor, labels: Tensor, *, normalize: str, max_iter: int, tol: float,
    reg_covar: float, init: str, init_max_iter: int, min_group_size: int, fallback: float,
    device: torch.device, predict: bool,
) -> _Fit:
    n_samples, k = losses.shape
    f64 = dict(dtype=torch.float64, device=device)
    design = torch.empty((k, 3, n_samples), **f64)  # rows 1, x, x^2 of the dense block
    x, scratch = design[:, 1], design[:, 2]
    x.copy_(losses.to(device=device).t())
    pos = labels.to(device=device).bool().t().contiguous()  # (K, N)
    n_pos = pos.sum(1, dtype=torch.int32).long()  # (int32 accumulation is much faster)
    majority = n_pos * 2 > n_samples  # (K,) True: the positives are the dense group
    minority = pos ^ majority.unsqueeze(1)  # (K, N) True: the entry is in the ragged group
    del pos
    flat = torch.nonzero(minority.view(-1)).view(-1)
    seg = torch.div(flat, n_samples, rounding_mode="floor")
    col = flat - seg * n_samples
    v = x[seg, col]
    n_minor = (n_samples - n_pos).where(majority, n_pos).to(torch.float64)

    # Per-group minimum / maximum (dense groups, then ragged groups).
    inf = float("inf")
    d_min = torch.full((k,), inf, **f64)
    d_max = torch.full((k,), -inf, **f64)
    if n_samples > 0:
        d_min = scratch.copy_(x).masked_fill_(minority, inf).amin(1)
        d_max = scratch.masked_fill_(minority, -inf).amax(1)
    r_min = torch.full((k,), inf, **f64).scatter_reduce(0, seg, v, "amin")
    r_max = torch.full((k,), -inf, **f64).scatter_reduce(0, seg, v, "amax")
    gmin, gmax = torch.cat([d_min, r_min]), torch.cat([d_max, r_max])
    nonempty = torch.isfinite(gmin)
    zeros = torch.zeros_like(gmin)
    span = torch.where(nonempty, gmax - gmin, zeros)
    size = torch.where(nonempty, torch.maximum(gmin.abs(), gmax.abs()), zeros).clamp(min=1.0)
    constant = nonempty & (span <= _RANGE_RTOL * size)
    offset = torch.where(nonempty, gmin, zeros)
    scale = torch.ones_like(span)
    if normalize == "minmax":
        scale = torch.where(constant | ~nonempty, scale, span)

    # Shift / scale every group; the dense block's filler entries become 0.
    x.sub_(offset[:k].unsqueeze(1)).div_(scale[:k].unsqueeze(1)).masked_fill_(minority, 0.0)
    torch.mul(x, x, out=design[:, 2])
    design[:, 0].fill_(1.0)
    v = (v - offset[k:].index_select(0, seg)) / scale[k:].index_select(0, seg)
    groups = _Groups(
        _DenseBlock(design, n_minor, minority if init == "quantile" else None),
        _RaggedBlock(v, seg, k),
    )
    del x, v, minority, design, scratch

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
    if init == "kmeans":
        count, s_hi, s2_hi = _two_means(groups, n, sx, span / scale, fitted, init_max_iter)
    else:
        count, s_hi, s2_hi = groups.split(groups.median().nan_to_num(0.0))
    weights, means, variances = _m_step(
        n, sx, sxx, n - count, sx - s_hi, sxx - s2_hi, reg_covar, initial=True
    )
    # Harmless parameters for the groups that are not fitted (keeps every value finite).
    keep = fitted.unsqueeze(1)
    weights = torch.where(keep, weights, torch.full_like(weights, 0.5))
    means = torch.where(keep, means, torch.zeros_like(means))
    variances = torch.where(keep, variances, torch.ones_like(variances))

    lower_bound = torch.full_like(sx, -inf)
    n_iter = torch.zeros(2 * k, dtype=torch.int64, device=device)
    converged = torch.zeros(2 * k, dtype=torch.bool, device=device)
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

    # Components in the order clean (smaller mean), noisy.
    swap = (means[:, 1] < means[:, 0]).unsqueeze(1)
    weights, means, variances = (
        torch.where(swap, t.flip(1), t) for t in (weights, means, variances)
    )
    out = _Fit()
    out.weights, out.means, out.variances = weights, means, variances
    out.lower_bound, out.n_iter, out.converged = lower_bound, n_iter, converged
    out.fallback, out.n, out.offset, out.scale, out.majority = fb, n, offset, scale, majority
    out.clean_proba = None
    if predict:
        a, b, c = _coefficients(weights, means, variances)
        p_dense = groups.dense.posterior(a[:k], b[:k], c[:k])
        p_dense.index_fill_(0, torch.nonzero(fb[:k]).view(-1), fallback)
        result = torch.empty((n_samples, k), dtype=torch.float32, device=device)
        result.copy_(p_dense.t())
        p_ragged = groups.ragged.posterior(a[k:], b[k:], c[k:])
        p_ragged.masked_fill_(fb[k:].index_select(0, seg), fallback)
        result[col, seg] = p_ragged.to(torch.float32)
        out.clean_proba = result
    _logger.debug(
        "clean_probability: %d groups fitted, %d converged, at most %d EM rounds",
        int(fitted.sum()), int(converged.sum()), int(n_iter.max()) if n_iter.numel() else 0,
    )
    return out


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class LabelGMM:
    """The ``2K`` two-component Gaussian mixtures of Eq. 7 of BalanceMix, fitted at once.

    One univariate two-component GMM per class ``k`` and polarity ``l`` is fitted by EM to the
    losses of the labels with ``labels[:, k] == l`` (Eq. 6); :meth:`predict_clean_proba` returns
    the posterior of the small-mean ("clean") component (Eq. 8). The EM follows
    ``sklearn.mixture.GaussianMixture(n_components=2, covariance_type="full")`` (see the
    module docstring); the defaults are the small-loss practice of DivideMix
    (min-max normalised losses, ``max_iter=10``, ``tol=1e-2``, ``reg_covar=5e-4``).

    Args:
        normalize: ``"minmax"`` maps each group's losses to [0, 1] before fitting (default,
            as in DivideMix); ``"none"`` fits the raw losses.
        max_iter: maximum EM rounds per group (``0``: posteriors from the initialisation).
        tol: a group has converged when its lower bound (mean log-likelihood per label)
            changes by less than ``tol``; its parameters are then frozen.
        reg_covar: added to every variance.
        init: initial hard assignment, ``"kmeans"`` (1-D two-means from each group's
            minimum / maximum, like scikit-learn's default k-means up to its random start) or
            ``"quantile"`` (split at each group's lower median).
        init_max_iter: cap on the Lloyd iterations of ``init="kmeans"``.
        min_group_size: groups with fewer labels are not fitted (default 8: with fewer points
            the two components' means and variances are mostly noise; scikit-learn needs 2).
        fallback: clean probability given to the labels of groups that are not fitted (too
            small, or all losses equal). Default 1.0 treats them as clean, i.e. trains on them
            as given: a constant-loss group carries no evidence of noise, and in a tiny group
            (typically the positives of a rare class) marking labels noisy would send the
            scarcest labels to re-labelling or down-weighting, which is what BalanceMix tries
            to avoid for minority classes.
        device: where to compute; default the device of ``losses`` (not saved in
            :meth:`state_dict`).

    Groups that are not fitted (non-empty ones are named in a ``logging`` warning) keep
    finite placeholder parameters and ``fallback_ = True``; empty groups are flagged too,
    silently. :meth:`predict_clean_proba` on new losses evaluates the fitted Gaussians as they
    are, tails included (as scikit-learn's ``predict_proba`` does): a loss far above a group's
    range goes to whichever component has the wider tail.

    Attributes (after :meth:`fit`; CPU tensors, index ``[l, k]`` = polarity ``l`` of class
    ``k``, last index = component, clean (smaller mean) first):
        means_: ``(2, K, 2)`` float64, in normalised-loss units ``(loss - shift_) / scale_``.
        variances_: ``(2, K, 2)`` float64, same units (``reg_covar`` included).
        weights_: ``(2, K, 2)`` float64 mixing weights.
        shift_, scale_: ``(2, K)`` float64 normalisation (min and range for ``"minmax"``;
            0 and 1 for ``"none"``).
        n_samples_: ``(2, K)`` int64 group sizes.
        lower_bound_: ``(2, K)`` float64 last lower bound (``-inf`` if not fitted).
        n_iter_: ``(2, K)`` int64 EM rounds run.
        converged_: ``(2, K)`` bool.
        fallback_: ``(2, K)`` bool, True for groups given ``fallback`` instead of a fit.
    """

    _FITTED = (
        "means_", "variances_", "weights_", "shift_", "scale_", "n_samples_", "lower_bound_",
        "n_iter_", "converged_", "fallback_",
    )
    _OPTIONS = (
        "normalize", "max_iter", "tol", "reg_covar", "init", "init_max_iter", "min_group_size",
        "fallback",
    )

    def __init__(
        self, *, normalize: str = "minmax", max_iter: int = 10, tol: float = 1e-2,
        reg_covar: float = 5e-4, init: str = "kmeans", init_max_iter: int = 300,
        min_group_size: int = 8, fallback: float = 1.0,
        device: str | torch.device | None = None,
    ) -> None:
        _check_options(normalize, max_iter, tol, reg_covar, init, init_max_iter,
                       min_group_size, fallback)
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = float(tol)
        self.reg_covar = float(reg_covar)
        self.init = init
        self.init_max_iter = init_max_iter
        self.min_group_size = min_group_size
        self.fallback = float(fallback)
        self.device = device

    # ------------------------------------------------------------------ fitting
    def _run(self, losses: Tensor, labels: Tensor, *, predict: bool) -> Tensor | None:
        _check_inputs(losses, labels)
        losses, labels = losses.detach(), labels.detach()
        device = torch.device(self.device) if self.device is not None else losses.device
        res = _fit(
            losses, labels, normalize=self.normalize, max_iter=self.max_iter, tol=self.tol,
            reg_covar=self.reg_covar, init=self.init, init_max_iter=self.init_max_iter,
            min_group_size=self.min_group_size, fallback=self.fallback, device=device,
            predict=predict,
        )
        k = losses.shape[1]
        # Internal group g = side * K + k (side 0: majority polarity). Public [l, k].
        maj = res.majority.long()
        cls = torch.arange(k, device=maj.device)
        index = torch.stack([(maj != 0).long() * k + cls, (maj != 1).long() * k + cls])
        index = index.cpu()

        def pub(t: Tensor) -> Tensor:
            return t.cpu()[index]

        offset, scale = pub(res.offset), pub(res.scale)
        if self.normalize == "minmax":
            shift = offset
            means = pub(res.means)
        else:
            shift = torch.zeros_like(offset)
            means = pub(res.means) + offset.unsqueeze(-1)
        fallback = pub(res.fallback)
        self.means_ = means
        self.variances_ = pub(res.variances)
        self.weights_ = pub(res.weights)
        self.shift_ = shift
        self.scale_ = scale
        self.n_samples_ = pub(res.n).round().long()
        self.lower_bound_ = pub(res.lower_bound)
        self.n_iter_ = pub(res.n_iter)
        self.converged_ = pub(res.converged)
        self.fallback_ = fallback
        if res.clean_proba is None:
            return None
        return res.clean_proba.to(losses.device)

    def fit(self, losses: Tensor, labels: Tensor) -> LabelGMM:
        """Fit the ``2K`` mixtures (Eq. 6-7 of BalanceMix).

        Args:
            losses: ``(N, K)`` finite per-label losses (e.g. BCE).
            labels: ``(N, K)`` given labels in {0, 1} (float, int or bool).

        Returns:
            ``self``.
        """
        self._run(losses, labels, predict=False)
        return self

    def fit_predict_clean_proba(self, losses: Tensor, labels: Tensor) -> Tensor:
        """:meth:`fit` then :meth:`predict_clean_proba` on the same data, in one pass.

        Returns:
            ``(N, K)`` float32 clean probabilities on ``losses``' device.
        """
        out = self._run(losses, labels, predict=True)
        assert out is not None
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise RuntimeError("this LabelGMM is not fitted yet; call fit() first")

    def predict_clean_proba(self, losses: Tensor, labels: Tensor) -> Tensor:
        """Posterior of the clean (small-mean) component, Eq. 8 of BalanceMix.

        Each loss is normalised with its group's fitted ``shift_`` / ``scale_`` and evaluated
        under its group's fitted mixture; labels of ``fallback_`` groups get ``fallback``.

        Args:
            losses: ``(N, K)`` finite per-label losses.
            labels: ``(N, K)`` given labels in {0, 1}.

        Returns:
            ``(N, K)`` float32 probabilities on ``losses``' device.
        """
        self._check_fitted()
        _check_inputs(losses, labels)
        k = self.means_.shape[1]
        if losses.shape[1] != k:
            raise ValueError(
                f"losses must have {k} columns (the fitted classes), got {losses.shape[1]}"
            )
        device = torch.device(self.device) if self.device is not None else losses.device
        x = losses.detach().to(device=device, dtype=torch.float64)
        pos = labels.to(device=device).bool()
        w = self.weights_.to(device)
        mu = self.means_.to(device)
        var = self.variances_.to(device)
        a, b, c = _coefficients(w.reshape(-1, 2), mu.reshape(-1, 2), var.reshape(-1, 2))
        a, b, c = (t.view(2, k) for t in (a, b, c))
        shift, scale = self.shift_.to(device), self.scale_.to(device)

        def pick(t: Tensor) -> Tensor:
            return torch.where(pos, t[1], t[0])

        z = (x - pick(shift)) / pick(scale)
        p = torch.sigmoid(pick(a) + z * (pick(b) + z * pick(c)))
        p = torch.where(pick(self.fallback_.to(device)), torch.full_like(p, self.fallback), p)
        return p.to(dtype=torch.float32, device=losses.device)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Options and fitted attributes (CPU tensors)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._OPTIONS}
        if hasattr(self, "means_"):
            for name in self._FITTED:
                state[name] = getattr(self, name).clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore options and (if present) fitted attributes from :meth:`state_dict`."""
        options = {name: state.get(name, getattr(self, name)) for name in self._OPTIONS}
        _check_options(**options)
        for name, value in options.items():
            setattr(self, name, value)
        present = [name for name in self._FITTED if name in state]
        if present and len(present) != len(self._FITTED):
            missing = sorted(set(self._FITTED) - set(present))
            raise ValueError(f"state is missing fitted attributes {missing}")
        if present:
            k = state["means_"].shape[1]
            for name in self._FITTED:
                value = state[name]
                if not isinstance(value, Tensor) or tuple(value.shape[:2]) != (2, k):
                    raise ValueError(f"state[{name!r}] must be a tensor of shape (2, {k}, ...)")
                setattr(self, name, value.detach().cpu().clone())


def clean_probability(
    losses: Tensor, labels: Tensor, *, normalize: str = "minmax", max_iter: int = 10,
    tol: float = 1e-2, reg_covar: float = 5e-4, init: str = "kmeans", init_max_iter: int = 300,
    min_group_size: int = 8, fallback: float = 1.0, device: str | torch.device | None = None,
) -> Tensor:
    """Clean-label probability of every label, Eq. 6-8 of BalanceMix.

    Fits one two-component 1-D Gaussian mixture per class and polarity to the losses of the
    labels of that polarity (Eq. 6-7), all ``2K`` at once, and returns for each label the
    posterior of its group's small-mean component (Eq. 8); ``> 0.5`` marks the label clean.
    See :class:`LabelGMM` for the options; groups with fewer than ``min_group_size`` labels or
    a constant loss get ``fallback`` (1.0: treated as clean) and a ``logging`` warning naming
    them.

    Example:
        >>> losses = torch.rand(100, 3) ** 4
        >>> labels = (torch.rand(100, 3) < 0.3).float()
        >>> p = clean_probability(losses, labels)  # (100, 3), p > 0.5: clean

    Args:
        losses: ``(N, K)`` finite per-label losses (e.g. BCE of the given labels).
        labels: ``(N, K)`` given labels in {0, 1} (float, int or bool).

    Returns:
        ``(N, K)`` float32 probabilities in [0, 1] on ``losses``' device.

    Raises:
        ValueError: if an input or option is invalid.
    """
    gmm = LabelGMM(
        normalize=normalize, max_iter=max_iter, tol=tol, reg_covar=reg_covar, init=init,
        init_max_iter=init_max_iter, min_group_size=min_group_size, fallback=fallback,
        device=device,
    )
    return gmm.fit_predict_clean_proba(losses, labels)
