"""The BalanceMix plugin of a training loop shaped like ML-Decoder's ``train.py``.

A thin adapter over :class:`~balancemix_timm.recipe.BalanceMixRecipe`: it adds what the
patched script needs around the shared recipe (the paired loader yielding ML-Decoder's
``(images, targets)``, the target check, the summed loss, the script's checkpoint with its
model, EMA, optimiser, schedule and scaler). See :mod:`balancemix_timm.integrations.ml_decoder`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..engine import BalanceMixEngine, RefreshReport
from ..loss import asl_elementwise
from ..mixing import MixedBatch, MixupCollate, PairedDataset
from ..options import BalanceMixOptions
from ..recipe import BalanceMixRecipe
from ..sampling import PairedBatchSampler
from ..utils import EPOCH_PASS_STREAM, TRAIN_LOADER_STREAM, epoch_seed, seed_worker, view_probabilities
from .ml_decoder_checkpoint import Attached, ScriptCheckpoint, check_resume_file
from .ml_decoder_flags import (
    ASL_DEFAULTS,
    option_values_from_args,
    resolve_plugin_options,
)
from .ml_decoder_labels import labels_from_dataset
from .ml_decoder_loader import PairedTrainLoader, first_of_pairs, with_views

__all__ = ["BalanceMixPlugin", "PairedTrainLoader"]  # PairedTrainLoader: ml_decoder_loader

_logger = logging.getLogger("balancemix_timm.integrations.ml_decoder")




class BalanceMixPlugin(ScriptCheckpoint):
    """BalanceMix for a training loop shaped like ML-Decoder's (Alg. 1 of BalanceMix).

    Owns a :class:`~balancemix_timm.engine.BalanceMixEngine` engine (labels, samplers, GMM state),
    the in-worker Mixup collate and the current batch; the patched loop calls
    :meth:`train_loader`, :meth:`attach`, :meth:`set_epoch`, :meth:`mix`, :meth:`criterion`,
    :meth:`record`, :meth:`end_epoch` and :meth:`save_checkpoint`.

    Args:
        dataset: Training set returning ``(image, target)`` (ML-Decoder's ``CocoDetection``)
            or ``(image, target, index)``; with ``label_source="views"`` or
            ``confidence_input="image"`` it must apply its ``transform`` attribute (a shallow
            copy gets a :class:`MultiView` of it).
        labels: ``(N, K)`` given labels; default :func:`labels_from_dataset`.
        num_classes: ``K`` for :func:`labels_from_dataset`.
        options: The BalanceMix options (:class:`~balancemix_timm.options.BalanceMixOptions`);
            default: the default preset.
        asl_options: ``gamma_neg`` / ``gamma_pos`` / ``clip`` of the ASL base loss
            (``options.base_loss="asl"``).
        reduction: ``"sum"`` (ML-Decoder's scale) or ``"mean"`` (Eq. 10's batch mean).
        **option_values: Options by name (``alpha=2.0, eps=0.9``), over ``options``. When
            ``confidence_input`` is given nowhere, f(x) is the un-augmented image if
            ``image_transform`` is given, else (with a warning) the mean of the views.
            ``confidence_input="image"`` forwards one more input per sample, the image through
            ``image_transform``, recorded as f(x) (``engine.probs``), while the views' mean
            goes to Eq. 9 (``engine.view_mean``); the training items then carry
            ``[train transform] * (1 + num_views) + [image_transform]``.
        gmm_options: The GMM options as :class:`~balancemix_timm.gmm.LabelGMM` names
            (``{"tol": 1e-3}`` is ``gmm_tol=1e-3``).
        seed: Seed of the samplers, the Mixup lambdas and the loader's worker seeds.
        image_transform: The evaluation transform (ML-Decoder's validation transform,
            ``Resize`` + ``ToTensor``), a callable from what ``dataset`` reads to a
            ``(C, H, W)`` tensor of the training views' shape. Required by
            ``confidence_input="image"``, unused otherwise.
        checkpoint_dir: Folder of ``balancemix-last.pth``; ``None`` or ``""`` disables.
        resume: A ``balancemix-last.pth`` to restore in :meth:`attach`; an empty or cut-short
            file is refused here, before the labels are read (``ValueError`` naming it).
        verify_targets: Check on each epoch's first batch that the loop's targets equal the
            engine's labels.
        device: Where the engine's per-sample tables live (and its GMM refresh computes):
            ``"auto"`` (default) moves them to the device of the first batch given to
            :meth:`mix`, so that the per-step calls index them in place with no host-device
            copies; ``"cpu"`` keeps them on the host; any other device places them there now.
        gmm_device: Where the GMM fits compute (default: with the tables).

    Raises:
        ValueError: an unknown or invalid option, ``confidence_input="image"`` without
            ``image_transform``, or labels that do not match ``dataset``.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        labels: Tensor | None = None,
        num_classes: int | None = None,
        options: BalanceMixOptions | None = None,
        asl_options: Mapping[str, float] | None = None,
        reduction: str = "sum",
        image_transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        verify_targets: bool = True,
        device: str | torch.device = "auto",
        gmm_device: str | torch.device | None = None,
        gmm_options: Mapping[str, Any] | None = None,
        **option_values: Any,
    ) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"dataset must be a map-style data set, got {type(dataset).__name__}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if resume:  # before the labels are read from the data set
            check_resume_file(resume)
        options = resolve_plugin_options(options, option_values, gmm_options, image_transform)
        if options.confidence_input == "image" and image_transform is None:
            raise ValueError(
                "image_transform is required with confidence_input='image' (f(x) of the "
                "un-augmented image): pass the evaluation transform, e.g. "
                "image_transform=val_dataset.transform (the patched train.py does)"
            )
        if image_transform is not None and not callable(image_transform):
            raise ValueError(f"image_transform must be callable, got {type(image_transform).__name__}")
        asl = dict(ASL_DEFAULTS)
        unknown = sorted(set(asl_options or {}) - set(asl))
        if unknown:
            raise ValueError(f"asl_options has unknown keys {unknown}; allowed: {sorted(asl)}")
        asl.update({k: float(v) for k, v in (asl_options or {}).items()})
        if labels is None:
            labels = labels_from_dataset(dataset, num_classes)
        base: Callable[[Tensor, Tensor], Tensor] | None = None
        if options.base_loss == "asl" and asl != ASL_DEFAULTS:
            asl_elementwise(torch.zeros(1, 1), torch.zeros(1, 1), **asl)  # validates the options
            base = functools.partial(asl_elementwise, **asl)

        self.recipe = BalanceMixRecipe(labels, options, base_loss=base, seed=seed,
                                       device=None if device == "auto" else device, gmm_device=gmm_device)
        self.auto_device = device == "auto"
        if len(dataset) != self.engine.num_samples_total:  # type: ignore[arg-type]
            raise ValueError(
                f"labels has {self.engine.num_samples_total} rows for a dataset of {len(dataset)} samples"  # type: ignore[arg-type]
            )
        self.collate = MixupCollate(alpha=options.alpha, mode=options.lam_mode, seed=seed)
        self.dataset = dataset
        self.asl_options = asl
        self.reduction = reduction
        #: The evaluation transform of f(x) (None unless ``confidence_input="image"``).
        self.image_transform = image_transform if options.confidence_input == "image" else None
        self.seed = int(seed)
        self.verify_targets = bool(verify_targets)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume = Path(resume) if resume else None
        self.epoch = 0
        self.batch_size: int | None = None
        self.train_set = (
            with_views(dataset, 1 + options.num_views, self.image_transform)
            if options.label_source == "views" else dataset
        )
        self._loader_generator = torch.Generator()
        self._loader_generator.manual_seed(epoch_seed(self.seed, 0, TRAIN_LOADER_STREAM))
        self._current: MixedBatch | None = None
        self._device: torch.device | None = None
        self._verify_pending = True
        self._warned_dir = False
        self._attached = Attached()
        self._num_workers = 0
        self._pin_memory = False
        o = options
        _logger.info(
            "BalanceMix on %d samples x %d classes: alpha=%s eps=%s warm-up=%d minority=%s "
            "label management=%s (%s labels, clean if agrees=%s) base loss=%s (%s) label source=%s "
            "x%d views, f(x) from the %s, record momentum=%s",
            *labels.shape, o.alpha, o.eps, o.warmup_epochs, o.minority_sampler, o.label_management,
            o.managed_labels, o.clean_if_agrees, o.base_loss, reduction, o.label_source, o.num_views,
            "un-augmented image" if o.confidence_input == "image" else "views", o.record_momentum,
        )

    @property
    def engine(self) -> BalanceMixEngine:
        """The recipe's engine."""
        return self.recipe.engine

    @property
    def options(self) -> BalanceMixOptions:
        """The recipe's options."""
        return self.recipe.options

    # The options under their keyword names (read-only).
    base_loss = property(lambda self: self.options.base_loss)
    lam_mode = property(lambda self: self.options.lam_mode)
    label_source = property(lambda self: self.options.label_source)
    num_views = property(lambda self: self.options.num_views)
    confidence_input = property(lambda self: self.options.confidence_input)

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        dataset: Dataset,
        *,
        labels: Tensor | None = None,
        image_transform: Callable[[Any], Any] | None = None,
    ) -> BalanceMixPlugin:
        """Build from the flags of :func:`add_args` (``args.num_classes`` gives ``K``).

        Args:
            args: Parsed arguments.
            dataset: The training set.
            labels: Optional ``(N, K)`` labels (default: read from ``dataset``).
            image_transform: The evaluation transform, required by
                ``--bm-confidence-input image`` (see the class).

        Raises:
            ValueError: ``--bm-confidence-input image`` without ``image_transform``, or any
                option the plugin or the engine refuses.
        """
        num_classes = getattr(args, "num_classes", None)
        return cls(
            dataset,
            labels=labels,
            num_classes=int(num_classes) if num_classes is not None else None,
            asl_options=dict(gamma_neg=args.bm_asl_gamma_neg, gamma_pos=args.bm_asl_gamma_pos, clip=args.bm_asl_clip),
            reduction=args.bm_reduction,
            image_transform=image_transform,
            seed=args.bm_seed,
            checkpoint_dir=args.bm_checkpoint_dir,
            resume=args.bm_resume,
            device=args.bm_device,
            gmm_device=args.bm_gmm_device,
            **option_values_from_args(args),
        )

    # ------------------------------------------------------------------ data
    def train_loader(
        self, *, batch_size: int, num_workers: int = 0, pin_memory: bool = False, **loader_kwargs: Any
    ) -> PairedTrainLoader:
        """The paired training loader (replaces ML-Decoder's shuffled one).

        Args:
            batch_size: Pairs per batch (ML-Decoder: 56). No sample is dropped, as in ML-Decoder;
                a one-pair tail joins the batch before it.
            num_workers: DataLoader workers (images are mixed there).
            pin_memory: DataLoader option.
            **loader_kwargs: Further DataLoader options (``prefetch_factor`` ...).

        Returns:
            A :class:`PairedTrainLoader` of ``ceil(N / batch_size)`` batches per epoch (one
            fewer when the last would hold a single pair).
        """
        for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last"):
            if key in loader_kwargs:
                raise ValueError(f"{key} is set by the plugin and cannot be passed")
        batch_sampler = PairedBatchSampler(self.engine.paired_sampler, batch_size, drop_last=False,
                                           merge_single_tail=True)
        self.batch_size = int(batch_size)
        self._num_workers, self._pin_memory = int(num_workers), bool(pin_memory)
        loader_kwargs.setdefault("worker_init_fn", seed_worker)
        pairs = PairedDataset(self.train_set, self.dataset)  # views only for the random instances
        loader = DataLoader(
            pairs,
            batch_sampler=batch_sampler,
            collate_fn=self.collate,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=self._loader_generator,
            **loader_kwargs,
        )
        return PairedTrainLoader(self._set_batch, loader)

    def _set_batch(self, batch: MixedBatch | None) -> None:
        self._current = batch

    def _require_batch(self, what: str) -> MixedBatch:
        if self._current is None:
            raise RuntimeError(
                f"{what}() needs the batch being trained on: iterate the loader of train_loader()"
            )
        return self._current

    # ------------------------------------------------------------------ epoch control
    def attach(
        self, model: nn.Module, ema: Any = None, optimizer: Any = None, scheduler: Any = None, scaler: Any = None
    ) -> tuple[int, float]:
        """Keep references for :meth:`record`, :meth:`end_epoch` and the checkpoints; resume.

        Args:
            model: The trained model.
            ema, optimizer, scheduler, scaler: Saved and restored with it when given
                (objects with ``state_dict`` / ``load_state_dict``).

        Returns:
            ``(start_epoch, highest_mAP)``: ``(0, 0)`` or the values of ``resume``.
        """
        a = self._attached
        a.model, a.ema, a.optimizer, a.scheduler, a.scaler = model, ema, optimizer, scheduler, scaler
        if self.resume is None:
            return 0, 0
        return self.load_checkpoint(self.resume)

    def set_epoch(self, epoch: int) -> None:
        """Start an epoch: sampler streams, Mixup lambdas and loader worker seeds follow it."""
        self.epoch = int(epoch)
        self.recipe.set_epoch(self.epoch)
        self.collate.set_epoch(self.epoch)
        self._loader_generator.manual_seed(epoch_seed(self.seed, self.epoch, TRAIN_LOADER_STREAM))
        self._verify_pending = self.verify_targets
        self._current = None

    # ------------------------------------------------------------------ per step
    def mix(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 5 for the current batch, called after the target collapse and before the forward.

        The images were mixed in the loader's workers (``input`` is returned as is); the targets
        returned are ``lam * y_R + (1 - lam) * y_M`` of the engine's labels (refined by Eq. 9
        after warm-up), on ``input``'s device.

        Args:
            input: ``(B, C, H, W)`` mixed images of the current batch.
            target: ``(B, K)`` targets of the random instances after ML-Decoder's collapse;
                checked against the engine's labels on each epoch's first batch.

        Returns:
            ``(input, mixed_targets)`` with ``mixed_targets`` float32 ``(B, K)``.
        """
        b = self._require_batch("mix")
        n = b.index_r.numel()
        if not isinstance(input, Tensor) or input.ndim < 1 or input.shape[0] != n:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input must be the current batch of {n} images, got {got}")
        if self._verify_pending:
            self._check_targets(target, b)
            self._verify_pending = False
        self._device = input.device
        if self.auto_device and self.engine.device != input.device:
            _logger.info("BalanceMix tables moved to %s (the training device)", input.device)
            self.engine.to(input.device)
        return input, self.engine.mixed_targets(b.index_r, b.index_m, b.lam, device=input.device)

    def _check_targets(self, target: Tensor, batch: MixedBatch) -> None:
        expected = self.engine.given_labels[batch.index_r.to(self.engine.device)].cpu()
        if not isinstance(target, Tensor) or tuple(target.shape) != tuple(expected.shape):
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"target must be the collapsed (B, K) = {tuple(expected.shape)} targets of the "
                f"random instances, got {got}"
            )
        if not torch.equal(target.detach().to("cpu", torch.uint8), expected):
            raise ValueError(
                "target does not match the labels the engine read from the dataset for these "
                "samples (a different sample order or class mapping?)"
            )

    def criterion(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Eq. 10 on the current batch (replaces ML-Decoder's ASL ``criterion``).

        Args:
            logits: ``(B, K)`` float logits of the mixed images.
            targets: ``(B, K)`` mixed targets from :meth:`mix`.

        Returns:
            Scalar loss: per-sample sums over the labels, summed (``reduction="sum"``) or
            averaged over the batch; with weight 1 on every label during warm-up.
        """
        b = self._require_batch("criterion")
        loss = self.engine.loss(logits, targets, b.index_r.to(logits.device))
        return loss * logits.shape[0] if self.reduction == "sum" else loss

    def _predict(self, model: nn.Module) -> Callable[[Tensor, int | None], Tensor]:
        """The no-grad forward of the recorded views (float16 autocast on CUDA)."""
        device = self._device or next(model.parameters()).device

        def predict(views: Tensor, count: int | None) -> Tensor:
            return view_probabilities(model, views, device, amp=device.type == "cuda", count=count)

        return predict

    def _model(self, model: nn.Module | None, what: str) -> nn.Module:
        model = model if model is not None else self._attached.model
        if model is None:
            raise RuntimeError(f"{what}() needs the model: pass it or call attach() first")
        return model

    @torch.no_grad()
    def record(self, model: nn.Module | None = None) -> None:
        """Record the current batch's predictions (``label_source="views"``; else a no-op).

        The random instances' extra views are forwarded without gradient, in eval mode (under
        float16 autocast on CUDA), after the optimiser step, in one batch of ``V * B`` images:
        the ``num_views`` augmented views, then with ``confidence_input="image"`` the
        un-augmented image (:meth:`~balancemix_timm.recipe.BalanceMixRecipe.record_batch`).

        Args:
            model: The model (default: the one given to :meth:`attach`).
        """
        if self.label_source != "views":
            return
        b = self._require_batch("record")
        self.recipe.record_batch(b, self._predict(self._model(model, "record")))

    @torch.no_grad()
    def _epoch_pass(self, model: nn.Module, epoch: int) -> None:
        if self.num_views > 1 or self.image_transform is not None:
            views = with_views(self.dataset, self.num_views, self.image_transform)
        else:
            views = self.dataset
        sampler = self.recipe.epoch_pass_sampler(len(views), epoch)  # type: ignore[arg-type]
        loader = DataLoader(
            PairedDataset(views),
            batch_size=self.batch_size or 64,
            sampler=[(i, i) for i in sampler],
            collate_fn=first_of_pairs,
            num_workers=self._num_workers,
            pin_memory=self._pin_memory,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, EPOCH_PASS_STREAM)),
        )
        self.recipe.record_epoch_pass(loader, self._predict(model))

    def end_epoch(self, epoch: int | None = None, model: nn.Module | None = None) -> RefreshReport:
        """Epoch end (Alg. 1): the no-grad pass if ``label_source="epoch_pass"``, then the refresh.

        The refresh fits the 2K GMMs (Eq. 6-8), re-labels (Eq. 9; used from the epoch after
        the last warm-up epoch) and updates the minority sampler (Eq. 2-4).

        Returns:
            The engine's :class:`~balancemix_timm.engine.RefreshReport` (the engine logs it).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        self._current = None
        if self.label_source == "epoch_pass":
            self._epoch_pass(self._model(model, "end_epoch"), epoch)
        report, _ = self.recipe.end_epoch(epoch)  # the engine logs its report at INFO
        d = report.as_dict()
        _logger.debug(
            "epoch %d: labels in use %s; clean %.4f, re-labeled %.4f, ambiguous %.4f, changed %.4f; "
            "minority weights max/min %.3g",
            epoch, "refined" if report.applied else "given", d["clean_fraction"], d["relabeled_fraction"],
            d["ambiguous_fraction"], d["changed_fraction"], d.get("sampler_max_over_min", float("nan")),
        )
        return report

    # ------------------------------------------------------------------ state
    def config(self) -> dict[str, Any]:
        """Options that must match when a state is loaded (beside the engine's own)."""
        return dict(
            base_loss=self.base_loss,
            asl_options=dict(self.asl_options),
            reduction=self.reduction,
            lam_mode=self.lam_mode,
            label_source=self.label_source,
            num_views=self.num_views,
            confidence_input=self.confidence_input,
        )

    def state_dict(self) -> dict[str, Any]:
        """Engine, collate, epoch and configuration (CPU tensors)."""
        return dict(
            config=self.config(),
            engine=self.recipe.state_dict(),
            collate=self.collate.state_dict(),
            epoch=self.epoch,
            batch_size=self.batch_size,
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses another configuration."""
        cfg = dict(state_dict.get("config", {}))
        diff = {k: (cfg.get(k), v) for k, v in self.config().items() if cfg.get(k) != v}
        if diff:
            pretty = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"BalanceMix state was written with other options ({pretty})")
        saved_bs = state_dict.get("batch_size")
        if saved_bs is not None and self.batch_size is not None and saved_bs != self.batch_size:
            raise ValueError(f"BalanceMix state was written with batch size {saved_bs}, now {self.batch_size}")
        self.recipe.load_state_dict(state_dict["engine"])
        self.collate.load_state_dict(state_dict["collate"])
        self.epoch = int(state_dict.get("epoch", 0))


