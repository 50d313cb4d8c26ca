"""The training-method interface: how one batch becomes a loss.

A :class:`TrainingMethod` is built from a :class:`~balancemix_timm.methods.context.MethodContext`
(model, labels, recipe) and owns what differs between BCE, BalanceMix and the baselines: which
loader it consumes (plain or paired random/second-stream batches), its loss, any extra networks,
its post-step and epoch-end hooks and its own checkpoint state. The application that drives it
(``balancemix_timm.trainer``) owns data, backward, gradient clipping, optimiser, AMP scaler,
schedule, EMA, evaluation and checkpoints. One step is::

    loss = method.training_step(batch)       # forward + loss, with gradient
    ...backward, clip, optimiser step over [model, *method.extra_modules()]...
    method.after_step(batch)                 # anything that needs the updated weights
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..mixing import mix_targets
from ..sampling import PairedSampler, ShardedRandomSampler
from ..utils import SECOND_SAMPLER_SEED_OFFSET
from .context import MethodContext

__all__ = ["TrainingMethod", "MixupMethod", "MethodContext"]

_logger = logging.getLogger(__name__)


class TrainingMethod:
    """Base class of every ``method=`` of the trainer.

    Class attributes:
        name: The ``method=`` value.
        paired: True if the method consumes :class:`~balancemix_timm.mixing.MixedBatch`
            batches drawn by :attr:`paired_sampler` (random stream + second stream), False for
            plain ``(image, target, index)`` batches drawn by a random sampler.

    Args:
        ctx: What the method is built from (``cfg``, ``model``, ``device``, ``given_labels``,
            ...; see :class:`~balancemix_timm.methods.context.MethodContext`).

    Raises:
        ValueError: ``cfg.method_options`` names an option the method does not take.
    """

    name = "base"
    paired = False
    #: Option names this method reads from ``cfg.method_options`` (others are an error).
    option_names: tuple[str, ...] = ()

    def __init__(self, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        unknown = sorted(set(self.cfg.method_options) - set(self.option_names))
        if unknown:
            raise ValueError(
                f"method {self.name!r} does not take method_options {unknown}; "
                f"it takes {list(self.option_names) or 'none'}"
            )
        self.options: dict[str, Any] = dict(self.cfg.method_options)
        self.epoch = 0

    # ---------------------------------------------------------------- loaders
    @property
    def num_extra_views(self) -> int:
        """Extra augmented views each training item must carry (in ``MixedBatch.view_r``)."""
        return 0

    def extra_view_transforms(self, train_transform: Any, eval_transform: Any) -> list[Any]:
        """The transforms of the :attr:`num_extra_views` extra views (default: the train one)."""
        return [train_transform] * self.num_extra_views

    @property
    def paired_sampler(self) -> PairedSampler | None:
        """The paired sampler of a paired method (None for plain methods)."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch's loader is built."""
        self.epoch = int(epoch)

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: Any) -> Tensor:
        """Forward and loss of one batch.

        Returns:
            The scalar loss, with gradient, that the trainer back-propagates: one backward
            and one optimiser step over :attr:`MethodContext.model` and
            :meth:`extra_modules` follow. A method training several networks returns the
            sum of their losses; each loss must then depend on its own network's parameters
            only, so that the sum gives every network exactly its own gradient.
        """
        raise NotImplementedError

    def after_step(self, batch: Any) -> None:
        """Called with the same batch after the optimiser step (the weights are updated)."""

    def logged_loss(self, loss: Tensor) -> Tensor:
        """The figure logged as the step's training loss, from what :meth:`training_step`
        returned (default: that loss, detached)."""
        return loss.detach()

    def extra_modules(self) -> list[nn.Module]:
        """Networks besides :attr:`MethodContext.model` that the trainer's optimiser trains.

        Their parameters join the model's in the one optimiser (same learning rate, schedule
        and weight decay rule); gradient clipping applies to each network separately. The
        method saves their weights in :meth:`state_dict`; the optimiser state is the
        trainer's. Not EMA-tracked, not validated.
        """
        return []

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Epoch-end hook (after the last step, before validation); returns figures to log."""
        return {}

    def finish(self, run_dir: Path) -> dict[str, Any]:
        """End-of-training outputs; returns entries for the run summary."""
        return {}

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.epoch = int(state_dict.get("epoch", 0))

    # ---------------------------------------------------------------- helpers
    def forward(self, x: Tensor, model: torch.nn.Module | None = None) -> Tensor:
        """Float32 logits ``(B, K)`` of ``model`` (default: the context's, DDP-wrapped) for
        ``x`` ``(B, C, H, W)`` under autocast."""
        model = self.ctx.ddp_model if model is None else model
        with self.ctx.autocast():
            logits = model(x.to(self.ctx.device, non_blocking=True))
        return logits.float()


class MixupMethod(TrainingMethod):
    """A method trained on Mixup batches of two random streams (the paper's baselines).

    Every baseline except BCE uses Mixup in the paper. Subclasses implement
    :meth:`mixed_loss`; targets are ``lam * y_a + (1 - lam) * y_b`` of the given labels.
    """

    paired = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        n = len(ctx.given_labels)
        kw = dict(num_replicas=ctx.world_size, rank=ctx.rank)
        self._paired = PairedSampler(
            ShardedRandomSampler(n, seed=self.cfg.seed, **kw),
            ShardedRandomSampler(n, seed=self.cfg.seed + SECOND_SAMPLER_SEED_OFFSET, **kw),
        )
        self._labels_cache: Tensor | None = None

    @property
    def paired_sampler(self) -> PairedSampler:
        return self._paired

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._paired.set_epoch(epoch)

    def labels_on_device(self) -> Tensor:
        """The given labels as an (N, K) float tensor on the training device (cached)."""
        if self._labels_cache is None:
            self._labels_cache = self.ctx.given_labels.to(self.ctx.device).float()
        return self._labels_cache

    def mixed_targets(self, batch: Any) -> Tensor:
        labels = self.labels_on_device()
        dev = self.ctx.device
        lam = batch.lam.to(dev) if isinstance(batch.lam, Tensor) else batch.lam
        return mix_targets(labels[batch.index_r.to(dev)], labels[batch.index_m.to(dev)], lam)

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        """Scalar loss of ``logits`` (B, K) against mixed ``targets`` (B, K)."""
        raise NotImplementedError

    def training_step(self, batch: Any) -> Tensor:
        targets = self.mixed_targets(batch)
        logits = self.forward(batch.input)
        return self.mixed_loss(logits, targets, batch)

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), sampler=self._paired.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "sampler" in state_dict:
            self._paired.load_state_dict(state_dict["sampler"])
