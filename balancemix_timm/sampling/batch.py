"""Pairing and batching: ``(random, minority)`` index pairs and batch samplers that can merge a
single-item tail batch into the previous batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from torch import Tensor
from torch.utils.data import Sampler

from balancemix_timm.sampling.sharded import _check_int

__all__ = ["PairedSampler", "TailMergingBatchSampler", "PairedBatchSampler", "num_batches"]


_T = TypeVar("_T")


class PairedSampler(Sampler[tuple[int, int]]):
    """Zip a random sampler and a minority sampler into ``(random_idx, minority_idx)`` pairs.

    Lets one :class:`~torch.utils.data.DataLoader` over a
    :class:`~balancemix_timm.mixing.PairedDataset` serve both streams. ``len`` is the minimum of
    the two samplers' lengths (the longer stream is truncated).

    Args:
        random_sampler: Yields the random instances' indices (e.g. :class:`ShardedRandomSampler`).
        minority_sampler: Yields the minority instances' indices (e.g. :class:`MinoritySampler`).
    """

    def __init__(self, random_sampler: Sampler[int], minority_sampler: Sampler[int]) -> None:
        for name, s in (("random_sampler", random_sampler), ("minority_sampler", minority_sampler)):
            if not hasattr(s, "__iter__") or not hasattr(s, "__len__"):
                raise ValueError(f"{name} must be a sized sampler, got {type(s).__name__}")
        self.random_sampler = random_sampler
        self.minority_sampler = minority_sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(iter(self.random_sampler), iter(self.minority_sampler))

    def __len__(self) -> int:
        return min(len(self.random_sampler), len(self.minority_sampler))  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Forward ``set_epoch`` to both samplers (those that have it)."""
        for s in (self.random_sampler, self.minority_sampler):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def update(self, weights: Tensor) -> None:
        """Forward new weights to the minority sampler (see :meth:`MinoritySampler.update`)."""
        self.minority_sampler.update(weights)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """``{"random": ..., "minority": ...}`` with each sampler's state (``{}`` if it has none)."""
        return {
            "random": self.random_sampler.state_dict() if hasattr(self.random_sampler, "state_dict") else {},
            "minority": self.minority_sampler.state_dict()
            if hasattr(self.minority_sampler, "state_dict")
            else {},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore both samplers from :meth:`state_dict`'s output."""
        for key, s in (("random", self.random_sampler), ("minority", self.minority_sampler)):
            if key not in state_dict:
                raise ValueError(f"state_dict is missing {key!r}")
            if hasattr(s, "load_state_dict"):
                s.load_state_dict(state_dict[key])


def num_batches(n: int, batch_size: int, *, drop_last: bool = False, merge_single_tail: bool = False) -> int:
    """Number of batches :func:`_batched` makes of ``n`` items.

    Args:
        n: Number of items (>= 0).
        batch_size: Items per batch (>= 1).
        drop_last: Drop an incomplete last batch.
        merge_single_tail: Append a one-item last batch to the batch before it (when there is
            one), so that no batch of one item is made from more than one item.

    Returns:
        ``floor(n / batch_size)`` with ``drop_last``; else ``ceil(n / batch_size)``, less one
        when the tail of one item is merged.
    """
    n = _check_int(n, "n", minimum=0)
    batch_size = _check_int(batch_size, "batch_size", minimum=1)
    full, rest = divmod(n, batch_size)
    if drop_last or rest == 0 or (merge_single_tail and rest == 1 and full >= 1):
        return full
    return full + 1


def _batched(items: Iterable[_T], batch_size: int, drop_last: bool, merge_single_tail: bool) -> Iterator[list[_T]]:
    """Group ``items`` into lists of ``batch_size`` (see :func:`num_batches` for the tail rules)."""
    pending: list[_T] | None = None  # the last full batch, held back until the tail is known
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            if pending is not None:
                yield pending
            pending, batch = batch, []
    if merge_single_tail and len(batch) == 1 and pending is not None:
        pending, batch = pending + batch, []
    if pending is not None:
        yield pending
    if batch and not drop_last:
        yield batch


class TailMergingBatchSampler(Sampler[list[_T]]):
    """Group a sampler's items into batches whose one-item tail joins the batch before it.

    A training batch of a single sample breaks BatchNorm in training mode ("Expected more than
    1 value per channel") and gives a one-sample gradient step; merging keeps every sample in
    the epoch (its per-sample records for the label refresh included) with one batch of
    ``batch_size + 1`` instead. Under DDP every rank's sharded sampler has the same length, so
    every rank makes the same number of batches.

    Args:
        sampler: A sized sampler (e.g. :class:`ShardedRandomSampler`, :class:`PairedSampler`).
        batch_size: Items per batch (>= 1).
        drop_last: Drop the last incomplete batch instead.
        merge_single_tail: Merge a one-item tail (default True); False batches as
            :class:`torch.utils.data.BatchSampler` does.

    ``len`` is :func:`num_batches` of ``len(sampler)``. A sampler of one item still gives one
    batch of one item: callers that train on the batches refuse that case up front.
    """

    def __init__(self, sampler: Sampler[_T], batch_size: int, drop_last: bool = False,
                 merge_single_tail: bool = True) -> None:
        if not hasattr(sampler, "__iter__") or not hasattr(sampler, "__len__"):
            raise ValueError(f"sampler must be a sized sampler, got {type(sampler).__name__}")
        self.sampler = sampler
        self.batch_size = _check_int(batch_size, "batch_size", minimum=1)
        for name, flag in (("drop_last", drop_last), ("merge_single_tail", merge_single_tail)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        self.drop_last = drop_last
        self.merge_single_tail = merge_single_tail

    def __iter__(self) -> Iterator[list[_T]]:
        return _batched(self.sampler, self.batch_size, self.drop_last, self.merge_single_tail)

    def __len__(self) -> int:
        return num_batches(len(self.sampler), self.batch_size, drop_last=self.drop_last,  # type: ignore[arg-type]
                           merge_single_tail=self.merge_single_tail)

    def set_epoch(self, epoch: int) -> None:
        """Forward ``set_epoch`` to the sampler."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class PairedBatchSampler(TailMergingBatchSampler[tuple[int, int]]):
    """Group the pairs of a :class:`PairedSampler` into batches (a DataLoader ``batch_sampler``).

    Args:
        paired_sampler: Yields ``(random_idx, minority_idx)`` pairs.
        batch_size: Pairs per batch (>= 1).
        drop_last: Drop the last incomplete batch. ``len`` is ``floor(n / batch_size)`` if set,
            else ``ceil(n / batch_size)``, with ``n = len(paired_sampler)``.
        merge_single_tail: Append a one-pair last batch to the batch before it (``len`` one
            less); pass True when the batches train a model with BatchNorm (the trainer does).
            Default False: :class:`torch.utils.data.BatchSampler`'s batches.
    """

    def __init__(self, paired_sampler: PairedSampler, batch_size: int, drop_last: bool = False,
                 merge_single_tail: bool = False) -> None:
        if not hasattr(paired_sampler, "__iter__") or not hasattr(paired_sampler, "__len__"):
            raise ValueError(f"paired_sampler must be a sized sampler, got {type(paired_sampler).__name__}")
        super().__init__(paired_sampler, batch_size, drop_last, merge_single_tail)

    def update(self, weights: Tensor) -> None:
        """Forward new minority weights to the paired sampler."""
        self.sampler.update(weights)

    def state_dict(self) -> dict[str, Any]:
        """The paired sampler's state."""
        return self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the paired sampler's state."""
        if hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state_dict)
