"""The ``2K`` groups' values as chunks of one tensor, and every per-label pass over them.

Storage: every group as whole chunks of ``CH`` values. Chunk ``m`` belongs to group
``group[m]``; a group's chunks are contiguous and groups come in order (dense groups 0..K-1:
the majority polarity of each class, with the other polarity's entries and the padding as
filler; ragged groups K..2K-1: the minority polarity, packed, padded with filler). Filler
entries hold ``x = 0``. Values are shifted (and scaled) so that each group starts at 0
(:func:`~balancemix_timm.gmm.layout._layout` builds it).

The filler adds nothing to the sums of ``x`` and ``x**2``. In the EM sums (responsibilities
and log-likelihoods) a filler entry has ``d = a``: in float32, the filler that closes a ragged
group's last chunk (its "tail", up to ``CH - 1`` entries, possibly for a handful of labels) is
masked out of those sums, so that it contributes exactly zero; the other filler (inside the
dense groups' rows, at most as many entries as the group has labels, plus less than one chunk
of padding) and, in float64, all filler contribute a known value per group, subtracted
analytically. The lower bound needs ``sum softplus(d)`` of the log-odds ``d``; it is taken as
``sum relu(d) - sum log max(r, 1 - r)`` with ``r = sigmoid(d)``: two sums of non-negative
terms, and no logarithm of a quantity that rounds to 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_COMPACT_SHARE = 0.25  # EM drops converged groups' chunks once they are this share of them
# Entries per slab of work space (see _Chunks): on CPU a few MB that stay in cache; on a GPU
# one slab (every pass one kernel launch per operation over all the data).
_SLAB_ENTRIES = {"cpu": 1 << 20, "other": 1 << 62}
# Sums of logarithms of entries in [1/2, 1] are taken as logarithms of products of up to this
# many entries (>= 2**-64, far above float32's smallest normal number, 2**-126). Chunk
# lengths are powers of two in [_LOG_GROUP, _LOG_GROUP**2].
_LOG_GROUP = 64

_Stats = tuple[Tensor, Tensor, Tensor]


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
    allocation above 32 MB afresh; the cost is in ``docs/performance.md``).

    Args:
        x: ``(M, CH)`` values in the working dtype.
        group: ``(M,)`` int64 group of each chunk, non-decreasing.
        n_fill: ``(G,)`` float64 number of filler entries of each group.
        n: ``(G,)`` float64 number of real entries of each group.
        tail_chunk: ``(T,)`` int64 increasing indices of chunks whose entries from
            ``tail_len`` on are filler and hold all of their group's filler (the last chunk of
            each ragged group that has filler); at most one per group.
        tail_len: ``(T,)`` int64 real entries of each of those chunks, in ``[1, CH)``.
    """

    def __init__(self, x: Tensor, group: Tensor, n_fill: Tensor, n: Tensor,
                 tail_chunk: Tensor, tail_len: Tensor) -> None:
        self.x = x
        self.dtype = x.dtype
        self.group = group
        self.groups = n_fill.numel()
        self.n_fill = n_fill
        self.n = n
        chunks, size = x.shape
        self.chunk = size
        # In float32, EM masks the tails' filler (see em_stats): their groups have no filler
        # left in the EM sums. In float64 the filler's rounding is far below the labels' own,
        # and its share is subtracted for every group.
        self._em_fill = n_fill
        self._tail_chunk = tail_chunk[:0]
        self._tail_mask = torch.zeros((0, size), dtype=torch.bool, device=x.device)
        if self.dtype != torch.float64 and tail_chunk.numel():
            self._tail_chunk = tail_chunk
            # (T, CH) bool, True on each tail chunk's filler (T * CH bytes, T <= K).
            cols = torch.arange(size, device=x.device)
            self._tail_mask = cols.unsqueeze(0) >= tail_len.unsqueeze(1)
            self._em_fill = n_fill.index_fill(0, group.index_select(0, tail_chunk), 0.0)
        # The tail chunks' positions among the chunks EM visits and their masks, for the chunk
        # selection they were computed for (see _em_tails).
        self._tails: tuple[Tensor | None, Tensor, Tensor] | None = None
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
        # The histogram's bins (see histogram): how many, and BINS / top per group.
        self._bins = 1
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
        f64 = {"dtype": torch.float64, "device": self.x.device}
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
        """Bin of the last :meth:`histogram` for per-group thresholds ``t`` (``(R * G, ...)``
        float64: rows of the groups in order, repeated ``R`` times along the first dimension),
        computed with the same arithmetic as the data's bins, so that ``bin(x) < bin(t)``
        implies ``x <= t`` and ``bin(x) > bin(t)`` implies ``x > t`` (bins are monotone in the
        value)."""
        r = _round_down(t, self.dtype).to(self.dtype)
        inv = self._inv_width.repeat(t.shape[0] // self.groups)
        inv = inv.view((-1,) + (1,) * (t.dim() - 1))
        return torch.mul(r, inv).floor_().clamp_(0, self._bins - 1).to(torch.int64)

    def histogram(self, top: Tensor, bins: int) -> Tensor:
        """Per-group counts over ``bins`` bins of ``[0, top]``, ``(G, bins)`` float64.

        An entry's bin is ``floor(x * (bins / top))``, the product rounded once in the working
        dtype (see :meth:`bin_index`, which uses the same bins afterwards), so the values in
        bin ``j`` lie within ``[j, j + 1] * top / bins`` widened by a few roundings.
        """
        self._bins = bins
        inv = torch.where(top > 0, bins / top, torch.zeros_like(top))
        self._inv_width = inv.to(self.dtype)
        total = self.groups * bins
        counts = torch.zeros(total, dtype=torch.int64, device=self.x.device)
        for start, stop in self._slabs(self.x.shape[0]):
            g = self.group[start:stop]
            b = torch.mul(self.x[start:stop], self._inv_width.index_select(0, g).unsqueeze(1),
                          out=self._work[0, : stop - start])
            idx = b.to(torch.int32)  # b >= 0: truncation is floor (G * bins < 2**31)
            # Count into the bins of this slab's groups only (chunks are in group order).
            first, last = int(g[0]), int(g[-1])
            idx.clamp_(max=bins - 1).add_(((g - first) * bins).to(torch.int32).unsqueeze(1))
            span = (last - first + 1) * bins
            counts[first * bins: first * bins + span] += torch.bincount(
                idx.view(-1), minlength=span)
        counts = counts.view(self.groups, bins).to(torch.float64)
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
        active groups' chunks are visited (gathered slab by slab into a reused buffer). The
        tails' filler (float32) gets ``d = -inf``, hence ``r = 0`` and ``relu(d) = 0``; the other
        filler's share, ``n_fill * sigmoid(a)`` and ``n_fill * softplus(a)``, is
        subtracted in float64."""
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
        slabs = self._slabs(n_chunks)
        tail_pos, tail_mask = self._em_tails(sel)
        # The slabs' first tail chunk and one past the last one.
        edges = torch.tensor([start for start, _ in slabs] + [n_chunks], device=tail_pos.device)
        bounds = torch.searchsorted(tail_pos, edges).tolist()
        for i, (start, stop) in enumerate(slabs):
            w = self._work[:, : stop - start]
            if sel is None:
                x = self.x[start:stop]
            else:
                assert self._gathered is not None
                x = self._gathered[: stop - start]
                torch.index_select(self.x, 0, sel[start:stop], out=x)
            d = self._diff(a, b, c, x, group[start:stop], w[2], w[0])
            if bounds[i] < bounds[i + 1]:
                # The tails' filler gets d = -inf: r = 0 and relu(d) = 0, hence
                # max(r, 1 - r) = 1 (its logarithm 0) and r x = 0, so it adds exactly nothing
                # to any sum.
                rows = tail_pos[bounds[i]: bounds[i + 1]] - start
                tails = d.index_select(0, rows)
                tails.masked_fill_(tail_mask[bounds[i]: bounds[i + 1]], -math.inf)
                d.index_copy_(0, rows, tails)
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
        # cancellation in the working dtype). Filler entries that are not masked have d = a.
        fill = self._em_fill
        s0 = (s[:, 0] - fill * torch.sigmoid(a)).clamp_(min=0.0)
        ssp = s[:, 1] - s[:, 4] - fill * torch.nn.functional.softplus(a)
        return s0, s[:, 2], s[:, 3], ssp

    def _em_tails(self, sel: Tensor | None) -> tuple[Tensor, Tensor]:
        """Positions of the tail chunks among the chunks EM visits (all chunks, or ``sel``,
        increasing), increasing, and their ``(T', CH)`` filler masks; cached per ``sel``."""
        cached = self._tails
        if cached is not None and cached[0] is sel:
            return cached[1], cached[2]
        pos, mask = self._tail_chunk, self._tail_mask
        if sel is not None and sel.numel() == 0:
            pos, mask = pos[:0], mask[:0]
        elif sel is not None and pos.numel():
            at = torch.searchsorted(sel, pos).clamp_(max=sel.numel() - 1)
            visited = sel.index_select(0, at) == pos
            pos, mask = at[visited], mask[visited]
        self._tails = (sel, pos, mask)
        return pos, mask

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

