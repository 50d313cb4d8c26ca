"""The BalanceMix engine: per-sample state, samplers, mixing, loss and the epoch-end refresh.

A training loop drives one :class:`BalanceMixEngine` object:

.. code-block:: python

    engine = BalanceMixEngine(train_labels, alpha=4.0, eps=0.975, warmup_epochs=10)
    for epoch in range(start_epoch, epochs):
        engine.set_epoch(epoch)                       # samplers + mixer for this epoch
        for batch in loader:                          # built on engine.paired_sampler
            x = batch.input                           # images already mixed (Eq. 5)
            y = engine.mixed_targets(batch.index_r, batch.index_m, batch.lam)
            loss = engine.loss(model(x), y, batch.index_r)        # Eq. 10
            ...
            engine.record(batch.index_r, view_probs)  # no-grad views, Eq. 2/6/9 inputs
        engine.refresh()                              # GMMs (Eq. 6-8), Eq. 9, sampler (Eq. 2-4)

Most loops drive it through :class:`~balancemix_timm.recipe.BalanceMixRecipe`, which builds it
from :class:`~balancemix_timm.options.BalanceMixOptions` and records the views; its keyword
defaults are those options' defaults (the default preset).

The engine owns the (N, K) state of the whole training set: the given labels, the latest
recorded probabilities and losses, the clean probabilities, the refined labels and the label
states. Its switches make every row of the paper's Table 5 a configuration (see
:data:`ABLATIONS`).

Performance: the tables live on ``device`` (give the training device: ~98 MB at MS-COCO scale,
see ``docs/performance.md``), the epoch-end refresh computes there, and the per-step calls
(:meth:`BalanceMixEngine.mixed_targets`, :meth:`BalanceMixEngine.loss`, :meth:`BalanceMixEngine.record`) copy no
per-sample state between host and device and never synchronise an accelerator: value checks
that would need a device read are made only on CPU tensors, and non-finite recorded
predictions on an accelerator are reported by the next :meth:`BalanceMixEngine.refresh`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_tensor,
    check_unit_interval,
)
from .engine_state import EngineState, RefreshReport, _move
from .gmm import LabelGMM
from .loss import balancemix_loss
from .mixing.interpolate import _check_lam, _interpolate
from .options import OPTION_DEFAULTS
from .refine import LabelState, clean_if_agrees, refine_labels
from .sampling import (
    MinoritySampler,
    PairedSampler,
    ShardedRandomSampler,
    minority_sampling_probs,
    weight_spread,
)
from .utils import SECOND_SAMPLER_SEED_OFFSET

__all__ = ["BalanceMixEngine", "ABLATIONS", "LABEL_MANAGEMENT_LEVELS", "RefreshReport"]

_logger = logging.getLogger(__name__)

#: Label-management levels, in the order Table 5 adds them.
LABEL_MANAGEMENT_LEVELS = ("none", "clean", "relabel", "full")

#: Table 5's rows (beyond plain BCE, which uses no engine) as engine keyword arguments.
ABLATIONS: dict[str, dict[str, Any]] = {
    "mixup": dict(minority_sampler=False, label_management="none"),
    "minority": dict(minority_sampler=True, label_management="none"),
    "clean": dict(minority_sampler=True, label_management="clean"),
    "relabel": dict(minority_sampler=True, label_management="relabel"),
    "full": dict(minority_sampler=True, label_management="full"),
}

_EPS = 1e-7
_D = OPTION_DEFAULTS  # keyword defaults: declared once in balancemix_timm.options

class BalanceMixEngine(EngineState):
    """BalanceMix's training-time state machine (Alg. 1 of the paper).

    Args:
        labels: Given (possibly noisy) training labels, shape (N, K), binary: a tensor or a NumPy
            array (as cleanlab takes them).
        alpha: Mixup Beta(alpha, alpha) parameter of Eq. 5 (paper: 4.0). 0 disables mixing;
            the trainer then feeds un-mixed random batches.
        eps: Re-labeling confidence threshold of Eq. 9, in (0.5, 1] (paper: 0.975; 0.55 for
            the single-positive setting).
        warmup_epochs: Epochs of plain BCE on minority-augmented batches with the given labels
            before label management starts (paper: VOC 5, COCO 10).
        minority_sampler: Pair each random batch with a minority batch (Eq. 2-4). False pairs
            it with a second random batch, which is plain Mixup (Table 5, row 2).
        label_management: ``"none"`` (given labels, weight 1), ``"clean"`` (only labels with
            p_G > 0.5 are trained on), ``"relabel"`` (clean + re-labeled), ``"full"`` (clean +
            re-labeled + ambiguous weighted by p_G, Eq. 10). The rows of Table 5.
        sampler_score: ``"paper"`` (Eq. 3) or ``"positive"``; see
            :func:`~balancemix_timm.sampling.minority_sampling_probs`.
        sampler_temperature: Exponent T in p ∝ Score^-T (1.0 is the paper).
        sampler_labels: Which labels Eq. 2-3 use: ``"given"`` (the data set's ỹ, literal) or
            ``"refined"`` (the current refined labels).
        base_loss: Elementwise loss of Eq. 10: ``"bce"`` (paper), ``"asl"``, ``"hill"`` or a callable.
        gmm_options: Keyword options forwarded to :func:`~balancemix_timm.gmm.clean_probability`.
        clean_threshold: p_G above which a label is clean (paper: 0.5).
        clean_if_agrees: A label the recorded f(x) agrees with (BCE loss below ln 2) is clean
            whatever its p_G (see :func:`~balancemix_timm.refine.clean_if_agrees`). The paper
            has no such rule (preset ``"paper"``: False); the default preset's value is the
            default. The defaults of this option and the next two are the ``"default"``
            preset's (:data:`balancemix_timm.options.PRESETS`; ``engine_preset("paper")`` gives the paper's).
        record_momentum: m in [0, 1): a sample's recorded probabilities become
            ``m * previous + (1 - m) * new`` once it has a record (an exponential moving
            average over epochs, a temporal ensemble); 0 keeps the latest only (the paper).
        managed_labels: ``"all"`` (the paper) manages positive and negative labels;
            ``"negative"`` treats every given positive as clean (p_G = 1: never down-weighted
            or re-labeled), the assumption of the missing-label (single positive) setting, in
            which only negatives can be wrong.
        seed: Seed of both samplers' per-epoch generators.
        num_samples: Samples per epoch of each sampler (default N).
        num_replicas: World size for sharding the sampler streams (DDP).
        rank: This process's rank.
        device: Where the per-sample tables live and the refresh computes (default CPU). Give
            the training device so that no step copies state between host and device;
            :meth:`state_dict` always returns CPU tensors, so checkpoints move freely.

    Attributes (the (N, K) and (N,) tables are on :attr:`device`):
        device: The device of the tables.
        given_labels: (N, K) uint8, the labels the data set gives.
        refined_labels: (N, K) uint8, labels after Eq. 9 (equal to the given ones until the
            first post-warm-up refresh).
        state: (N, K) int8 :class:`~balancemix_timm.refine.LabelState` of every label.
        clean_prob: (N, K) float32 p_G of Eq. 8 (1 before the first refresh).
        probs: (N, K) float32, latest recorded f(x) of Eq. 2 and 6: the un-augmented image's
            probabilities where :meth:`record` was given ``image_probs``, else the mean of the
            views.
        view_mean: (N, K) float32, latest recorded mean of the augmented views' probabilities
            (Eq. 9's ensemble).
        losses: (N, K) float32, BCE of ``probs`` against the given labels (Eq. 6).
        seen: (N,) bool, whether a sample has a recorded prediction.
        last_gmm: The :class:`~balancemix_timm.gmm.LabelGMM` fitted by the last
            :meth:`refresh` (None before it, with ``label_management="none"`` and after
            loading a checkpoint). After a refresh, :attr:`losses` holds the losses it was fed
            (of the seen samples), :attr:`clean_prob` its posteriors and :attr:`state` the
            resulting label states: what the diagnostics read, with no recomputation.
    """

    def __init__(
        self,
        labels: Tensor | np.ndarray,
        *,
        alpha: float = _D["alpha"],
        eps: float = _D["eps"],
        warmup_epochs: int = _D["warmup_epochs"],
        minority_sampler: bool = _D["minority_sampler"],
        label_management: Literal["none", "clean", "relabel", "full"] = _D["label_management"],
        sampler_score: Literal["paper", "positive"] = _D["sampler_score"],
        sampler_temperature: float = _D["sampler_temperature"],
        sampler_labels: Literal["given", "refined"] = _D["sampler_labels"],
        base_loss: str | Callable[[Tensor, Tensor], Tensor] = _D["base_loss"],
        gmm_options: Mapping[str, Any] | None = None,
        clean_threshold: float = 0.5,
        clean_if_agrees: bool = _D["clean_if_agrees"],
        record_momentum: float = _D["record_momentum"],
        managed_labels: Literal["all", "negative"] = _D["managed_labels"],
        seed: int = 0,
        num_samples: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if isinstance(labels, np.ndarray):  # as cleanlab's label arrays
            labels = torch.from_numpy(labels)
        labels = check_tensor(labels, "labels")
        check_ndim(labels, "labels", 2)
        labels = check_binary(labels, "labels")
        if labels.shape[0] == 0:
            raise ValueError("labels must hold at least one sample, got an empty (0, K) tensor")
        if alpha < 0 or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        check_unit_interval(eps, "eps", low=0.5, high=1.0, low_open=True)
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}")
        if label_management not in LABEL_MANAGEMENT_LEVELS:
            raise ValueError(
                f"label_management must be one of {LABEL_MANAGEMENT_LEVELS}, got {label_management!r}"
            )
        if sampler_labels not in ("given", "refined"):
            raise ValueError(f"sampler_labels must be 'given' or 'refined', got {sampler_labels!r}")
        check_unit_interval(clean_threshold, "clean_threshold")
        if isinstance(record_momentum, bool) or not isinstance(record_momentum, (int, float)) \
                or not 0.0 <= float(record_momentum) < 1.0:
            raise ValueError(f"record_momentum must be a number in [0, 1), got {record_momentum!r}")

        self.alpha = float(alpha)
        self.eps = float(eps)
        self.warmup_epochs = int(warmup_epochs)
        self.use_minority_sampler = bool(minority_sampler)
        self.label_management = label_management
        self.sampler_score = sampler_score
        self.sampler_temperature = float(sampler_temperature)
        self.sampler_labels = sampler_labels
        self.base_loss = base_loss
        self.gmm_options = dict(gmm_options or {})
        self.clean_threshold = float(clean_threshold)
        self.clean_if_agrees = bool(clean_if_agrees)
        if managed_labels not in ("all", "negative"):
            raise ValueError(f"managed_labels must be 'all' or 'negative', got {managed_labels!r}")
        self.managed_labels = managed_labels
        self.record_momentum = float(record_momentum)
        self.seed = int(seed)
        try:
            self.device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must name a torch device, got {device!r}") from None

        n, k = labels.shape
        self.num_samples_total = n
        self.num_classes = k
        dev = self.device
        self.given_labels = labels.detach().to(dev, torch.uint8).clone()
        self.refined_labels = self.given_labels.clone()
        self.state = torch.zeros(n, k, dtype=torch.int8, device=dev)
        self.clean_prob = torch.ones(n, k, dtype=torch.float32, device=dev)
        self.probs = torch.full((n, k), 0.5, dtype=torch.float32, device=dev)
        self.view_mean = torch.full((n, k), 0.5, dtype=torch.float32, device=dev)
        self.losses = torch.zeros(n, k, dtype=torch.float32, device=dev)
        self.seen = torch.zeros(n, dtype=torch.bool, device=dev)
        self._epoch_seen = torch.zeros(n, dtype=torch.bool, device=dev)
        # samples whose augmented views were recorded this epoch (a subset of _epoch_seen: those
        # recorded by record_image() alone are not in it); Eq. 9 reads only these samples' views
        self._epoch_viewed = torch.zeros(n, dtype=torch.bool, device=dev)
        self.epoch = 0
        self.applied = False  # whether refined labels / states are in use
        self.history: list[dict[str, Any]] = []
        self.last_gmm: LabelGMM | None = None  # the mixtures fitted by the last refresh

        self.random_sampler = ShardedRandomSampler(
            n, num_samples, seed=self.seed, num_replicas=num_replicas, rank=rank
        )
        # The second stream: minority sampler, or a second (differently seeded) random one.
        if self.use_minority_sampler:
            self.second_sampler: MinoritySampler | ShardedRandomSampler = MinoritySampler(
                n, num_samples, seed=self.seed + SECOND_SAMPLER_SEED_OFFSET, num_replicas=num_replicas, rank=rank
            )
        else:
            self.second_sampler = ShardedRandomSampler(
                n, num_samples, seed=self.seed + SECOND_SAMPLER_SEED_OFFSET, num_replicas=num_replicas, rank=rank
            )
        self.paired_sampler = PairedSampler(self.random_sampler, self.second_sampler)
        self._device_cache: dict[torch.device, dict[str, Tensor]] = {}

    # ------------------------------------------------------------------ epoch control
    @property
    def epoch_records(self) -> int:
        """Samples recorded on this rank since :meth:`set_epoch` (reads the device once)."""
        return int(self._epoch_seen.sum())

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of both samplers (identical streams on every rank)."""
        self.epoch = int(epoch)
        self.paired_sampler.set_epoch(self.epoch)
        self._epoch_seen.zero_()
        self._epoch_viewed.zero_()

    def view_candidates(self, index: Tensor) -> Tensor:
        """Which samples of ``index`` Eq. 9 can act on at the end of this epoch, so whose
        augmented views are worth forwarding (the recipe's ``views_for="relabel"``).

        None when label management never re-labels (``"none"``, ``"clean"``) or before the last
        warm-up epoch (no refresh before it applies labels); every sample in the last warm-up
        epoch (the first applied refresh sees all views); later, the samples with at least one
        label that the last refresh did not find clean (clean probability at most
        ``clean_threshold``: Eq. 9's candidates).

        Args:
            index: ``(B,)`` sample indices.

        Returns:
            ``(B,)`` bool on the engine's device.
        """
        index = _move(check_tensor(index, "index").detach().long(), self.device)
        first = max(self.warmup_epochs - 1, 0)
        if self.label_management not in ("relabel", "full") or self.epoch < first:
            return torch.zeros(index.numel(), dtype=torch.bool, device=self.device)
        if self.epoch == first:
            return torch.ones(index.numel(), dtype=torch.bool, device=self.device)
        return (self.state[index] != int(LabelState.CLEAN)).any(1)

    # ------------------------------------------------------------------ per-step API
    def _train_labels_on(self, device: torch.device) -> Tensor:
        return self._on("refined_labels" if self.applied else "given_labels", device)

    def targets(self, index: Tensor, *, device: torch.device | None = None) -> Tensor:
        """Training labels of samples ``index`` (refined after warm-up), float32 (B, K)."""
        device = torch.device(device) if device is not None else index.device
        return self._train_labels_on(device)[_move(index, device)].float()

    def mixed_targets(
        self, index_r: Tensor, index_m: Tensor, lam: float | Tensor, *, device: torch.device | None = None
    ) -> Tensor:
        """Eq. 5's label side: lam * ỹ_R + (1 - lam) * ỹ_M with the labels refined first.

        Args:
            index_r: (B,) indices of the random-sampler instances.
            index_m: (B,) indices of the minority-sampler instances.
            lam: Mixing weight (float or (B,) tensor), >= 0.5.
            device: Where to build the targets (default: ``index_r.device``).

        Returns:
            (B, K) float32 soft targets.
        """
        device = torch.device(device) if device is not None else index_r.device
        if index_r.shape != index_m.shape or index_r.ndim != 1:
            raise ValueError(
                f"index_r and index_m must be (B,) tensors of one shape, got "
                f"{tuple(index_r.shape)} and {tuple(index_m.shape)}"
            )
        if isinstance(lam, Tensor) and lam.device.type != "cpu":
            if lam.ndim != 0 and tuple(lam.shape) != (index_r.shape[0],):
                raise ValueError(f"lam must be a number or a ({index_r.shape[0]},) tensor, got {tuple(lam.shape)}")
        else:  # values are checked where that needs no device read
            lam = _check_lam(lam, index_r.shape[0])
        table = self._train_labels_on(device)
        y_r = table[_move(index_r, device)].float()
        y_m = table[_move(index_m, device)].float()
        if isinstance(lam, Tensor):
            lam = _move(lam, device)
        # The rows come from the engine's own binary table: no value checks needed.
        return _interpolate(y_r, y_m, lam)

    def label_weights_state(self, index_r: Tensor, *, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """(state, clean_prob) of the random-sampler instances, which rule a mixed label."""
        device = torch.device(device) if device is not None else index_r.device
        idx = _move(index_r, device)
        return self._on("state", device)[idx], self._on("clean_prob", device)[idx]

    @property
    def ambiguous_mode(self) -> str:
        """How ambiguous labels enter Eq. 10 under the current configuration."""
        return "weight" if self.label_management == "full" else "drop"

    def loss(self, logits: Tensor, targets: Tensor, index_r: Tensor) -> Tensor:
        """Eq. 10 on a mixed batch; plain (base) loss with weight 1 during warm-up.

        Args:
            logits: (B, K) model outputs on the mixed images.
            targets: (B, K) mixed soft targets from :meth:`mixed_targets`.
            index_r: (B,) random-sampler indices (their reliability rules the mixed labels).

        Returns:
            Scalar loss (per-sample sum over labels, mean over the batch).

        Values (finite logits, targets in [0, 1]) are checked on CPU only: on an accelerator
        that would synchronise every step, and a non-finite logit gives a non-finite loss,
        which the trainer refuses.
        """
        logits = check_tensor(logits, "logits")
        validate = logits.device.type == "cpu"
        if not self.applied:  # warm-up: every label clean, weight 1
            return balancemix_loss(logits, targets, base_loss=self.base_loss, validate=validate)
        state, clean_prob = self.label_weights_state(index_r, device=logits.device)
        return balancemix_loss(
            logits, targets, state, clean_prob, base_loss=self.base_loss, ambiguous=self.ambiguous_mode,
            validate=validate,
        )

    @torch.no_grad()
    def record(self, index: Tensor, view_probs: Tensor, *, image_probs: Tensor | None = None) -> None:
        """Store the latest predictions of samples ``index``.

        Args:
            index: (B,) sample indices.
            view_probs: (V, B, K) or (B, K) probabilities of V augmented views. Their mean is
                Eq. 9's ensemble of two RandAug views (:attr:`view_mean`).
            image_probs: (B, K) probabilities of the un-augmented images, f(x) of Eq. 2 and
                Eq. 6 (:attr:`probs`). None uses the views' mean for f(x) as well.

        With the tables on the device of ``view_probs`` nothing is copied between host and
        device and nothing synchronises; non-finite values are then reported by the next
        :meth:`refresh` (on CPU tables, here).
        """
        index = check_tensor(index, "index")
        p = self._checked_probs(view_probs, index, "view_probs", allow_views=True)
        f = p if image_probs is None else self._checked_probs(image_probs, index, "image_probs", allow_views=False)
        index = _move(index.detach().long(), self.device)
        self.view_mean[index] = self._averaged(self.view_mean, index, p)
        self._epoch_viewed.index_fill_(0, index, True)
        self._write_image(index, f)

    @torch.no_grad()
    def record_image(self, index: Tensor, image_probs: Tensor) -> None:
        """Store f(x) of samples ``index`` without views (Eq. 2 and 6's input only).

        Their view mean keeps its last value, and at the next :meth:`refresh` Eq. 9 does not
        read it: a label of theirs that is not found clean stays as given, ambiguous (Eq. 10),
        until a refresh after an epoch that recorded their views.

        Args:
            index: (B,) sample indices.
            image_probs: (B, K) probabilities of the un-augmented images.
        """
        index = check_tensor(index, "index")
        f = self._checked_probs(image_probs, index, "image_probs", allow_views=False)
        self._write_image(_move(index.detach().long(), self.device), f)

    def _averaged(self, table: Tensor, index: Tensor, new: Tensor) -> Tensor:
        """The record to store for samples ``index``: ``new``, or with ``m = record_momentum > 0``
        ``m * table[index] + (1 - m) * new`` for the samples seen before."""
        m = self.record_momentum
        if m == 0:
            return new
        return torch.where(self.seen[index][:, None], m * table[index] + (1 - m) * new, new)

    def _write_image(self, index: Tensor, f: Tensor) -> None:
        """Store f(x) (averaged with a seen sample's last one when ``record_momentum > 0``) of
        samples ``index`` (on the engine's device) and mark them seen."""
        self.probs[index] = self._averaged(self.probs, index, f)
        # index_fill_ (not ``seen[index] = True``): a Python scalar written through an index
        # tensor is copied to the device first, which synchronises on CUDA.
        self.seen.index_fill_(0, index, True)
        self._epoch_seen.index_fill_(0, index, True)

    def _checked_probs(self, probs: Tensor, index: Tensor, name: str, *, allow_views: bool) -> Tensor:
        """(B, K) float32 probabilities on the engine's device, clamped to [0, 1] (view mean
        of a (V, B, K) tensor when ``allow_views``)."""
        probs = check_tensor(probs, name)
        if probs.ndim == 3 and allow_views:
            p = probs.detach().float().mean(0)
        else:
            check_ndim(probs, name, 2)
            p = probs.detach().float()
        if p.shape != (index.numel(), self.num_classes):
            shapes = "(V, B, K) or (B, K)" if allow_views else "(B, K)"
            raise ValueError(
                f"{name} must be {shapes} with B={index.numel()}, K={self.num_classes}; "
                f"got {tuple(probs.shape)}"
            )
        p = _move(p, self.device)
        if self.device.type == "cpu":
            check_finite(p, name)
        return p.clamp(0.0, 1.0)

    # ------------------------------------------------------------------ epoch-end refresh
    @staticmethod
    def bce_from_probs(probs: Tensor, labels: Tensor) -> Tensor:
        """Eq. 1's elementwise BCE of probabilities against binary labels (clamped logs).

        ``-log p`` where the label is 1 and ``-log(1 - p)`` where it is 0, with ``p`` clamped to
        ``[1e-7, 1 - 1e-7]``, computed in float64 (one logarithm per label), returned as float32.
        Sparse inputs are densified (the package's layout rule); values are not checked.
        """
        probs = check_tensor(probs, "probs")
        labels = check_tensor(labels, "labels")
        p = probs.double().clamp(_EPS, 1 - _EPS)
        p_label = torch.where(labels.to(p.device) != 0, p, 1 - p)
        return p_label.log_().neg_().float()

    def refresh(self, *, epoch: int | None = None) -> RefreshReport:
        """Epoch-end update (Alg. 1): GMMs (Eq. 6-8), re-labeling (Eq. 9), sampler (Eq. 2-4).

        The minority sampler is updated every epoch, warm-up included. Label management is
        computed every epoch (for the figures) and applied from the first post-warm-up epoch
        on, i.e. when the epoch that just ended is the last warm-up epoch or later.

        Returns:
            A :class:`RefreshReport`.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if self.device.type != "cpu":  # record() defers this check on accelerators
            check_finite(self.probs, "recorded probabilities")
            check_finite(self.view_mean, "recorded view_probs")
        n_unseen = int((~self.seen).sum())
        if n_unseen:
            _logger.warning(
                "%d of %d samples have no recorded prediction yet; they keep their given "
                "labels and count as clean", n_unseen, self.num_samples_total,
            )
        labels = self.given_labels
        self.losses = self.bce_from_probs(self.probs, labels)

        seen = self.seen
        all_seen = n_unseen == 0  # the usual case: no masked copies of the (N, K) tables
        # LabelGMM(...).fit_predict_clean_probability is what gmm.clean_probability computes; the
        # fitted mixtures are kept (last_gmm) for diagnostics, e.g. their decision thresholds.
        self.last_gmm = None
        if self.label_management != "none" and all_seen:
            self.last_gmm = LabelGMM(**self.gmm_options)
            clean_prob = self.last_gmm.fit_predict_clean_probability(self.losses, labels).to(self.device, torch.float32)
        else:
            clean_prob = torch.ones_like(self.clean_prob)
            if self.label_management != "none" and n_unseen < self.num_samples_total:
                self.last_gmm = LabelGMM(**self.gmm_options)
                cp = self.last_gmm.fit_predict_clean_probability(self.losses[seen], labels[seen])
                clean_prob[seen] = cp.to(self.device, torch.float32)
        if self.clean_if_agrees and self.label_management != "none":
            clean_prob = clean_if_agrees(clean_prob, self.probs, labels)
        if self.managed_labels == "negative" and self.label_management != "none":
            clean_prob = torch.where(labels.to(clean_prob.device) != 0, torch.ones_like(clean_prob), clean_prob)
        if self.label_management in ("relabel", "full"):
            refined, state = refine_labels(
                labels, clean_prob, self.view_mean, self.eps, clean_threshold=self.clean_threshold
            )
            if not all_seen:
                refined[~seen] = labels[~seen]
                state[~seen] = int(LabelState.CLEAN)
            # samples recorded without views this epoch (record_image): their labels that are
            # not clean wait, as given and ambiguous, for a refresh that has their views
            unviewed = self._epoch_seen & ~self._epoch_viewed
            if bool(unviewed.any()):
                wait = unviewed[:, None] & (state != int(LabelState.CLEAN))
                refined = torch.where(wait, labels.to(refined.device, refined.dtype), refined)
                state = torch.where(wait, torch.full_like(state, int(LabelState.AMBIGUOUS)), state)
        else:
            refined = labels.clone()
            state = torch.where(
                clean_prob > self.clean_threshold,
                torch.tensor(int(LabelState.CLEAN), dtype=torch.int8, device=clean_prob.device),
                torch.tensor(int(LabelState.AMBIGUOUS), dtype=torch.int8, device=clean_prob.device),
            )
            if self.label_management == "none":
                state.zero_()

        apply = self.label_management != "none" and epoch + 1 >= self.warmup_epochs
        self.clean_prob, self.refined_labels, self.state = clean_prob, refined, state
        self.applied = apply
        # Sampler update (every epoch, warm-up included).
        spread: dict[str, float] = {}
        if isinstance(self.second_sampler, MinoritySampler):
            sampler_labels = refined if (self.sampler_labels == "refined" and apply) else labels
            p = minority_sampling_probs(
                self.probs, sampler_labels, score=self.sampler_score, temperature=self.sampler_temperature
            )
            self.second_sampler.update(p)
            spread = {k: float(v) for k, v in weight_spread(p).items()}
        self._device_cache.clear()

        total = float(labels.numel())
        report = RefreshReport(
            epoch=epoch,
            applied=apply,
            clean_fraction=float((state == LabelState.CLEAN).sum()) / total,
            relabeled_fraction=float((state == LabelState.RELABELED).sum()) / total,
            ambiguous_fraction=float((state == LabelState.AMBIGUOUS).sum()) / total,
            changed_fraction=float((refined != labels).sum()) / total,
            sampler=spread,
            unseen=n_unseen,
        )
        self.history.append(report.as_dict())
        _logger.info("refresh: %s", report.as_dict())
        return report
