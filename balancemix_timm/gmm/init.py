"""Initial hard assignment of every group: 1-D two-means (Lloyd) or a split at the median.

Component 0 takes the low losses, component 1 the high ones; :func:`_initial_split` returns
the count, sum and sum of squares of the high cluster of each group, from which one M-step
makes the initial parameters.

``init="kmeans"`` is Lloyd's algorithm from each group's minimum (0 after the layout's shift)
and maximum (``top``): ``t_{i+1} = T(t_i)`` with ``T(t) = (mean{x <= t} + mean{x > t}) / 2``
and ``t_0 = top / 2``, until the set ``{x > t}`` no longer changes. Plain Lloyd needs up to
~60 passes over the data on realistic losses. Here a histogram of counts bounds the trajectory
so that two passes and cheap iterations on a narrow window of losses reach exactly the same
assignment, in named steps (see :func:`_two_means`):

1. :func:`_first_step`: the first step's direction, from the histogram's bounds of
   ``t_1 = T(t_0)`` (one exact pass over the data only where they cannot tell);
2. :func:`_bound_limits`: the limits ``l*`` and ``u*`` of two bound sequences that enclose
   the rest of the trajectory (no data pass);
3. :func:`_exact_window`: the window ``(l*, u*]`` widened against rounding, and the
   threshold to resume from;
4. :func:`_lloyd_in_window`: exact Lloyd resumed there, on the losses inside the window plus
   the totals above it (one pass).

Why the bounds hold: both conditional means are non-decreasing in ``t``, hence so is ``T``:
the thresholds move monotonically, say upwards, to the first fixed point ``t*`` above ``t_1``,
and ``T(t) <= t*`` for every ``t <= t*``. For ``t`` in histogram bin ``b``,
``T_lo = T(bins >= b high) <= T(t) <= T(bins > b high) = T_hi``; the histogram holds counts
only, so the sums in these means are bounded by the bins' edges (which loosens each bound by
at most one bin width, keeping the inequalities). So the sequence ``l <- max(T_lo(l), t_1)``
from ``t_1`` rises to some ``l* <= t*`` with ``T(l*) >= l*``, and ``u <- T_hi(u)`` from
``t_1`` rises to some ``u* >= t*``: exact Lloyd resumed from ``l*`` rises monotonically to the
same ``t*`` as plain Lloyd, never leaving ``[l*, u*]`` (symmetrically downwards). ``t_1``
itself is only needed as a floor (and a start): its bounds ``T_lo(t_0) <= t_1 <= T_hi(t_0)``
serve as well whenever they tell the direction. Should rounding ever push a threshold out of
the window, the remaining iterations run on the full data.

``init="quantile"`` splits each group at its lower median (``{x > median}`` is the high
cluster).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunks import _Chunks, _SortedWindow, _Stats
from .layout import _Layout

_INIT_BINS = 4096  # histogram bins that bound the k-means trajectory
# Relative widening of the exact k-means window, by working dtype: above the rounding of the
# per-group sums (float32 sums of at most 4096 terms per chunk, see layout._CHUNK_MAX).
_WINDOW_MARGIN = {torch.float64: 1e-9, torch.float32: 1e-4}
_EDGE_RTOL = 8.0 * torch.finfo(torch.float32).eps  # rounding of a bin's edges (see histogram)
# The k-means bound sequences: at most so many plain steps, checked for convergence every
# _CHECK_EVERY, then a search of their limits, so many bins at a time. On a CPU a step costs
# little and the search grows with the bins; on a GPU both cost the same few dozen kernel
# launches, so the search starts at once and takes wide strides.
_BOUND_SEARCH = {"cpu": (24, 64), "other": (0, 512)}
_CHECK_EVERY = 4


def _initial_split(lay: _Layout, n: Tensor, sx: Tensor, fitted: Tensor, init: str,
                   init_max_iter: int) -> _Stats:
    """Count, sum and sum of squares of each group's high cluster, ``(G,)`` float64 each.

    Args:
        lay: the groups' layout (normalised values, ``top``, ``median`` for ``"quantile"``).
        n, sx: ``(G,)`` float64 count and sum of each group's values.
        fitted: ``(G,)`` bool, the groups to be fitted (the others' results are meaningless).
        init: ``"kmeans"`` or ``"quantile"``.
        init_max_iter: cap on the exact Lloyd iterations of :func:`_lloyd_in_window`.
    """
    if init == "kmeans":
        return _two_means(lay.chunks, n, sx, lay.top, fitted, init_max_iter)
    assert lay.median is not None
    return lay.chunks.split(lay.median.nan_to_num(0.0))


def _two_means(
    groups: _Chunks, n: Tensor, sx: Tensor, top: Tensor, fitted: Tensor, max_iter: int
) -> _Stats:
    """Batched 1-D two-means (Lloyd) from each group's minimum (0) and maximum (``top``).

    Returns count, sum and sum of squares of the high cluster at Lloyd's fixed point, ``(G,)``
    float64 each (see the module docstring for the steps and why they are exact).
    """
    t0 = 0.5 * top
    bounds = _LloydBounds(groups.histogram(top, _INIT_BINS), top)
    t1_rows, up, down = _first_step(groups, bounds, n, sx, t0, fitted)
    limits = _bound_limits(groups, _BoundMap(bounds, t1_rows, up, down), t0, t1_rows, up, down)
    thr, lo, hi = _exact_window(limits, t0, top, up, down, groups.dtype)
    return _lloyd_in_window(groups, n, sx, thr, lo, hi, fitted, max_iter)


def _midpoint(n: Tensor, sx: Tensor, count_hi: Tensor, sum_hi: Tensor) -> Tensor:
    """Lloyd's next threshold: the midpoint of the means below and above the split."""
    lo = (sx - sum_hi) / (n - count_hi).clamp(min=1.0)
    hi = sum_hi / count_hi.clamp(min=1.0)
    return 0.5 * (lo + hi)


def _twice(t: Tensor) -> Tensor:
    """``(G, ...)`` -> ``(2G, ...)``: one copy for the lower rows, one for the upper rows."""
    return torch.cat([t, t])


def _col(t: Tensor) -> Tensor:
    """A per-row constant as a column, against ``(2G, W)`` bins."""
    return t.unsqueeze(1)


def _mean_or(s: Tensor, c: Tensor, empty: Tensor) -> Tensor:
    """``s / c``, or ``empty`` where ``c == 0``."""
    return torch.where(c > 0, s / c.clamp(min=1.0), empty)


class _LloydBounds:
    """Rigorous bounds of the Lloyd map ``T`` on every histogram bin, from counts and edges.

    Rows ``0..G-1`` hold lower bounds of ``T`` (they drive the lower sequence ``l``), rows
    ``G..2G-1`` upper bounds (the upper sequence ``u``).

    Args:
        counts: ``(G, BINS)`` float64 counts of each group's values per bin of ``[0, top]``.
        top: ``(G,)`` float64 maximum of each group (its minimum is 0).
    """

    def __init__(self, counts: Tensor, top: Tensor) -> None:
        n_groups, self.bins = counts.shape
        device = top.device
        index = torch.arange(self.bins, dtype=torch.float64, device=device)
        c_le = counts.cumsum(1)  # entries in bins <= j
        j_le = (counts * index).cumsum(1)  # sum of (bin index * count) over bins <= j
        self._flat = [t.view(-1) for t in (counts, c_le, j_le)]
        self._row = _twice(torch.arange(n_groups, device=device) * self.bins)
        self._c_tot, self._j_tot = _twice(c_le[:, -1]), _twice(j_le[:, -1])
        self.top2 = _twice(top)
        self.is_u = torch.arange(2 * n_groups, device=device) >= n_groups
        # Bin j holds values in [j * w_lo, (j + 1) * w_hi] (edges widened by their rounding).
        self._width = torch.where(self.is_u, self.top2 * (1.0 + _EDGE_RTOL),
                                  self.top2 * (1.0 - _EDGE_RTOL)) / self.bins
        self._zero = torch.zeros_like(self.top2)

    def at(self, b: Tensor) -> Tensor:
        """Bounds of ``T(t)`` for ``t`` in bins ``b`` ``(2G, W)`` int64, ``(2G, W)`` float64.

        For ``t`` in bin ``b``, ``{x <= t}`` lies between bins ``< b`` and bins ``<= b``:
        counting the straddled bin high (low) can only lower (raise) both means, and so does
        putting each value at its bin's lower (upper) edge. Rows ``< G``: lower bounds of
        ``T(t)``; the others: upper bounds.
        """
        idx = _col(self._row) + b
        c_b, cle, jle = (f.index_select(0, idx.view(-1)).view(idx.shape) for f in self._flat)
        jc_b = b.to(torch.float64) * c_b
        u, c_all, j_all = _col(self.is_u), _col(self._c_tot), _col(self._j_tot)
        w = _col(self._width)
        c_low = torch.where(u, cle, cle - c_b)  # bins <= b (u), bins < b (l)
        s_low = torch.where(u, jle + cle, jle - jc_b) * w
        s_high = torch.where(u, j_all - jle + c_all - cle, j_all - jle + jc_b) * w
        return 0.5 * (_mean_or(s_low, c_low, _col(self._zero))
                      + _mean_or(s_high, c_all - c_low, _col(self.top2)))


class _BoundMap:
    """The map ``g`` that the bound sequences follow, ``t <- g(t)``: the bound of ``T`` at
    ``bin(t)``, for the lower rows of rising groups floored at ``t_1`` (for the upper rows of
    falling groups: capped at ``t_1``).

    Args:
        bounds: the bounds of ``T``.
        t1_rows: ``(2G,)`` float64 floor / cap per row (``t_1`` or its bound).
        up, down: ``(G,)`` bool, the groups whose thresholds rise / fall.
    """

    def __init__(self, bounds: _LloydBounds, t1_rows: Tensor, up: Tensor, down: Tensor) -> None:
        self.bounds = bounds
        self.bins = bounds.bins
        self._t1 = _col(t1_rows)
        self._clamp_rows = _col(torch.cat([up, down]))

    def __call__(self, b: Tensor) -> Tensor:
        """``g`` for ``t`` in bins ``b`` ``(2G, W)``, ``(2G, W)`` float64."""
        g = self.bounds.at(b)
        clamped = torch.where(_col(self.bounds.is_u), torch.minimum(g, self._t1),
                              torch.maximum(g, self._t1))
        return torch.where(self._clamp_rows, clamped, g)


def _first_step(groups: _Chunks, bounds: _LloydBounds, n: Tensor, sx: Tensor, t0: Tensor,
                fitted: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd's first step ``t_1 = T(t_0)``, as far as the bound sequences need it.

    The histogram's bounds of ``T(t_0)`` serve in place of ``t_1`` when they tell its
    direction (up: ``T_lo(t_0) > t_0``): Lloyd has no fixed point in ``[t_0, t_1)`` (there
    ``T(t) >= T(t_0) = t_1 > t``), so a floor anywhere in ``[t_0, t_1]`` keeps the lower
    sequence below ``t*``; the upper sequence may start anywhere above ``t_1``
    (symmetrically downwards). Only if some fitted group's direction is unclear does a pass
    over the data compute ``t_1`` exactly (for all groups).

    Returns:
        ``t1_rows`` ``(2G,)`` float64: per row, the lower then the upper bound of ``t_1``
        (or ``t_1`` itself twice); ``up`` and ``down`` ``(G,)`` bool: the fitted groups whose
        thresholds rise / fall (neither: ``t_1 = t_0``, Lloyd stops at once).
    """
    n_groups = t0.numel()
    t1_rows = bounds.at(_col(groups.bin_index(_twice(t0)))).squeeze(1)
    t1_lo, t1_hi = t1_rows[:n_groups], t1_rows[n_groups:]  # a floor and a ceiling of t1
    up, down = fitted & (t1_lo > t0), fitted & (t1_hi < t0)
    if bool((fitted & ~up & ~down).any()):
        count, s1, _ = groups.split(t0)
        t1 = _midpoint(n, sx, count, s1)
        up, down = fitted & (t1 > t0), fitted & (t1 < t0)
        t1_rows = _twice(t1)
    return t1_rows, up, down


def _bound_limits(groups: _Chunks, g: _BoundMap, t0: Tensor, t1_rows: Tensor, up: Tensor,
                  down: Tensor) -> Tensor:
    """The limits of the bound sequences ``t <- g(t)`` from ``t_1``, ``(2G,)`` float64: the
    lower limit ``l*`` of each group (rows ``< G``), then its upper limit ``u*``; rows of
    groups that do not move stay at ``t_0``. Plain steps first (cheap on a CPU, and the first
    ones cross many bins), then a search (see :func:`_search_limits`)."""
    map_steps, search_bins = _BOUND_SEARCH["cpu" if t0.device.type == "cpu" else "other"]
    step = _twice(up).long() - _twice(down).long()  # +1 rising, -1 falling, 0 staying (per row)
    cur = torch.where(step != 0, t1_rows, _twice(t0))
    cur, moving = _plain_steps(groups, g, cur, step != 0, map_steps)
    if bool(moving.any()):
        cur = _search_limits(groups, g, cur, moving, step, search_bins)
    return cur


def _plain_steps(groups: _Chunks, g: _BoundMap, cur: Tensor, moving: Tensor,
                 steps: int) -> tuple[Tensor, Tensor]:
    """Up to ``steps`` steps ``t <- g(t)`` of the ``moving`` rows of ``cur`` ``(2G,)``.
    Convergence is read back (a device synchronisation on a GPU) every ``_CHECK_EVERY`` steps
    only. Returns the rows and which still move (none once all have stopped)."""
    for i in range(steps):
        new = g(_col(groups.bin_index(cur))).squeeze(1)
        new = torch.where(moving, new, cur)
        if i % _CHECK_EVERY == _CHECK_EVERY - 1 and bool((new == cur).all()):
            moving = torch.zeros_like(moving)
            break
        cur = new
    return cur, moving


def _search_limits(groups: _Chunks, g: _BoundMap, cur: Tensor, moving: Tensor, step: Tensor,
                   search_bins: int) -> Tensor:
    """The limits of the ``moving`` rows' sequences, searched ``search_bins`` bins of every
    row at a time.

    A rising row's ``g(t)`` depends only on ``bin(t)``, is monotone, and ``g(s) >= s`` at every
    iterate ``s``, so the sequence rises to ``g(p)`` for the first bin ``p >= bin(s)`` with
    ``bin(g(p)) <= p`` (every such ``p`` bounds the sequence; the limit is one); falling rows
    symmetrically; a row that has converged stops at its own bin, and at the first or last bin
    every row stops.
    """
    last_bin = g.bins - 1
    base = groups.bin_index(cur)
    offsets = torch.arange(search_bins, device=cur.device)
    pending = moving
    for _ in range(-(-g.bins // search_bins) + 1):
        cand = (_col(base) + _col(step) * offsets).clamp_(0, last_bin)  # (2G, W)
        values = g(cand)
        g_bin = groups.bin_index(values)
        stop = torch.where(_col(step > 0), g_bin <= cand, g_bin >= cand)
        found = stop.any(1) & pending
        first = stop.to(torch.int8).argmax(1, keepdim=True)  # the first stopping bin
        cur = torch.where(found, values.gather(1, first).squeeze(1), cur)
        pending = pending & ~found
        if not bool(pending.any()):
            break
        base = base + step * search_bins
    return cur


def _exact_window(limits: Tensor, t0: Tensor, top: Tensor, up: Tensor, down: Tensor,
                  dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Where exact Lloyd resumes and the window it stays in, ``(G,)`` float64 each.

    The threshold is ``l*`` for rising groups, ``u*`` for falling ones, ``t_0`` for the
    others. The bounds come from sums in another order than the exact steps, so the window
    ``[min(l*, u*), max(l*, u*)]`` is widened by ``_WINDOW_MARGIN[dtype] * top``, far above
    rounding (a wider window only costs a few more losses in it), and floored at 0 (no
    threshold is below a group's minimum, 0, and the filler is never inside).

    Returns:
        ``(thr, lo, hi)``.
    """
    n_groups = t0.numel()
    lo, hi = limits[:n_groups], limits[n_groups:]
    thr = torch.where(up, lo, torch.where(down, hi, t0))
    margin = _WINDOW_MARGIN[dtype] * top
    lo, hi = torch.minimum(lo, hi) - margin, torch.maximum(lo, hi) + margin
    lo.clamp_(min=0.0)
    return thr, lo, hi


class _WindowStats:
    """Count, sum and sum of squares of ``{x > t}`` per group, from the totals above the
    window and the sorted values inside it; once a fitted group's threshold leaves the window
    (rounding), from the full data for the rest of the run."""

    def __init__(self, groups: _Chunks, above: _Stats, window: _SortedWindow, lo: Tensor,
                 hi: Tensor, fitted: Tensor) -> None:
        self.groups, self.above, self.window = groups, above, window
        self.lo, self.hi, self.fitted = lo, hi, fitted
        self.on_full = False

    def __call__(self, t: Tensor) -> _Stats:
        if not self.on_full and bool((((t < self.lo) | (t > self.hi)) & self.fitted).any()):
            self.on_full = True  # rounding pushed a threshold out of the window
        if self.on_full:
            return self.groups.split(t)
        inside = self.window.split(t)
        above = self.above
        return above[0] + inside[0], above[1] + inside[1], above[2] + inside[2]


def _lloyd_in_window(groups: _Chunks, n: Tensor, sx: Tensor, thr: Tensor, lo: Tensor,
                     hi: Tensor, fitted: Tensor, max_iter: int) -> _Stats:
    """Exact Lloyd from ``thr`` inside the window ``(lo, hi]``: at most ``max_iter`` steps,
    until no fitted group's assignment changes. In 1-D the sets ``{x > t}`` are nested, so an
    unchanged count means an unchanged assignment. Returns the high cluster's stats (those
    of the last step when ``max_iter`` stops it)."""
    above, window = groups.window(lo, hi)
    stats = _WindowStats(groups, above, window, lo, hi, fitted)
    count, s1, s2 = stats(thr)
    for _ in range(max_iter):
        new_count, new_s1, new_s2 = stats(_midpoint(n, sx, count, s1))
        same = bool(((new_count == count) | ~fitted).all())
        count, s1, s2 = new_count, new_s1, new_s2
        if same:
            break
    return count, s1, s2
