"""The ``2K`` (class, polarity) groups laid out as :class:`~.chunks._Chunks`.

For each class the more frequent polarity (the "dense" group) is stored as a row of length
``N`` in which the other polarity's entries are replaced by a filler ``0.0``; the rarer
polarity of each class (the positives, for a typical multi-label data set) is packed. Both are
cut into chunks of ``CH`` entries (a power of two up to 4096), each chunk belonging to one
group, and padded with filler. Every label is thus processed once per EM round, with per-group
coefficients broadcast along chunks.

Each group's losses are shifted by the group minimum (and, with ``normalize="minmax"``,
divided by its range). EM is translation-equivariant, so the shift changes nothing but keeps
the filler at the bottom of the data and the one-pass variance ``E[x^2] - mean^2`` well
conditioned. :class:`_Output` records where each ragged entry goes back in the ``(N, K)``
output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from balancemix_timm._checks import binary_mask, check_finite

from .chunks import _Chunks

# A group whose losses span at most this (relative to max(1, max |loss|)) is "constant".
_RANGE_RTOL = 1e-9
_CHUNK_MIN, _CHUNK_MAX = 64, 4096  # chunk length bounds (see _chunk_size)


def _chunk_size(n_samples: int) -> int:
    """Chunk length: a power of two near ``n_samples / 8`` within ``[_CHUNK_MIN, _CHUNK_MAX]``."""
    target = max(1, -(-n_samples // 8))
    return int(min(_CHUNK_MAX, max(_CHUNK_MIN, 1 << (target - 1).bit_length())))



def _layout(
    losses: Tensor, labels: Tensor, *, normalize: str, dtype: torch.dtype, device: torch.device,
    want_median: bool,
) -> _Layout:
    """Split the labels into the ``2K`` groups and store them as :class:`_Chunks` (see
    :class:`_Layout` for what comes back)."""
    n_samples, k = losses.shape
    f64 = {"dtype": torch.float64, "device": device}
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

    # Shift / scale every group; filler -> 0. The dense rows in the working dtype (offset and
    # scale rounded to it), the ragged values in float64, rounded once to the working dtype.
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
    # Each ragged group's filler closes its last chunk.
    last = r_first + r_chunks - 1
    last_len = n_minor - (r_chunks - 1) * size
    tail = (r_chunks > 0) & (last_len < size)
    out = _Layout()
    out.chunks = _Chunks(x, group, n_fill, n, last[tail], last_len[tail])
    out.offset, out.scale, out.top = offset, scale, span / scale
    out.constant, out.majority, out.median = constant, majority, median
    out.output = _Output(n_samples, k, m_dense, width, where, seg, col)
    return out


class _Layout:
    """What :func:`_layout` returns. Per group (dense groups, then ragged groups), ``(G,)``
    float64: ``offset`` and ``scale`` of the normalisation, ``top`` the normalised range,
    ``constant`` (bool) and ``median`` (normalised, only for ``init="quantile"``); ``majority``
    ``(K,)`` bool, True where the positives are the dense group; ``output`` for
    :func:`~.em._predict`."""

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
    :func:`~.em._predict`): entry ``where[i]`` of the flattened chunks is label
    ``(col[i], seg[i])``; the dense groups are column ``k`` of the losses for class ``k``."""

    def __init__(self, n_samples: int, k: int, m_dense: int, width: int, where: Tensor,
                 seg: Tensor, col: Tensor) -> None:
        self.n_samples, self.k, self.m_dense, self.width = n_samples, k, m_dense, width
        self.where, self.seg, self.col = where, seg, col

