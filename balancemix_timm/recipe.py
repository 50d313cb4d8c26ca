"""The BalanceMix glue every front end shares: engine, recorded predictions, epoch end.

A front end (the trainer's ``method=balancemix``, the ML-Decoder plugin, a custom timm-style
loop) owns its model, optimiser and loaders; :class:`BalanceMixRecipe` owns what BalanceMix adds
to them, built from one :class:`~balancemix_timm.options.BalanceMixOptions`:

.. code-block:: python

    recipe = BalanceMixRecipe(labels, BalanceMixOptions(), seed=0, device=device)
    transforms = recipe.view_transforms(train_tf, eval_tf)   # extra views of each item
    for epoch in range(epochs):
        recipe.set_epoch(epoch)                               # samplers of recipe.paired_sampler
        for batch in loader:                                  # MixedBatch, views of the random half
            y = recipe.engine.mixed_targets(batch.index_r, batch.index_m, batch.lam, device=device)
            loss = recipe.engine.loss(model(batch.input), y, batch.index_r)   # Eq. 10
            ...                                               # backward, optimiser step
            recipe.record_batch(batch, predict)               # no-grad views (Eq. 2, 6, 9)
        recipe.end_epoch(epoch)                               # Eq. 6-9, sampler (Eq. 2-4)

``predict(views, count)`` is the front end's no-grad forward: ``(V, B, C, H, W)`` views (the
first ``count`` of ``B``, all when None) to ``(V, count, K)`` float32 probabilities
(:func:`~balancemix_timm.utils.view_probabilities`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .engine import BalanceMixEngine, RefreshReport
from .options import BalanceMixOptions
from .sampling import PairedSampler, ShardedRandomSampler
from .utils import EPOCH_PASS_SEED_OFFSET

__all__ = ["BalanceMixRecipe", "Predict", "stack_views"]

#: ``predict(views, count)``: ``(V, B, C, H, W)`` -> ``(V, count or B, K)`` probabilities.
Predict = Callable[[Tensor, "int | None"], Tensor]


def stack_views(views: Tensor | Sequence[Tensor]) -> Tensor:
    """``(V, B, C, H, W)`` views from what a loader yields: a list of ``V`` ``(B, C, H, W)``
    tensors, a ``(V, B, C, H, W)`` tensor, or one ``(B, C, H, W)`` view.

    Raises:
        ValueError: a tensor of another rank.
    """
    if isinstance(views, (list, tuple)):
        return torch.stack(list(views))
    if views.ndim == 5:
        return views
    if views.ndim == 4:
        return views[None]
    raise ValueError(f"views must be (B, C, H, W), (V, B, C, H, W) or a list of views, got shape {tuple(views.shape)}")


class BalanceMixRecipe:
    """BalanceMix's engine and the per-step and per-epoch calls around it (Alg. 1).

    Args:
        labels: ``(N, K)`` given labels of the training set.
        options: The options (default: ``BalanceMixOptions()``, the default preset).
        base_loss: Element-wise loss of Eq. 10 overriding ``options.base_loss`` (a callable, e.g.
            ASL with other gammas); None uses ``options.base_loss``.
        seed: Seed of the samplers (the front end's seed).
        num_replicas, rank: Distributed sharding of the sampler streams.
        device: Where the engine's tables live (default CPU; give the training device).
        gmm_device: Where the GMM fits compute (default: where the tables live).
        identical_views: The front end's training transform augments nothing (it is its
            evaluation transform, e.g. the trainer with ``randaugment=False, cutout=False``), so
            every view and the image are one tensor: one input per recorded item is forwarded
            and its probabilities stand for the ``num_views`` views (whose mean they are,
            exactly) and for the image. Eq. 2, 6 and 9 read the same values at
            ``1 / num_recorded_views`` of the no-grad forwards (``docs/performance.md``).

    Attributes:
        engine: The :class:`~balancemix_timm.engine.BalanceMixEngine` engine.
        options: The options.
        view_time: Seconds spent recording predictions this epoch (reset by :meth:`set_epoch`).
    """

    def __init__(
        self,
        labels: Tensor,
        options: BalanceMixOptions | None = None,
        *,
        base_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        device: str | torch.device | None = None,
        gmm_device: str | torch.device | None = None,
        identical_views: bool = False,
    ) -> None:
        self.identical_views = bool(identical_views)
        self.options = BalanceMixOptions() if options is None else options
        if not isinstance(self.options, BalanceMixOptions):
            raise ValueError(f"options must be BalanceMixOptions, got {type(self.options).__name__}")
        kwargs = self.options.engine_kwargs()
        if base_loss is not None:
            kwargs["base_loss"] = base_loss
        if gmm_device is not None:
            kwargs["gmm_options"]["device"] = gmm_device
        self.seed = int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.engine = BalanceMixEngine(labels, **kwargs, seed=self.seed, num_replicas=num_replicas, rank=rank,
                                 device=device)
        self.view_time = 0.0

    # ------------------------------------------------------------------ views
    @property
    def image_view(self) -> bool:
        """Whether f(x) of Eq. 2 and 6 is the un-augmented image (``confidence_input="image"``)."""
        return self.options.confidence_input == "image"

    @property
    def records_per_step(self) -> bool:
        """Whether predictions are recorded after each step (``label_source="views"``)."""
        return self.options.label_source == "views"

    @property
    def num_recorded_views(self) -> int:
        """Inputs forwarded per recorded sample: ``num_views`` views, then the image if f(x);
        one with ``identical_views``."""
        return 1 if self.identical_views else self.options.num_views + int(self.image_view)

    @property
    def num_extra_views(self) -> int:
        """Extra views each training item carries (0 with ``label_source="epoch_pass"``)."""
        return self.num_recorded_views if self.records_per_step else 0

    def view_transforms(self, train_transform: Any, eval_transform: Any) -> list[Any]:
        """The transforms of the recorded inputs: ``num_views`` times ``train_transform``, then
        ``eval_transform`` (the un-augmented image) with ``confidence_input="image"``; only
        ``eval_transform`` with ``identical_views``. The items of an epoch pass's data set carry
        these."""
        if self.identical_views:
            return [eval_transform]
        return [train_transform] * self.options.num_views + ([eval_transform] if self.image_view else [])

    def extra_view_transforms(self, train_transform: Any, eval_transform: Any) -> list[Any]:
        """The transforms of the extra views each *training* item carries after its trained view:
        :meth:`view_transforms` with ``label_source="views"``, none with ``"epoch_pass"``."""
        return self.view_transforms(train_transform, eval_transform) if self.records_per_step else []

    def num_viewed(self, batch_size: int) -> int:
        """How many instances of a random batch of ``batch_size`` are recorded (``view_fraction``):
        ``ceil(f * B)``, at least one."""
        f = float(self.options.view_fraction)
        return batch_size if f >= 1.0 else min(batch_size, max(1, math.ceil(f * batch_size - 1e-9)))

    # ------------------------------------------------------------------ epoch control
    @property
    def paired_sampler(self) -> PairedSampler:
        """The engine's random + minority (or second random) sampler pair."""
        return self.engine.paired_sampler

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``: the engine's samplers, and the epoch's timer."""
        self.engine.set_epoch(epoch)
        self.view_time = 0.0

    # ------------------------------------------------------------------ recording
    def record(self, index: Tensor, probs: Tensor) -> None:
        """Record ``(V, B, K)`` probabilities of ``index`` ``(B,)``: the ``num_views`` views,
        then, with ``confidence_input="image"``, the image (Eq. 2 and 6's f(x)); with
        ``identical_views`` the one input's ``(1, B, K)``, which stands for all of them.

        Raises:
            ValueError: ``V`` is not :attr:`num_recorded_views` (e.g. the trained view passed
                along, or the image missing).
        """
        if probs.ndim != 3 or probs.shape[0] != self.num_recorded_views:
            what = ("the image, which stands for every view (identical_views)" if self.identical_views else
                    f"{self.options.num_views} views{' then the image' if self.image_view else ''}")
            raise ValueError(f"probs must be (V, B, K) with V = {self.num_recorded_views} ({what}), "
                             f"got shape {tuple(probs.shape)}")
        if self.identical_views:
            # The mean of num_views copies of p is p, bit for bit, and f(x) is p.
            self.engine.record(index, probs[0])
        elif self.image_view:
            self.engine.record(index, probs[:-1], image_probs=probs[-1])
        else:
            self.engine.record(index, probs)

    @torch.no_grad()
    def record_batch(self, batch: Any, predict: Predict) -> None:
        """After the optimiser step, record the random instances' views (``label_source="views"``;
        a no-op otherwise).

        Args:
            batch: The :class:`~balancemix_timm.mixing.MixedBatch` just trained on; its
                ``view_r`` is ``(V', B, C, H, W)`` with ``V' >= num_recorded_views``.
            predict: The front end's no-grad forward (see the module).

        Raises:
            RuntimeError: the batch carries no views.
        """
        if not self.records_per_step:
            return
        if batch.view_r is None:
            raise RuntimeError("the batch carries no extra views (label_source='views' needs them)")
        t0 = time.perf_counter()
        m = self.num_viewed(len(batch.index_r))
        if self.options.views_for == "relabel" and not self.identical_views:
            self._record_candidates(batch.index_r[:m], batch.view_r[: self.num_recorded_views, :m], predict)
        else:
            count = None if m == len(batch.index_r) else m
            self.record(batch.index_r[:m], predict(batch.view_r[: self.num_recorded_views], count))
        self.view_time += time.perf_counter() - t0

    def _record_candidates(self, index: Tensor, views: Tensor, predict: Predict) -> None:
        """``views_for="relabel"``: the image of every instance and the ``num_views`` views of
        Eq. 9's candidates (:meth:`~balancemix_timm.engine.BalanceMixEngine.view_candidates`),
        forwarded in one call as a single ``(1, B + V * S, C, H, W)`` view; the others are
        recorded by ``record_image``."""
        v = self.options.num_views
        # Positions on the indices' device; indexing a tensor on another device with them is allowed.
        chosen = self.engine.view_candidates(index).to(index.device)
        picked, rest = chosen.nonzero().squeeze(1), (~chosen).nonzero().squeeze(1)
        inputs = torch.cat([views[v], views[:v, picked].flatten(0, 1)])
        probs = predict(inputs[None], None)[0]
        b, s = len(index), picked.numel()
        image, view_probs = probs[:b], probs[b:].reshape(v, s, probs.shape[-1])
        if rest.numel():
            self.engine.record_image(index[rest], image[rest])
        if s:
            self.engine.record(index[picked], view_probs, image_probs=image[picked])

    def epoch_pass_sampler(self, num_samples: int, epoch: int) -> ShardedRandomSampler:
        """The order of the epoch pass over ``num_samples`` items (this rank's shard)."""
        sampler = ShardedRandomSampler(num_samples, seed=self.seed + EPOCH_PASS_SEED_OFFSET,
                                       num_replicas=self.num_replicas, rank=self.rank)
        sampler.set_epoch(epoch)
        return sampler

    @torch.no_grad()
    def record_epoch_pass(self, batches: Iterable[tuple[Any, Tensor]], predict: Predict) -> None:
        """Record every ``(views, index)`` of ``batches`` (``label_source="epoch_pass"``): views
        as :func:`stack_views` reads them, ``num_recorded_views`` of them per item."""
        t0 = time.perf_counter()
        for views, index in batches:
            self.record(index, predict(stack_views(views), None))
        self.view_time += time.perf_counter() - t0

    # ------------------------------------------------------------------ epoch end
    def end_epoch(self, epoch: int) -> tuple[RefreshReport, float]:
        """Merge the ranks' records and refresh (Eq. 6-9, sampler Eq. 2-4).

        Returns:
            The engine's :class:`~balancemix_timm.engine.RefreshReport` and the refresh's
            seconds.
        """
        if not self.records_per_step and self.engine.epoch_records == 0:
            raise RuntimeError(
                "label_source='epoch_pass': nothing was recorded this epoch; call "
                "record_epoch_pass(...) over the training set before end_epoch()"
            )
        t0 = time.perf_counter()
        self.engine.sync_records()
        report = self.engine.refresh(epoch=epoch)
        return report, time.perf_counter() - t0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The engine's state (CPU tensors)."""
        return self.engine.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the engine refuses other engine options)."""
        self.engine.load_state_dict(state_dict)
