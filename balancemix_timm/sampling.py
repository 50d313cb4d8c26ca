"""Confidence-based minority sampling (Eq. 2-4 of BalanceMix) and epoch-seeded, shardable samplers.

BalanceMix keeps two samplers over the training set: a *random* sampler (a plain permutation)
and a *minority* sampler that draws instances with probability inversely proportional to their
confidence score (Eq. 3-4). Each minority instance is mixed into a random instance (Eq. 5, see
:mod:`balancemix_timm.mixing`).

The samplers here follow :class:`torch.utils.data.DistributedSampler`: call
``set_epoch(epoch)`` before every epoch; the epoch's indices are drawn by an explicit
:class:`torch.Generator` seeded from ``(sampler kind, seed, epoch)``, so every rank draws the same
global stream, pads it (by wrapping) to a multiple of ``num_replicas`` and keeps the positions
``rank::num_replicas``. This also gives the weighted sampler the distributed support that
:class:`torch.utils.data.WeightedRandomSampler` lacks (pytorch/pytorch#77154).
"""

from __future__ import annotations

import hashlib
import logging
import math
import operator
from typing import Any, Iterable, Iterator, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Sampler

from balancemix_timm._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_probabilities,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "class_confidences",
    "instance_scores",
    "minority_sampling_probs",
    "weight_spread",
    "MinoritySampler",
    "ShardedRandomSampler",
    "PairedSampler",
    "PairedBatchSampler",
    "TailMergingBatchSampler",
    "num_batches",
]

_T = TypeVar("_T")

_logger = logging.getLogger(__name__)

#: Largest number of categories :func:`torch.multinomial` accepts.
MULTINOMIAL_MAX_CATEGORIES = 2**24

_SCORES = ("paper", "positive")


# --------------------------------------------------------------------------------------------
# Eq. 2-4: sampling probabilities
# --------------------------------------------------------------------------------------------
def _check_probs_labels(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    check_tensor(probs, "probs")
    check_tensor(labels, "labels")
    check_ndim(probs, "probs", 2)
    check_same_shape(probs, "probs", labels, "labels")
    if probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"probs must have at least one row and one column, got {tuple(probs.shape)}")
    check_probabilities(probs, "probs")
    check_binary(labels, "labels")
    positive = labels.to(device=probs.device).bool()
    return probs.to(torch.float64), positive


def class_confidences(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class expected confidences P(k) and A(k) (Eq. 2 of BalanceMix).

    ``P(k)`` is the mean of ``probs[:, k]`` over the rows whose label ``k`` is positive and
    ``A(k)`` the mean of ``1 - probs[:, k]`` over the rows whose label ``k`` is negative, both over
    the whole given set.

    Args:
        probs: Predicted probabilities f(x)_k, shape (N, K), floats in [0, 1].
        labels: Given (noisy) labels, shape (N, K), binary (bool, int or float).

    Returns:
        ``(P, A)``, each float64 of shape (K,), on ``probs``' device. A class with no positive
        label has ``P(k) = NaN`` (an empty mean); one with no negative label has ``A(k) = NaN``.
    """
    p, positive = _check_probs_labels(probs, labels)
    pos = positive.to(torch.float64)
    neg = 1.0 - pos
    n_pos = pos.sum(0)
    n_neg = neg.sum(0)
    sum_p = (p * pos).sum(0)
    sum_a = ((1.0 - p) * neg).sum(0)
    nan = torch.full_like(sum_p, float("nan"))
    conf_p = torch.where(n_pos > 0, sum_p / n_pos.clamp_min(1.0), nan)
    conf_a = torch.where(n_neg > 0, sum_a / n_neg.clamp_min(1.0), nan)
    return conf_p, conf_a


def instance_scores(probs: Tensor, labels: Tensor, *, score: str = "paper") -> Tensor:
    """Confidence score of every instance (Eq. 3 of BalanceMix, or a variant).

    Args:
        probs: Predicted probabilities, shape (N, K), floats in [0, 1].
        labels: Given labels, shape (N, K), binary.
        score: ``"paper"`` (default, Eq. 3): ``Score_n = sum_k [y_nk=1] P(k) + [y_nk=0] A(k)``.
            ``"positive"``: the mean of ``P(k)`` over the instance's positive labels; an instance
            with no positive label falls back to the mean of ``A(k)`` over its negatives. The
            literal score is dominated by the ~K negatives (every ``A(k)`` is close to 1 on a
            long-tailed set such as COCO), which makes Eq. 4 nearly uniform; the positives-only
            score keeps the minority signal.

    Returns:
        Float64 tensor of shape (N,), non-negative. Classes whose P(k) (or A(k)) is undefined,
        because they have no positive (or no negative) label, contribute 0.
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    conf_p, conf_a = class_confidences(probs, labels)
    conf_p = torch.nan_to_num(conf_p, nan=0.0)
    conf_a = torch.nan_to_num(conf_a, nan=0.0)
    positive = labels.to(device=probs.device).bool()
    pos = positive.to(torch.float64)
    neg = 1.0 - pos
    sum_pos = pos @ conf_p
    sum_neg = neg @ conf_a
    if score == "paper":
        return sum_pos + sum_neg
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    mean_pos = sum_pos / n_pos.clamp_min(1.0)
    mean_neg = sum_neg / n_neg.clamp_min(1.0)
    return torch.where(n_pos > 0, mean_pos, mean_neg)


def minority_sampling_probs(
    probs: Tensor, labels: Tensor, *, score: str = "paper", temperature: float = 1.0
) -> Tensor:
    """Sampling probability of every instance for the minority sampler (Eq. 2-4 of BalanceMix).

    ``p_n = Score_n^(-T) / sum_m Score_m^(-T)``; with the defaults (``score="paper"``, ``T = 1``)
    this is exactly Eq. 4, ``p_n = (1 / Score_n) / sum_m (1 / Score_m)`` with the score of Eq. 3.
    An instance whose score is exactly 0 has infinite inverse score; in that (limit) case all the
    mass is spread evenly over the zero-score instances.

    Args:
        probs: Predicted probabilities f(x)_k, shape (N, K), floats in [0, 1], N >= 1.
        labels: Given (noisy) labels, shape (N, K), binary.
        score: ``"paper"`` (Eq. 3) or ``"positive"``, see :func:`instance_scores`.
        temperature: Exponent ``T > 0`` on the inverse score; ``T = 1`` is the paper, larger
            values sharpen the (near-uniform) distribution of the literal formula.

    Returns:
        Float64 tensor of shape (N,) on ``probs``' device, non-negative, summing to 1.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    s = instance_scores(probs, labels, score=score)
    zero = s <= 0
    if bool(zero.any()):
        _logger.warning(
            "%d instance(s) have a zero confidence score; the minority sampler puts all its "
            "mass on them", int(zero.sum()),
        )
        return zero.to(torch.float64) / zero.sum()
    if t == 1.0:
        inv = 1.0 / s
        return inv / inv.sum()
    return torch.softmax(-t * torch.log(s), dim=0)


def weight_spread(p: Tensor) -> dict[str, float]:
    """Summary of how far sampling weights are from uniform, for logging (spec item 1).

    Args:
        p: Sampling weights, shape (N,), finite, non-negative, positive sum (normalised here).

    Returns:
        ``{"max_over_min": max/min (inf if some weight is 0), "max_n": N * max p,
        "min_n": N * min p, "ess_fraction": (sum p)^2 / (N * sum p^2)}``. A uniform distribution
        gives 1, 1, 1, 1.
    """
    w = _check_weights(p, "p", None).to(torch.float64)
    n = w.numel()
    w = w / w.sum()
    w_max = float(w.max())
    w_min = float(w.min())
    return {
        "max_over_min": w_max / w_min if w_min > 0 else float("inf"),
        "max_n": w_max * n,
        "min_n": w_min * n,
        "ess_fraction": float(w.sum() ** 2 / (n * (w * w).sum())),
    }


def _check_weights(weights: Tensor, name: str, size: int | None) -> Tensor:
    check_tensor(weights, name)
    check_ndim(weights, name, 1)
    if size is not None and weights.numel() != size:
        raise ValueError(f"{name} must have length {size}, got {weights.numel()}")
    if weights.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if weights.dtype == torch.bool or weights.is_complex():
        raise ValueError(f"{name} must be a real numeric tensor, got {weights.dtype}")
    check_finite(weights, name)
    if bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative; min is {float(weights.min()):.4g}")
    if not float(weights.sum()) > 0:
        raise ValueError(f"{name} must have a positive sum")
    return weights


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------
def _derive_seed(*parts: int) -> int:
    """Hash integers into a 63-bit seed (stable across processes, platforms and Python runs)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(int(part).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


def _check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        out = operator.index(value)  # int, numpy integers, 0-d integer tensors
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return int(out)


class _EpochShardedSampler(Sampler[int]):
    """Base: draw a global stream per epoch with a seeded generator, pad, take this rank's shard."""

    _salt = 0

    def __init__(
        self, data_size: int, num_samples: int | None, *, seed: int, num_replicas: int, rank: int
    ) -> None:
        self.data_size = _check_int(data_size, "data_size", minimum=1)
        if num_samples is None:
            num_samples = self.data_size
        self.num_samples = _check_int(num_samples, "num_samples", minimum=1)
        self.seed = _check_int(seed, "seed")
        self.num_replicas = _check_int(num_replicas, "num_replicas", minimum=1)
        self.rank = _check_int(rank, "rank", minimum=0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas - 1 = {self.num_replicas - 1}], got {rank}")
        self.epoch = 0

    @property
    def num_samples_per_rank(self) -> int:
        """Indices yielded by this rank per epoch: ``ceil(num_samples / num_replicas)``."""
        return -(-self.num_samples // self.num_replicas)

    @property
    def total_size(self) -> int:
        """Length of the padded global stream: ``num_samples_per_rank * num_replicas``."""
        return self.num_samples_per_rank * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose indices the next ``__iter__`` yields (call before each epoch)."""
        self.epoch = _check_int(epoch, "epoch")

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(_derive_seed(self._salt, self.seed, self.epoch))
        return g

    def _draw(self, generator: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def global_indices(self) -> Tensor:
        """The current epoch's global stream, shared by all ranks.

        Returns:
            LongTensor of shape (total_size,): the ``num_samples`` drawn indices followed by the
            first ``total_size - num_samples`` of them again (wrap-around padding, as
            :class:`~torch.utils.data.DistributedSampler` does).
        """
        idx = self._draw(self._generator())
        pad = self.total_size - idx.numel()
        if pad > 0:
            reps = -(-pad // idx.numel())
            idx = torch.cat([idx, idx.repeat(reps)[:pad]])
        return idx

    def rank_indices(self) -> Tensor:
        """This rank's indices for the current epoch: ``global_indices()[rank::num_replicas]``."""
        return self.global_indices()[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices().tolist())

    def __len__(self) -> int:
        return self.num_samples_per_rank

    def _base_state(self) -> dict[str, Any]:
        return {
            "data_size": self.data_size,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "epoch": self.epoch,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
        }

    def _load_base_state(self, state: dict[str, Any]) -> None:
        for key in ("data_size", "num_samples"):
            if key not in state:
                raise ValueError(f"state_dict is missing {key!r}")
            if int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"state_dict[{key!r}] = {state[key]} does not match this sampler's "
                    f"{key} = {getattr(self, key)}"
                )
        self.seed = _check_int(state["seed"], "state_dict['seed']")
        self.epoch = _check_int(state["epoch"], "state_dict['epoch']")


class ShardedRandomSampler(_EpochShardedSampler):
    """Random permutation sampler with :class:`MinoritySampler`'s epoch and sharding semantics.

    The BalanceMix *random* sampler. Each epoch draws ``num_samples`` indices without
    replacement (concatenating independent permutations when ``num_samples > data_size``) with a
    generator seeded from ``(seed, epoch)``; rank ``r`` keeps positions ``r::num_replicas`` of the
    padded stream.

    Args:
        data_size: Number of instances N.
        num_samples: Indices drawn per epoch over all ranks (default N).
        seed: Base seed; the same on every rank.
        num_replicas: World size.
        rank: This process's rank in ``[0, num_replicas)``.
    """

    _salt = 0x52414E44  # "RAND"

    def __init__(
        self,
        data_size: int,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(data_size, num_samples, seed=seed, num_replicas=num_replicas, rank=rank)

    def _draw(self, generator: torch.Generator) -> Tensor:
        reps = -(-self.num_samples // self.data_size)
        perms = [torch.randperm(self.data_size, generator=generator) for _ in range(reps)]
        return torch.cat(perms)[: self.num_samples]

    def state_dict(self) -> dict[str, Any]:
        """Sampler state (sizes, seed, epoch, world layout)."""
        return self._base_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore seed and epoch; sizes must match. The world layout is kept as constructed."""
        self._load_base_state(state_dict)


class MinoritySampler(_EpochShardedSampler):
    """Weighted sampler for the minority instances of BalanceMix (Eq. 4), DDP-aware.

    Weights are uniform until :meth:`update` is called (spec item 4: epoch 1 samples uniformly).
    Each epoch draws ``num_samples`` indices from the weights with :func:`torch.multinomial`
    and a generator seeded from ``(seed, epoch)`` -- identical on every rank -- pads the stream by
    wrapping to a multiple of ``num_replicas`` and yields positions ``rank::num_replicas``.
    Updated weights take effect at the next ``__iter__``. Resuming restores whole epochs: the
    stream is a function of (seed, epoch, weights) only.

    Args:
        data_size: Number of instances N (at most 2^24, the limit of ``torch.multinomial``).
        num_samples: Indices drawn per epoch over all ranks (default N).
        seed: Base seed; the same on every rank.
        num_replicas: World size.
        rank: This process's rank in ``[0, num_replicas)``.
        replacement: Draw with replacement (default, as the paper oversamples); without
            replacement ``num_samples`` must not exceed the number of positive weights.
    """

    _salt = 0x4D494E4F  # "MINO"

    def __init__(
        self,
        data_size: int,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        replacement: bool = True,
    ) -> None:
        super().__init__(data_size, num_samples, seed=seed, num_replicas=num_replicas, rank=rank)
        if self.data_size > MULTINOMIAL_MAX_CATEGORIES:
            raise ValueError(
                f"data_size must be at most 2^24 = {MULTINOMIAL_MAX_CATEGORIES} (the number of "
                f"categories torch.multinomial supports), got {self.data_size}"
            )
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement must be a bool, got {replacement!r}")
        self.replacement = replacement
        if not replacement and self.num_samples > self.data_size:
            raise ValueError(
                f"num_samples ({self.num_samples}) must not exceed data_size ({self.data_size}) "
                "when replacement=False"
            )
        self._weights = torch.ones(self.data_size, dtype=torch.float64)

    @property
    def weights(self) -> Tensor:
        """Current (unnormalised) sampling weights, float64 of shape (N,), on CPU (a copy)."""
        return self._weights.clone()

    def update(self, weights: Tensor) -> None:
        """Replace the sampling weights, e.g. with :func:`minority_sampling_probs`.

        Args:
            weights: Shape (N,), finite, non-negative, positive sum; need not be normalised.
        """
        w = _check_weights(weights, "weights", self.data_size)
        w = w.detach().to(device="cpu", dtype=torch.float64).clone()
        if not self.replacement:
            n_pos = int((w > 0).sum())
            if n_pos < self.num_samples:
                raise ValueError(
                    f"weights has only {n_pos} positive entries, fewer than num_samples "
                    f"({self.num_samples}) required when replacement=False"
                )
        self._weights = w
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("minority sampler weights updated: %s", weight_spread(w))

    def _draw(self, generator: torch.Generator) -> Tensor:
        return torch.multinomial(
            self._weights, self.num_samples, self.replacement, generator=generator
        )

    def state_dict(self) -> dict[str, Any]:
        """Sampler state: weights, seed, epoch, sizes, replacement and world layout."""
        state = self._base_state()
        state["replacement"] = self.replacement
        state["weights"] = self._weights.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore weights, seed and epoch; sizes and ``replacement`` must match.

        The world layout (``num_replicas``, ``rank``) is kept as constructed, so a run may resume
        with another world size; the global stream does not depend on it.
        """
        if "weights" not in state_dict:
            raise ValueError("state_dict is missing 'weights'")
        if bool(state_dict.get("replacement", self.replacement)) != self.replacement:
            raise ValueError(
                f"state_dict['replacement'] = {state_dict['replacement']} does not match this "
                f"sampler's replacement = {self.replacement}"
            )
        self._load_base_state(state_dict)
        self.update(state_dict["weights"])


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
