"""Epoch-seeded, shardable samplers: the base of both BalanceMix samplers and the random one.

The samplers here follow :class:`torch.utils.data.DistributedSampler`: call
``set_epoch(epoch)`` before every epoch; the epoch's indices are drawn by an explicit
:class:`torch.Generator` seeded from ``(sampler kind, seed, epoch)``, so every rank draws the same
global stream, pads it (by wrapping) to a multiple of ``num_replicas`` and keeps the positions
``rank::num_replicas``. This also gives the weighted sampler the distributed support that
:class:`torch.utils.data.WeightedRandomSampler` lacks (pytorch/pytorch#77154).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["ShardedRandomSampler"]


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
