"""The engine's refresh report and its tables as a whole: placement, distributed merge, checkpoints.

:class:`EngineState` holds the methods of :class:`~balancemix_timm.engine.BalanceMixEngine` that read
or write its per-sample tables as a whole: the all-reduce of each epoch's records across ranks
and the bit-for-bit checkpoint (``config`` / ``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["EngineState", "RefreshReport"]


@dataclass
class RefreshReport:
    """What one epoch-end refresh did (all fractions over the recorded labels).

    Attributes:
        epoch: The epoch that just ended.
        applied: Whether the refined labels are used from the next epoch on (after warm-up).
        clean_fraction: Fraction of labels with ``p_G > 0.5``.
        relabeled_fraction: Fraction of labels re-labeled by Eq. 9.
        ambiguous_fraction: Fraction of ambiguous labels.
        changed_fraction: Fraction of labels whose refined value differs from the given one.
        sampler: The minority sampler's weight spread (see :func:`weight_spread`).
        unseen: Number of samples with no recorded prediction yet.
    """

    epoch: int
    applied: bool
    clean_fraction: float
    relabeled_fraction: float
    ambiguous_fraction: float
    changed_fraction: float
    sampler: dict[str, float]
    unseen: int

    def as_dict(self) -> dict[str, Any]:
        """Flat dictionary for logging (``sampler_*`` keys for the spread)."""
        out = {k: v for k, v in self.__dict__.items() if k != "sampler"}
        out.update({f"sampler_{k}": v for k, v in self.sampler.items()})
        return out


class EngineState:
    """Placement, distributed-merge and checkpoint methods of the engine's per-sample tables
    (set by :class:`~balancemix_timm.engine.BalanceMixEngine`'s constructor)."""

    _TABLES = (
        "given_labels", "refined_labels", "state", "clean_prob", "probs", "view_mean", "losses", "seen", "_epoch_seen",
    )

    def to(self, device: str | torch.device) -> EngineState:
        """Move every per-sample table to ``device`` (in place, like ``nn.Module.to``); returns self."""
        self.device = torch.device(device)
        for name in self._TABLES:
            setattr(self, name, getattr(self, name).to(self.device))
        self._device_cache = {}
        return self

    def cpu_view(self) -> EngineState:
        """A shallow copy whose tables are on the CPU (for reports); ``self`` is unchanged."""
        return self if self.device.type == "cpu" else copy.copy(self).to("cpu")

    def _on(self, name: str, device: torch.device) -> Tensor:
        """A per-sample table on ``device``: the table itself on the engine's device, else a
        copy made once per refresh (no per-step copies)."""
        table = getattr(self, name)
        if _same_device(table.device, device):
            return table
        cache = self._device_cache.setdefault(device, {})
        if name not in cache:
            cache[name] = _move(table, device)
        return cache[name]

    # ------------------------------------------------------------------ distributed
    def sync_records(self) -> None:
        """Merge the predictions recorded this epoch on every rank (call before :meth:`refresh`).

        Each rank records only its shard; an all-reduce of (probs x mask, mask) gives every rank
        the same table (samples drawn on several ranks through padding get the mean).
        No-op when torch.distributed is not initialised.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        local = self._epoch_seen.to(device=device, dtype=torch.float64)
        mask = local.clone()
        dist.all_reduce(mask)
        got = mask > 0
        got_here = got.to(self.device)
        viewed_local = self._epoch_viewed.to(device=device, dtype=torch.float64)
        viewed = viewed_local.clone()
        dist.all_reduce(viewed)
        for name, local_mask, total in (("probs", local, mask), ("view_mean", viewed_local, viewed)):
            has = total > 0
            masked = getattr(self, name).to(device=device, dtype=torch.float64) * local_mask[:, None]
            dist.all_reduce(masked)
            merged = (masked[has] / total[has][:, None]).to(self.device, torch.float32)
            getattr(self, name)[has.to(self.device)] = merged
        self.seen |= got_here
        self._epoch_seen |= got_here
        self._epoch_viewed |= (viewed > 0).to(self.device)

    # ------------------------------------------------------------------ checkpointing
    def config(self) -> dict[str, Any]:
        """The options that must match when a checkpoint is loaded."""
        return dict(
            num_samples=self.num_samples_total,
            num_classes=self.num_classes,
            alpha=self.alpha,
            eps=self.eps,
            warmup_epochs=self.warmup_epochs,
            minority_sampler=self.use_minority_sampler,
            label_management=self.label_management,
            sampler_score=self.sampler_score,
            sampler_temperature=self.sampler_temperature,
            sampler_labels=self.sampler_labels,
            clean_threshold=self.clean_threshold,
            clean_if_agrees=self.clean_if_agrees,
            record_momentum=self.record_momentum,
            managed_labels=self.managed_labels,
            seed=self.seed,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-for-bit (tensors on CPU, whatever :attr:`device`)."""
        def cpu(t: Tensor) -> Tensor:
            return t.detach().to("cpu", copy=True)

        return dict(
            config=self.config(),
            given_labels=cpu(self.given_labels),
            refined_labels=cpu(self.refined_labels),
            state=cpu(self.state),
            clean_prob=cpu(self.clean_prob),
            probs=cpu(self.probs),
            view_mean=cpu(self.view_mean),
            losses=cpu(self.losses),
            seen=cpu(self.seen),
            epoch_seen=cpu(self._epoch_seen),
            epoch=self.epoch,
            applied=self.applied,
            history=list(self.history),
            random_sampler=self.random_sampler.state_dict(),
            second_sampler=self.second_sampler.state_dict(),
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; refuses a checkpoint of another configuration."""
        cfg = dict(state_dict.get("config", {}))
        mine = self.config()
        diff = {k: (cfg.get(k), v) for k, v in mine.items() if cfg.get(k) != v}
        if diff:
            pretty = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"engine checkpoint was written with another configuration ({pretty})")
        given = state_dict["given_labels"]
        if not torch.equal(given.to(self.device, torch.uint8), self.given_labels):
            raise ValueError(
                "engine checkpoint holds different given labels than this data set "
                "(another data set, split or noise seed?)"
            )

        def load(key: str, dtype: torch.dtype) -> Tensor:
            return state_dict[key].detach().to(self.device, dtype, copy=True)

        self.refined_labels = load("refined_labels", torch.uint8)
        self.state = load("state", torch.int8)
        self.clean_prob = load("clean_prob", torch.float32)
        self.probs = load("probs", torch.float32)
        self.view_mean = load("view_mean", torch.float32)
        self.losses = load("losses", torch.float32)
        self.seen = load("seen", torch.bool)
        self._epoch_seen = load("epoch_seen", torch.bool)
        # the views of a checkpoint's epoch count as recorded (record_image is called mid-epoch only)
        self._epoch_viewed = self._epoch_seen.clone()
        self.epoch = int(state_dict["epoch"])
        self.applied = bool(state_dict["applied"])
        self.history = list(state_dict.get("history", []))
        self.random_sampler.load_state_dict(state_dict["random_sampler"])
        self.second_sampler.load_state_dict(state_dict["second_sampler"])
        self._device_cache.clear()


def _move(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; asynchronous host-to-device copies, synchronous copies to the host
    (a non-blocking device-to-host copy may be read before it lands)."""
    return t.to(device, non_blocking=device.type != "cpu")


def _same_device(a: torch.device, b: torch.device) -> bool:
    """True if ``b`` names ``a`` (``cuda`` without an index names the current CUDA device)."""
    if a.type != b.type:
        return False
    if a.index == b.index or a.type == "cpu":
        return True
    if a.type == "cuda" and (a.index is None or b.index is None):
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return False
