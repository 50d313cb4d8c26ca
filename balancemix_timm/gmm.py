"""Clean-label probabilities from per-(class, polarity) Gaussian mixtures (Eq. 6-8 of BalanceMix).

BalanceMix splits the per-label BCE losses of the whole training set into ``2K`` sets, one per
class ``k`` and polarity ``l`` (the given label ``y~_k = l``, Eq. 6), fits a two-component
univariate Gaussian mixture to each set with EM (Eq. 7) and takes the posterior of the
small-mean component as the probability that a label is clean (Eq. 8); ``p_G > 0.5`` marks a
label as clean.

This module fits all ``2K`` mixtures at once with dense tensor operations (no Python loop over
groups) and follows :class:`sklearn.mixture.GaussianMixture` (``n_components=2``, one feature,
``covariance_type="full"``) step for step, so that from the same initial responsibilities both
give the same posteriors up to rounding:

* initial responsibilities from a hard assignment (``init="kmeans"``: deterministic 1-D
  two-means, Lloyd's algorithm started from each group's minimum and maximum and run until the
  assignment stops changing; ``init="quantile"``: a split at each group's median), turned into
  parameters by one M-step with weights ``n_c / n``;
* then up to ``max_iter`` rounds of E-step, M-step (``nk = sum resp + 10 eps``, weights
  ``nk / sum nk``, means, variances ``+ reg_covar``) and lower bound (mean log-likelihood of the
  group's losses under the parameters of that E-step); a group stops, its parameters frozen, as
  soon as its lower bound changes by less than ``tol``;
* a final E-step with the final parameters gives the posteriors.

Precision (``dtype``): the per-group quantities (parameters, lower bounds, the M-step) are
always float64. The per-label arithmetic runs in ``float32`` (the default for ``tol >= 1e-4``;
about twice as fast, half the memory) or ``float64`` (scikit-learn to rounding: parameters
within 1e-9). In float32, each label's value is rounded once to float32 and the sums over a
group are taken over chunks of at most 4096 labels in float32, then added in float64: posteriors
stay within about 1e-4 of float64's and the lower bound within about 1e-6 per label, which is
why ``dtype="auto"`` uses float64 for ``tol < 1e-4``.

Implementation notes (the layout is what makes it fast):

* For each class the more frequent polarity (the "dense" group) is stored as a row of length
  ``N`` in which the other polarity's entries are replaced by a filler ``0.0``; the rarer
  polarity of each class (the positives, for a typical multi-label data set) is packed. Both
  are cut into chunks of ``CH`` entries (a power of two up to 4096), each chunk belonging to one
  group, and padded with filler. The filler adds nothing to the sums of ``x`` and ``x**2``; its
  share of the sums of responsibilities and log-likelihoods is one known value per group,
  subtracted analytically. Every label is thus processed once per EM round, with per-group
  coefficients broadcast along chunks, slab by slab through a small work space. Chunks of
  converged groups are skipped once they are a quarter of those still in EM.
* Inside the fit each group's losses are shifted by the group minimum (and, with
  ``normalize="minmax"``, divided by its range). EM is translation-equivariant, so the shift
  changes nothing but keeps the filler at the bottom of the data and the one-pass variance
  ``E[x^2] - mean^2`` well conditioned.
* The lower bound needs ``sum softplus(d)`` of the log-odds ``d``; it is taken as
  ``sum relu(d) - sum log max(r, 1 - r)`` with ``r = sigmoid(d)``: two sums of non-negative
  terms, and no logarithm of a quantity that rounds to 0.
* Plain Lloyd iterations need up to ~60 passes over the data on realistic losses; see
  :func:`_two_means` for how a histogram of counts bounds the trajectory so that two passes and
  cheap iterations on a narrow window of losses reach exactly the same assignment.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from balancemix_timm._checks import (
    binary_mask,
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
_INIT_BINS = 4096  # histogram bins that bound the k-means trajectory (see _two_means)
# Relative widening of the exact k-means window (see _two_means), by working dtype: above the
# rounding of the per-group sums (float32 sums of at most _CHUNK_MAX terms per chunk).
_WINDOW_MARGIN = {torch.float64: 1e-9, torch.float32: 1e-4}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DTYPE_OPTIONS = ("auto", *_DTYPES)
# With dtype="auto", tolerances below this use float64: float32 sums resolve the mean
# log-likelihood of a group to about 1e-6, too coarse to decide convergence at such a tol.
_FLOAT32_MIN_TOL = 1e-4
_CHUNK_MIN, _CHUNK_MAX = 64, 4096  # chunk length bounds (see _chunk_size)
_COMPACT_SHARE = 0.25  # EM drops converged groups' chunks once they are this share of them
# Entries per slab of work space (see _Chunks): on CPU a few MB that stay in cache; on a GPU
# one slab (every pass one kernel launch per operation over all the data).
_SLAB_ENTRIES = {"cpu": 1 << 20, "other": 1 << 62}
_EDGE_RTOL = 8.0 * torch.finfo(torch.float32).eps  # rounding of a bin's edges (see histogram)
# The k-means bound sequences (see _two_means): at most so many plain steps, checked for
# convergence every _CHECK_EVERY, then a search of their limits, so many bins at a time. On a
# CPU a step costs little and the search grows with the bins; on a GPU both cost the same
# few dozen kernel launches, so the search starts at once and takes wide strides.
_BOUND_SEARCH = {"cpu": (24, 64), "other": (0, 512)}
_CHECK_EVERY = 4
# Sums of logarithms of entries in [1/2, 1] are taken as logarithms of products of up to this
# many entries (>= 2**-64, far above float32's smallest normal number, 2**-126). Chunk
# lengths are powers of two in [_LOG_GROUP, _LOG_GROUP**2].
_LOG_GROUP = 64

_Stats = tuple[Tensor, Tensor, Tensor]


# --------------------------------------------------------------------------------------------
# Storage: every group as whole chunks of ``CH`` values. Chunk m belongs to group
# ``group[m]``; a group's chunks are contiguous and groups come in order (dense groups 0..K-1:
# the majority polarity of each class, with the other polarity's entries and the padding as
# filler; ragged groups K..2K-1: the minority polarity, packed, padded with filler). Filler
# entries hold x = 0. Values are shifted (and scaled) so that each group starts at 0.
# --------------------------------------------------------------------------------------------


def _chunk_size(n_samples: int) -> int:
    """Chunk length: a power of two near ``n_samples / 8`` within ``[_CHUNK_MIN, _CHUNK_MAX]``."""
    target = max(1, -(-n_samples // 8))
    return int(min(_CHUNK_MAX, max(_CHUNK_MIN, 1 << (target - 1).bit_length())))


def _round_down(t: Tensor, dtype: torch.dtype) -> Tensor:
    """The largest ``dtype`` value ``<= t`` (float64 ``t``), as float64: for a ``dtype`` value
    ``x``, ``x > t`` exactly when ``x > _round_down(t)``."""
    if dtype == torch.float64:
        return t
    r = t.to(dtype)
    r = torch.where(r.to(torch.float64) > t, torch.nextafter(r, torch.full_like(r, -math.inf)), r)
    return r.to(torch.float64)


class _Chunks:
    """The ``G = 2K`` groups' values in one ``(M, CH)`` tensor ``x``, one group per chunk (row).

    Every per-label pass is a dense elementwise operation on ``(S, CH)`` slabs of chunks with
    per-chunk coefficients broadcast along the chunk (a small work space, reused slab after
    slab), and every per-group sum is a row sum (of products) per chunk, in the working dtype
    over at most ``CH`` terms, followed by a float64 sum over each group's chunks. Squares are
    formed slab by slab, never stored: the values stay one tensor of about ``4 * N * K`` bytes
    in float32, which the C allocator can recycle from one fit to the next (glibc maps every
    allocation above 32 MB afresh: on the 2-core test machine, filling a fresh 56 MB tensor
    took 15.8 ms, a recycled 27 MB one 0.24 ms).

    Args:
        x: ``(M, CH)`` values in the working dtype.
        group: ``(M,)`` int64 group of each chunk, non-decreasing.
        n_fill: ``(G,)`` float64 number of filler entries of each group.
        n: ``(G,)`` float64 number of real entries of each group.
    """

    def __init__(self, x: Tensor, group: Tensor, n_fill: Tensor, n: Tensor) -> None:
        self.x = x
        self.dtype = x.dtype
        self.group = group
        self.groups = n_fill.numel()
        self.n_fill = n_fill
        self.n = n
        chunks, size = x.shape
        self.chunk = size
        slab = _SLAB_ENTRIES["cpu" if x.device.type == "cpu" else "other"]
        self.slab = max(1, min(chunks, slab // size))  # chunks per slab
        rows = min(chunks, self.slab)
        device = x.device
        # Work space for one slab: three rows (in EM: r, then max(r, 1 - r), relu d); and room
        # for a slab of gathered chunks once EM runs on a subset of the groups.
        self._work = torch.empty((3, rows, size), dtype=self.dtype, device=device)
        self._gathered: Tensor | None = None
        self._em_chunks: Tensor | None = None  # chunk indices still in EM (None: all)
        self._one = torch.ones((), dtype=self.dtype, device=device)
        self._inv_width = torch.zeros(self.groups, dtype=self.dtype, device=device)

    def _slabs(self, chunks: int) -> list[tuple[int, int]]:
        return [(s, min(chunks, s + self.slab)) for s in range(0, chunks, self.slab)]

    # ------------------------------------------------------------------ sums
    def _reduce(self, s: Tensor, group: Tensor) -> Tensor:
        """Per-group float64 sums of per-chunk sums ``s`` ``(M, ...)`` -> ``(G, ...)``."""
        out = torch.zeros((self.groups,) + s.shape[1:], dtype=torch.float64, device=s.device)
        return out.index_add_(0, group, s.to(torch.float64))

    @staticmethod
    def _moments(w: Tensor, x: Tensor, scratch: Tensor, out: Tensor) -> None:
        """Per-chunk ``sum w``, ``sum w x`` and ``sum w x^2`` of ``(S, CH)`` slabs into ``out``
        ``(S, 3)``. ``scratch`` ``(S, CH)`` (not ``w``) is overwritten. (Products and row sums:
        a batched ``bmm`` dot product is several times slower, and a row sum does not depend
        on how many rows a slab holds.)"""
        out[:, 0] = w.sum(1)
        wx = torch.mul(w, x, out=scratch)
        out[:, 1] = wx.sum(1)
        out[:, 2] = wx.mul_(x).sum(1)

    def moments(self) -> _Stats:
        """Count, sum and sum of squares of the real entries of each group (filler x = 0)."""
        chunks = self.x.shape[0]
        out = torch.empty((chunks, 2), dtype=self.dtype, device=self.x.device)
        out[:, 0] = self.x.sum(1)
        for start, stop in self._slabs(chunks):
            x = self.x[start:stop]
            out[start:stop, 1] = torch.mul(x, x, out=self._work[0, : stop - start]).sum(1)
        s = self._reduce(out, self.group)
        return self.n, s[:, 0], s[:, 1]

    def _per_chunk(self, t: Tensor, group: Tensor) -> Tensor:
        """``(S, 1)`` working-dtype copy of the per-group ``t`` for each chunk of ``group``."""
        return t.index_select(0, group).to(self.dtype).unsqueeze(1)

    def _above(self, thr: Tensor, lo: Tensor | None = None) -> tuple[_Stats, Tensor, Tensor]:
        """Count, sum and sum of squares per group of the entries ``> thr``; with ``lo``, also
        the values in ``(lo, thr]`` (float64) and their groups. Thresholds are ``>= 0``, so the
        filler (x = 0) is never counted."""
        t = _round_down(thr, self.dtype).to(self.dtype)
        t_lo = None if lo is None else _round_down(lo, self.dtype).to(self.dtype)
        chunks = self.x.shape[0]
        out = torch.empty((chunks, 3), dtype=self.dtype, device=self.x.device)
        values, groups = [], []
        for start, stop in self._slabs(chunks):
            g, x = self.group[start:stop], self.x[start:stop]
            w = self._work[:, : stop - start]
            # (Comparisons written as 0.0 / 1.0 straight into the work space are several
            # times faster than into a bool tensor.)
            above = torch.gt(x, t.index_select(0, g).unsqueeze(1), out=w[0])
            self._moments(above, x, w[1], out[start:stop])
            if t_lo is not None:
                inside = torch.gt(x, t_lo.index_select(0, g).unsqueeze(1), out=w[1])
                inside -= above  # lo <= thr: {x > thr} is a subset of {x > lo}
                flat = torch.nonzero(inside.view(-1)).view(-1)
                values.append(x.reshape(-1)[flat].to(torch.float64))
                groups.append(g[torch.div(flat, self.chunk, rounding_mode="floor")])
        s = self._reduce(out, self.group)
        f64 = dict(dtype=torch.float64, device=self.x.device)
        v = torch.cat(values) if values else torch.zeros(0, **f64)
        seg = torch.cat(groups) if groups else torch.zeros(0, dtype=torch.int64, device=v.device)
        return (s[:, 0], s[:, 1], s[:, 2]), v, seg

    def split(self, thr: Tensor) -> _Stats:
        """Count, sum and sum of squares of the entries ``> thr`` (``thr >= 0``) per group."""
        return self._above(thr)[0]

    def window(self, lo: Tensor, hi: Tensor) -> tuple[_Stats, _SortedWindow]:
        """Stats of the entries ``> hi`` and the entries in ``(lo, hi]``, sorted per group
        (``0 <= lo <= hi``)."""
        above, v, seg = self._above(hi, lo)
        return above, _SortedWindow(v, seg, self.groups)

    # ------------------------------------------------------------------ k-means helpers
    def bin_index(self, t: Tensor) -> Tensor:
        """Histogram bin of per-group thresholds ``t`` (``(R * G, ...)`` float64: rows of the
        groups in order, repeated ``R`` times along the first dimension), computed with the
        same arithmetic as the data's bins, so that ``bin(x) < bin(t)`` implies ``x <= t`` and
        ``bin(x) > bin(t)`` implies ``x > t`` (bins are monotone in the value)."""
        r = _round_down(t, self.dtype).to(self.dtype)
        inv = self._inv_width.repeat(t.shape[0] // self.groups)
        inv = inv.view((-1,) + (1,) * (t.dim() - 1))
        return torch.mul(r, inv).floor_().clamp_(0, _INIT_BINS - 1).to(torch.int64)

    def histogram(self, top: Tensor) -> Tensor:
        """Per-group counts over ``_INIT_BINS`` bins of ``[0, top]``, ``(G, BINS)`` float64.

        An entry's bin is ``floor(x * (BINS / top))``, the product rounded once in the working
        dtype (see :meth:`bin_index`), so the values in bin ``j`` lie within
        ``[j, j + 1] * top / BINS`` widened by ``_EDGE_RTOL``.
        """
        inv = torch.where(top > 0, _INIT_BINS / top, torch.zeros_like(top))
        self._inv_width = inv.to(self.dtype)
        bins = self.groups * _INIT_BINS
        counts = torch.zeros(bins, dtype=torch.int64, device=self.x.device)
        for start, stop in self._slabs(self.x.shape[0]):
            g = self.group[start:stop]
            b = torch.mul(self.x[start:stop], self._inv_width.index_select(0, g).unsqueeze(1),
                          out=self._work[0, : stop - start])
            idx = b.to(torch.int32)  # b >= 0: truncation is floor (G * BINS < 2**31)
            # Count into the bins of this slab's groups only (chunks are in group order).
            first, last = int(g[0]), int(g[-1])
            idx.clamp_(max=_INIT_BINS - 1).add_(((g - first) * _INIT_BINS).to(torch.int32)
                                                .unsqueeze(1))
            span = (last - first + 1) * _INIT_BINS
            counts[first * _INIT_BINS: first * _INIT_BINS + span] += torch.bincount(
                idx.view(-1), minlength=span)
        counts = counts.view(self.groups, _INIT_BINS).to(torch.float64)
        counts[:, 0] -= self.n_fill  # the filler sits at x = 0, in bin 0
        return counts

    # ------------------------------------------------------------------ EM
    def _diff(self, a: Tensor, b: Tensor, c: Tensor, x: Tensor, group: Tensor,
              scratch: Tensor, out: Tensor) -> Tensor:
        """``d = a + (b + c x) x`` per entry of ``x`` ``(S, CH)``, into ``out`` (``scratch``
        of the same shape receives ``b + c x``)."""
        inner = torch.addcmul(self._per_chunk(b, group), x, self._per_chunk(c, group),
                              out=scratch)
        return torch.addcmul(self._per_chunk(a, group), inner, x, out=out)

    @staticmethod
    def _sum_log(m: Tensor, out: Tensor) -> None:
        """Per-chunk ``sum log m`` of ``m`` ``(S, CH)`` with entries in ``[1/2, 1]``, into
        ``out`` ``(S,)``: the logarithms of products of ``CH / _LOG_GROUP <= _LOG_GROUP``
        entries each (``>= 2**-64``, far from underflow; a product of ``n`` factors is off by
        at most ``n - 1`` roundings, the same order as the logarithms it replaces), of which
        there are only ``_LOG_GROUP`` per chunk: a logarithm costs about ten products."""
        rows, size = m.shape
        prod = m.view(rows, size // _LOG_GROUP, _LOG_GROUP).prod(1)
        out.copy_(prod.log_().sum(1))

    def em_stats(self, a: Tensor, b: Tensor, c: Tensor, active: Tensor) -> tuple[Tensor, ...]:
        """Per group: sums of ``r``, ``r x``, ``r x^2`` and ``softplus(d)`` over the real
        entries, where ``d = a + b x + c x^2`` and ``r = sigmoid(d)``; only ``active`` groups'
        values are meaningful. Once the others hold ``_COMPACT_SHARE`` of the chunks, only the
        active groups' chunks are visited (gathered slab by slab into a reused buffer)."""
        chunks = self.x.shape[0]
        if self._em_chunks is None:
            keep = active.index_select(0, self.group)
            if int(keep.sum()) <= (1.0 - _COMPACT_SHARE) * chunks:
                self._em_chunks = torch.nonzero(keep).view(-1)
        else:
            keep = active.index_select(0, self.group.index_select(0, self._em_chunks))
            if not bool(keep.all()):
                self._em_chunks = self._em_chunks[keep]
        sel = self._em_chunks
        n_chunks = chunks if sel is None else sel.numel()
        group = self.group if sel is None else self.group.index_select(0, sel)
        if sel is not None and self._gathered is None:
            self._gathered = torch.empty_like(self._work[0])
        # Per chunk: sums of r, relu(d), r x, r x^2, log max(r, 1 - r).
        out = torch.empty((n_chunks, 5), dtype=self.dtype, device=self.x.device)
        for start, stop in self._slabs(n_chunks):
            w = self._work[:, : stop - start]
            if sel is None:
                x = self.x[start:stop]
            else:
                assert self._gathered is not None
                x = self._gathered[: stop - start]
                torch.index_select(self.x, 0, sel[start:stop], out=x)
            d = self._diff(a, b, c, x, group[start:stop], w[2], w[0])
            torch.clamp(d, min=0.0, out=w[1])  # relu(d)
            r = torch.sigmoid_(d)  # row 0 now holds the responsibilities r
            # log sigmoid(|d|) = log max(r, 1 - r), in [log 1/2, 0] (for r below float
            # rounding, 1 - r rounds to 1: an error of at most r, far below the sums' rounding)
            torch.sub(self._one, r, out=w[2])
            self._sum_log(torch.maximum(w[2], r, out=w[2]), out[start:stop, 4])
            torch.mul(r, x, out=w[2])
            out[start:stop, :3] = w.sum(2).t()  # r, relu(d), r x: one reduction
            out[start:stop, 3] = w[2].mul_(x).sum(1)
        s = self._reduce(out, group)
        # softplus(d) = relu(d) - log sigmoid(|d|): two sums of non-negative terms (no
        # cancellation in the working dtype). Filler entries have d = a.
        fill = self.n_fill
        s0 = (s[:, 0] - fill * torch.sigmoid(a)).clamp_(min=0.0)
        ssp = s[:, 1] - s[:, 4] - fill * torch.nn.functional.softplus(a)
        return s0, s[:, 2], s[:, 3], ssp

    def posterior(self, a: Tensor, b: Tensor, c: Tensor, first: int = 0) -> Tensor:
        """``sigmoid(a + b x + c x^2)`` for every entry of the chunks from ``first`` on,
        ``(M - first, CH)`` (filler meaningless), written over ``x`` slab by slab (the fit is
        over)."""
        p = self.x[first:]
        group = self.group[first:]
        for start, stop in self._slabs(p.shape[0]):
            w = self._work[:, : stop - start]
            d = self._diff(a, b, c, p[start:stop], group[start:stop], w[1], w[0])
            torch.sigmoid(d, out=p[start:stop])
        return p


class _SortedWindow:
    """The losses of each group that lie in its Lloyd window, ordered by (group, value), with
    prefix sums, so that the stats of ``{x > t}`` for all groups cost two ``searchsorted`` of
    ``G`` queries. Comparisons are exact: each value ``v`` gets its position ``rank(v)`` in the
    sorted window values (ties in consecutive positions), and ``v <= t`` exactly when
    ``rank(v) < q(t)`` with ``q(t)`` = how many are ``<= t``; the integer keys
    ``group * (P + 1) + rank`` are sorted.

    Args:
        v: ``(P,)`` float64 values; seg: ``(P,)`` int64 group of each; groups: ``G``.
    """

    def __init__(self, v: Tensor, seg: Tensor, groups: int) -> None:
        self.values, by_value = torch.sort(v)
        self.stride = v.numel() + 1
        # Each value's position in the sorted order. Equal values get consecutive positions,
        # so all of them fall on the same side of any q(t) (a cheap stand-in for rank(v)).
        rank = torch.empty_like(by_value).scatter_(
            0, by_value, torch.arange(v.numel(), device=v.device))
        key, order = torch.sort(seg * self.stride + rank)
        self.keys = key
        v = v.index_select(0, order)
        zero = torch.zeros(1, dtype=torch.float64, device=v.device)
        self.s1 = torch.cat([zero, v.cumsum(0)])  # s1[j]: sum of the first j in key order
        self.s2 = torch.cat([zero, (v * v).cumsum(0)])
        counts = torch.bincount(seg, minlength=groups)
        self.end = torch.cumsum(counts, 0)  # (G,) one past each group's last position
        self.groups = torch.arange(groups, device=v.device)

    def split(self, thr: Tensor) -> _Stats:
        q = torch.searchsorted(self.values, thr.contiguous(), right=True)
        pos = torch.searchsorted(self.keys, self.groups * self.stride + q, right=False)
        return (
            (self.end - pos).to(torch.float64),
            self.s1[self.end] - self.s1[pos],
            self.s2[self.end] - self.s2[pos],
        )


# --------------------------------------------------------------------------------------------
# Initialisation: batched 1-D two-means
# --------------------------------------------------------------------------------------------


def _midpoint(n: Tensor, sx: Tensor, count_hi: Tensor, sum_hi: Tensor) -> Tensor:
    """Lloyd's next threshold: the midpoint of the means below and above the split."""
    lo = (sx - sum_hi) / (n - count_hi).clamp(min=1.0)
    hi = sum_hi / count_hi.clamp(min=1.0)
    return 0.5 * (lo + hi)


def _two_means(
    groups: _Chunks, n: Tensor, sx: Tensor, top: Tensor, fitted: Tensor, max_iter: int
) -> _Stats:
    """Batched 1-D two-means (Lloyd) from each group's minimum (0) and maximum (``top``).

    Returns count, sum and sum of squares of the high cluster at Lloyd's fixed point, ``(G,)``.

    Lloyd's iteration is ``t_{i+1} = T(t_i)`` with ``T(t) = (mean{x <= t} + mean{x > t}) / 2``
    and ``t_0 = top / 2``; it stops when the set ``{x > t}`` no longer changes. Both
    conditional means are non-decreasing in ``t``, hence so is ``T``: the thresholds move
    monotonically, say upwards, to the first fixed point ``t*`` above ``t_1``, and
    ``T(t) <= t*`` for every ``t <= t*``. For ``t`` in histogram bin ``b``,
    ``T_lo = T(bins >= b high) <= T(t) <= T(bins > b high) = T_hi``; the histogram holds
    counts only, so the sums in these means are bounded by the bins' edges (which loosens each
    bound by at most one bin width, keeping the inequalities). So the sequence
    ``l <- max(T_lo(l), t_1)`` from ``t_1`` rises to some ``l* <= t*`` with ``T(l*) >= l*``,
    and ``u <- T_hi(u)`` from ``t_1`` rises to some ``u* >= t*``: exact Lloyd resumed from
    ``l*`` rises monotonically to the same ``t*`` as plain Lloyd, never leaving
    ``[l*, u*]`` (symmetrically downwards). ``t_1`` itself is only needed as a floor (and a
    start): its bounds ``T_lo(t_0) <= t_1 <= T_hi(t_0)`` serve as well whenever they tell
    the direction (see the code). The bound sequences cost no data pass, and the
    exact steps only need the few losses inside ``(l*, u*]`` (widened by
    ``_WINDOW_MARGIN * top`` against rounding) plus the totals above ``u*`` (one pass). Should
    rounding ever push a threshold out of the window anyway, the remaining iterations run on
    the full data.
    """
    t0 = 0.5 * top

    # Rigorous bounds of the Lloyd map T on each histogram bin, from counts and bin edges.
    # Rows 0..G-1 follow the lower sequence (l), rows G..2G-1 the upper one (u).
    counts = groups.histogram(top)
    n_groups = top.numel()
    bins = torch.arange(_INIT_BINS, dtype=torch.float64, device=top.device)
    c_le = counts.cumsum(1)  # entries in bins <= j
    j_le = (counts * bins).cumsum(1)  # sum of (bin index * count) over bins <= j
    two = lambda t: torch.cat([t, t])  # noqa: E731
    flat = [t.view(-1) for t in (counts, c_le, j_le)]
    row = two(torch.arange(n_groups, device=top.device) * _INIT_BINS)
    c_tot, j_tot, top2 = two(c_le[:, -1]), two(j_le[:, -1]), two(top)
    is_u = torch.arange(2 * n_groups, device=top.device) >= n_groups
    # Bin j holds values in [j * w_lo, (j + 1) * w_hi] (edges widened by their rounding).
    width = torch.where(is_u, top2 * (1.0 + _EDGE_RTOL), top2 * (1.0 - _EDGE_RTOL)) / _INIT_BINS
    zero = torch.zeros_like(top2)

    def mean(s: Tensor, c: Tensor, empty: Tensor) -> Tensor:
        return torch.where(c > 0, s / c.clamp(min=1.0), empty)

    col = lambda t: t.unsqueeze(1)  # noqa: E731  (per-row constants against (2G, W) bins)

    def bounds_at(b: Tensor) -> Tensor:
        """Bounds of T for t in bins ``b`` ``(2G, W)``. For t in bin b, {x <= t} lies between
        bins < b and bins <= b: counting the straddled bin high (low) can only lower (raise)
        both means, and so does putting each value at its bin's lower (upper) edge. Rows < G:
        lower bounds of T(t); the others: upper bounds."""
        idx = col(row) + b
        c_b, cle, jle = (f.index_select(0, idx.view(-1)).view(idx.shape) for f in flat)
        jc_b = b.to(torch.float64) * c_b
        u, c_all, j_all, w = col(is_u), col(c_tot), col(j_tot), col(width)
        c_low = torch.where(u, cle, cle - c_b)  # bins <= b (u), bins < b (l)
        s_low = torch.where(u, jle + cle, jle - jc_b) * w
        s_high = torch.where(u, j_all - jle + c_all - cle, j_all - jle + jc_b) * w
        return 0.5 * (mean(s_low, c_low, col(zero)) + mean(s_high, c_all - c_low, col(top2)))

    # The first step t1 = T(t0) is bounded like any other. When the bounds tell its direction
    # (up: T_lo(t0) > t0), they serve in place of t1 below: Lloyd has no fixed point in
    # [t0, t1) (there T(t) >= T(t0) = t1 > t), so a floor anywhere in [t0, t1] keeps the
    # lower sequence below t* and Lloyd from its limit still ends at t*; the upper sequence
    # may start anywhere above t1 (symmetrically downwards). Only if some group's direction
    # is unclear does a pass over the data compute t1 exactly.
    t1_rows = bounds_at(col(groups.bin_index(two(t0)))).squeeze(1)
    t1_lo, t1_hi = t1_rows[:n_groups], t1_rows[n_groups:]  # a floor and a ceiling of t1
    up, down = fitted & (t1_lo > t0), fitted & (t1_hi < t0)
    if bool((fitted & ~up & ~down).any()):
        count, s1, _ = groups.split(t0)
        t1 = _midpoint(n, sx, count, s1)
        up, down = fitted & (t1 > t0), fitted & (t1 < t0)
        t1_rows = two(t1)
    # Each row follows t <- g(t): its bound, for the lower rows of rising groups floored at
    # t1 (the upper rows of falling groups: capped at t1); rows of groups that do not move
    # stay at t0.
    clamp_rows = col(torch.cat([up, down]))
    step = two(up).long() - two(down).long()  # +1 rising, -1 falling, 0 staying (per row)

    def g_at(b: Tensor) -> Tensor:
        g = bounds_at(b)
        t1_col = col(t1_rows)
        clamped = torch.where(col(is_u), torch.minimum(g, t1_col), torch.maximum(g, t1_col))
        return torch.where(clamp_rows, clamped, g)

    map_steps, search_bins = _BOUND_SEARCH["cpu" if top.device.type == "cpu" else "other"]
    cur = torch.where(step != 0, t1_rows, two(t0))
    moving = step != 0
    # Plain steps first (cheap on a CPU, and the first ones cross many bins); convergence is
    # read back (a device synchronisation on a GPU) every few steps only.
    for i in range(map_steps):
        new = g_at(col(groups.bin_index(cur))).squeeze(1)
        new = torch.where(moving, new, cur)
        if i % _CHECK_EVERY == _CHECK_EVERY - 1 and bool((new == cur).all()):
            moving = torch.zeros_like(moving)
            break
        cur = new
    # Then a search. A rising row's g(t) depends only on bin(t), is monotone, and g(s) >= s
    # at every iterate s, so the sequence rises to g(p) for the first bin p >= bin(s) with
    # bin(g(p)) <= p (every such p bounds the sequence; the limit is one); falling rows
    # symmetrically; a row that has converged stops at its own bin, and at the first or last
    # bin every row stops. That bin is searched for, search_bins bins of every row at a time.
    if bool(moving.any()):
        base = groups.bin_index(cur)
        offsets = torch.arange(search_bins, device=top.device)
        pending = moving
        for _ in range(-(-_INIT_BINS // search_bins) + 1):
            cand = (col(base) + col(step) * offsets).clamp_(0, _INIT_BINS - 1)  # (2G, W)
            g = g_at(cand)
            g_bin = groups.bin_index(g)
            stop = torch.where(col(step > 0), g_bin <= cand, g_bin >= cand)
            found = stop.any(1) & pending
            first = stop.to(torch.int8).argmax(1, keepdim=True)  # the first stopping bin
            cur = torch.where(found, g.gather(1, first).squeeze(1), cur)
            pending = pending & ~found
            if not bool(pending.any()):
                break
            base = base + step * search_bins
    lo, hi = cur[:n_groups], cur[n_groups:]
    thr = torch.where(up, lo, torch.where(down, hi, t0))
    # The bounds come from sums in another order than the exact steps: widen by a margin far
    # above rounding (a wider window only costs a few more losses in it).
    margin = _WINDOW_MARGIN[groups.dtype] * top
    lo, hi = torch.minimum(lo, hi) - margin, torch.maximum(lo, hi) + margin
    lo.clamp_(min=0.0)  # no threshold is below a group's minimum, 0 (filler is never inside)

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


def _check_inputs(losses: Tensor, labels: Tensor, *, values: bool = True) -> None:
    """Types and shapes; with ``values``, also binary labels and finite losses (``_layout``
    checks both on the way, for the fit, without extra passes)."""
    check_tensor(losses, "losses")
    check_tensor(labels, "labels")
    check_ndim(losses, "losses", 2)
    check_ndim(labels, "labels", 2)
    check_same_shape(losses, "losses", labels, "labels")
    if not losses.is_floating_point():
        raise ValueError(f"losses must be a floating-point tensor, got {losses.dtype}")
    if values:
        check_binary(labels, "labels")
        check_finite(losses, "losses")


def _check_options(
    normalize: str, max_iter: int, tol: float, reg_covar: float, init: str, init_max_iter: int,
    min_group_size: int, fallback: float, dtype: str = "auto",
) -> None:
    if dtype not in _DTYPE_OPTIONS:
        raise ValueError(f"dtype must be one of {_DTYPE_OPTIONS}, got {dtype!r}")
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


def _layout(
    losses: Tensor, labels: Tensor, *, normalize: str, dtype: torch.dtype, device: torch.device,
    want_median: bool,
) -> _Layout:
    """Split the labels into the ``2K`` groups and store them as :class:`_Chunks` (see
    :class:`_Layout` for what comes back)."""
    n_samples, k = losses.shape
    f64 = dict(dtype=torch.float64, device=device)
    size = _chunk_size(n_samples)
    per_class = -(-n_samples // size)  # dense chunks per class
    width = per_class * size
    positives = binary_mask(labels.to(device=device), "labels")
    # (K, N) positives, then True where the entry is in the ragged group: always a new tensor
    # (it is changed in place below; a transposed bool (N, 1) input would be a view of it).
    minority = torch.empty((k, n_samples), dtype=torch.bool, device=device).copy_(positives.t())
    n_pos = minority.sum(1, dtype=torch.int32).long()  # (int32 accumulation is much faster)
    majority = n_pos * 2 > n_samples  # (K,) True: the positives are the dense group
    if bool(majority.any()):
        minority[majority] = ~minority[majority]
    flat = torch.nonzero(minority.view(-1)).view(-1)
    seg = torch.div(flat, n_samples, rounding_mode="floor")  # class of each ragged entry
    col = flat - seg * n_samples  # its sample
    del flat
    n_minor = torch.where(majority, n_samples - n_pos, n_pos)  # (K,) int64
    n_group = torch.cat([n_samples - n_minor, n_minor])  # (G,) labels per group
    r_chunks = torch.div(n_minor + size - 1, size, rounding_mode="floor")
    m_dense = k * per_class
    m_total = m_dense + int(r_chunks.sum())

    x = torch.empty((m_total, size), dtype=dtype, device=device)
    x_dense = x[:m_dense].view(k, width)
    x_dense[:, :n_samples].copy_(losses.to(device=device).t())
    in_dense = seg * width + col  # the ragged entries' positions in the dense rows
    dense_flat = x_dense.view(-1)
    v = dense_flat[in_dense]  # the ragged groups' raw values, grouped by class

    # Per-group minimum / maximum (dense groups, then ragged groups). The dense rows' other
    # entries (already copied to v) are overwritten in place (by index: they are few); they
    # become filler below.
    inf = float("inf")
    d_min = torch.full((k,), inf, **f64)
    d_max = torch.full((k,), -inf, **f64)
    real = x_dense[:, :n_samples]
    if n_samples > 0:
        d_min = dense_flat.index_fill_(0, in_dense, inf).view(k, width)[:, :n_samples].amin(1)
        d_max = dense_flat.index_fill_(0, in_dense, -inf).view(k, width)[:, :n_samples].amax(1)
    v64 = v.to(torch.float64)
    r_min = torch.full((k,), inf, **f64).scatter_reduce(0, seg, v64, "amin")
    r_max = torch.full((k,), -inf, **f64).scatter_reduce(0, seg, v64, "amax")
    gmin = torch.cat([d_min.to(torch.float64), r_min])
    gmax = torch.cat([d_max.to(torch.float64), r_max])
    nonempty = n_group > 0
    # NaN propagates through amin / amax, +-inf reaches them: one check covers every loss.
    if not bool((torch.isfinite(gmin) & torch.isfinite(gmax) | ~nonempty).all()) \
            or not bool(torch.isfinite(v64).all()):
        check_finite(losses, "losses")  # raises, with counts
    zeros = torch.zeros_like(gmin)
    span = torch.where(nonempty, gmax - gmin, zeros)
    mag = torch.where(nonempty, torch.maximum(gmin.abs(), gmax.abs()), zeros).clamp(min=1.0)
    constant = nonempty & (span <= _RANGE_RTOL * mag)
    offset = torch.where(nonempty, gmin, zeros)
    scale = torch.ones_like(span)
    if normalize == "minmax":
        scale = torch.where(constant | ~nonempty, scale, span)

    # Shift / scale every group (in float64, rounded once to the working dtype); filler -> 0.
    real.sub_(offset[:k].to(dtype).unsqueeze(1)).div_(scale[:k].to(dtype).unsqueeze(1))
    dense_flat.index_fill_(0, in_dense, 0.0)
    x_dense[:, n_samples:].zero_()
    v = ((v64 - offset[k:].index_select(0, seg)) / scale[k:].index_select(0, seg)).to(dtype)
    del v64
    median = None
    if want_median:
        median = torch.cat([
            real.masked_fill(minority, float("nan")).nanmedian(dim=1).values
            .to(torch.float64) if n_samples else torch.full((k,), math.nan, **f64),
            _ragged_median(v, seg, n_minor),
        ])
    del minority, in_dense

    # The ragged groups: class c's entries fill chunks r_first[c], ...; the rest is filler.
    r_first = torch.cumsum(r_chunks, 0) - r_chunks + m_dense
    e_first = torch.cumsum(n_minor, 0) - n_minor  # first entry of each class in v
    where = r_first.index_select(0, seg) * size + (
        torch.arange(v.numel(), device=device) - e_first.index_select(0, seg))
    x[m_dense:].zero_()
    x.view(-1)[where] = v
    del v

    cls = torch.arange(k, device=device)
    group = torch.cat([cls.repeat_interleave(per_class), k + cls.repeat_interleave(r_chunks)])
    n_minor64 = n_minor.to(torch.float64)
    n = torch.cat([n_samples - n_minor64, n_minor64])
    n_fill = torch.cat([width - (n_samples - n_minor64), r_chunks * size - n_minor64])
    out = _Layout()
    out.chunks = _Chunks(x, group, n_fill, n)
    out.offset, out.scale, out.top = offset, scale, span / scale
    out.constant, out.majority, out.median = constant, majority, median
    out.output = _Output(n_samples, k, m_dense, width, where, seg, col)
    return out


class _Layout:
    """What :func:`_layout` returns. Per group (dense groups, then ragged groups), ``(G,)``
    float64: ``offset`` and ``scale`` of the normalisation, ``top`` the normalised range,
    ``constant`` (bool) and ``median`` (normalised, only for ``init="quantile"``); ``majority``
    ``(K,)`` bool, True where the positives are the dense group; ``output`` for
    :func:`_predict`."""

    chunks: _Chunks
    offset: Tensor
    scale: Tensor
    top: Tensor
    constant: Tensor
    majority: Tensor
    median: Tensor | None
    output: _Output


def _ragged_median(v: Tensor, seg: Tensor, counts: Tensor) -> Tensor:
    """Lower median of each class's packed values (``torch.nanmedian``'s convention); NaN for
    an empty group. ``v`` is grouped by ``seg``; ``counts`` ``(K,)`` entries per class."""
    out = torch.full((counts.numel(),), math.nan, dtype=torch.float64, device=v.device)
    if v.numel() == 0:
        return out
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(seg[order], stable=True)]
    start = torch.cumsum(counts, 0) - counts
    has = counts > 0
    out[has] = v[order][(start + (counts - 1) // 2)[has]].to(torch.float64)
    return out


class _Output:
    """Where the ragged groups' chunk entries go in the ``(N, K)`` output (see
    :func:`_predict`): entry ``where[i]`` of the flattened chunks is label ``(col[i], seg[i])``;
    the dense groups are column ``k`` of the losses for class ``k``."""

    def __init__(self, n_samples: int, k: int, m_dense: int, width: int, where: Tensor,
                 seg: Tensor, col: Tensor) -> None:
        self.n_samples, self.k, self.m_dense, self.width = n_samples, k, m_dense, width
        self.where, self.seg, self.col = where, seg, col


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


def _fit(
    losses: Tensor, labels: Tensor, *, normalize: str, max_iter: int, tol: float,
    reg_covar: float, init: str, init_max_iter: int, min_group_size: int, fallback: float,
    dtype: torch.dtype, device: torch.device, predict: bool,
) -> _Fit:
    k = losses.shape[1]
    inf = float("inf")
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
    if init == "kmeans":
        count, s_hi, s2_hi = _two_means(groups, n, sx, lay.top, fitted, init_max_iter)
    else:
        assert lay.median is not None
        count, s_hi, s2_hi = groups.split(lay.median.nan_to_num(0.0))
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
    out.fallback, out.n, out.majority = fb, n, majority
    out.offset, out.scale = lay.offset, lay.scale
    out.clean_proba = None
    if predict:
        a, b, c = _coefficients(weights, means, variances)
        out.clean_proba = _predict(losses, lay, a, b, c, fb, fallback)
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
        dtype: per-label arithmetic, ``"float32"``, ``"float64"`` or ``"auto"`` (default:
            float32, or float64 when ``tol < 1e-4``); see the module docstring. Per-group
            quantities and the fitted attributes are float64 in every case.
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
        "fallback", "dtype",
    )

    def __init__(
        self, *, normalize: str = "minmax", max_iter: int = 10, tol: float = 1e-2,
        reg_covar: float = 5e-4, init: str = "kmeans", init_max_iter: int = 300,
        min_group_size: int = 8, fallback: float = 1.0, dtype: str = "auto",
        device: str | torch.device | None = None,
    ) -> None:
        _check_options(normalize, max_iter, tol, reg_covar, init, init_max_iter,
                       min_group_size, fallback, dtype)
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = float(tol)
        self.reg_covar = float(reg_covar)
        self.init = init
        self.init_max_iter = init_max_iter
        self.min_group_size = min_group_size
        self.fallback = float(fallback)
        self.dtype = dtype
        self.device = device

    @property
    def working_dtype(self) -> torch.dtype:
        """The dtype of the per-label arithmetic: ``dtype``, or for ``"auto"`` float32 unless
        ``tol < 1e-4`` (then float64)."""
        if self.dtype == "auto":
            return torch.float64 if self.tol < _FLOAT32_MIN_TOL else torch.float32
        return _DTYPES[self.dtype]

    # ------------------------------------------------------------------ fitting
    def _run(self, losses: Tensor, labels: Tensor, *, predict: bool) -> Tensor | None:
        _check_inputs(losses, labels, values=False)
        losses, labels = losses.detach(), labels.detach()
        device = torch.device(self.device) if self.device is not None else losses.device
        res = _fit(
            losses, labels, normalize=self.normalize, max_iter=self.max_iter, tol=self.tol,
            reg_covar=self.reg_covar, init=self.init, init_max_iter=self.init_max_iter,
            min_group_size=self.min_group_size, fallback=self.fallback,
            dtype=self.working_dtype, device=device, predict=predict,
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

    def decision_thresholds(self) -> Tensor:
        """Where each group's clean probability crosses 0.5, in normalised-loss units.

        The log-odds of the two components are a quadratic ``a + b z + c z^2`` of the
        normalised loss ``z = (loss - shift_) / scale_`` (the space the mixture is fitted in;
        ``[0, 1]`` with ``normalize="minmax"``). Its root between the two means is the
        decision threshold (labels below it are clean); without one, the real root nearest to
        the means' midpoint. A raw-loss threshold is ``shift_ + scale_ * z``.

        Returns:
            ``(2, K)`` float64 CPU tensor, index ``[l, k]`` = polarity ``l`` of class ``k``;
            NaN for ``fallback_`` groups and where the posterior never crosses 0.5.
        """
        self._check_fitted()
        k = self.means_.shape[1]
        mu = self.means_.reshape(-1, 2)
        a, b, c = _coefficients(self.weights_.reshape(-1, 2), mu, self.variances_.reshape(-1, 2))
        nan = torch.full_like(a, math.nan)
        lin = c.abs() <= 1e-12 * b.abs().clamp(min=1e-300)  # (near-)equal variances: a + b z = 0
        z_lin = torch.where(lin & (b != 0), -a / b.where(b != 0, torch.ones_like(b)), nan)
        disc = b * b - 4.0 * a * c
        sq = disc.clamp(min=0.0).sqrt()
        c_safe = c.where(c != 0, torch.ones_like(c))
        r1 = torch.where(disc >= 0, (-b - sq) / (2.0 * c_safe), nan)
        r2 = torch.where(disc >= 0, (-b + sq) / (2.0 * c_safe), nan)
        lo, hi = mu.min(1).values, mu.max(1).values
        mid = 0.5 * (lo + hi)

        def score(r: Tensor) -> Tensor:  # 0 inside [lo, hi], else the distance to the midpoint
            inside = (r >= lo) & (r <= hi)
            return torch.where(inside, torch.zeros_like(r), (r - mid).abs()).nan_to_num(math.inf)

        z = torch.where(score(r1) <= score(r2), r1, r2)
        z = torch.where(lin, z_lin, z)
        z = torch.where(self.fallback_.reshape(-1), nan, z)
        return z.view(2, k)

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
    min_group_size: int = 8, fallback: float = 1.0, dtype: str = "auto",
    device: str | torch.device | None = None,
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
        dtype=dtype, device=device,
    )
    return gmm.fit_predict_clean_proba(losses, labels)
