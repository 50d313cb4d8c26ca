"""The training loop of ``balancemix-train``: one :class:`Trainer` per run.

The trainer owns data, model, backward, gradient clipping, optimiser, AMP scaler, schedule,
EMA, validation, checkpoints and the run folder; the training method (``method=``, built from
a :class:`~balancemix_timm.methods.context.MethodContext`) turns each batch into a loss.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..methods import MethodContext, build_method
from ..metrics import class_groups, group_absence_reasons, scaled_group_thresholds
from ..noise import noise_rate_report
from ..sampling import ShardedRandomSampler
from ..textfiles import append_json_line, write_json, write_text
from ..utils import (
    GLOBAL_STREAM,
    TRAIN_LOADER_STREAM,
    ModelEma,
    amp_enabled,
    atomic_save,
    autocast,
    epoch_seed,
    resolve_device,
    seed_everything,
    seed_worker,
)
from .checkpoint import CheckpointMixin, check_run_files, run_dir_of
from .data import build_datasets, noisy_labels, train_loader
from .distributed import dist_info, init_distributed
from .evaluation import MapFigures, predict
from .optim import build_optimizer, steps_per_epoch
from .outputs import plot_metrics, progress

__all__ = ["Trainer", "scored_weights", "train"]

#: The run's log channel (one name for the whole trainer: log filters use it).
_logger = logging.getLogger("balancemix_timm.trainer")


class Trainer(CheckpointMixin):
    """One training run described by a :class:`TrainConfig`.

    Args:
        cfg: The configuration.
        run_dir: Output folder (default ``<output_dir>/<run_name>``).
        train_indices: ``(M,)`` indices of the training images to train on (default: all N).
            The noise is injected into all N labels first (so a part sees exactly the labels
            the full run sees), the class groups are those of all N images, and then
            :attr:`train_set`, :attr:`given_labels` and :attr:`clean_labels` keep only the
            rows ``train_indices``, renumbered ``0..M-1``; steps, schedule and samplers follow
            the M images. :meth:`training_images` still reaches all N. Not a config field: a
            run's ``config.yaml`` does not record it (cross-validation folds use it).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, *,
                 train_indices: Sequence[int] | np.ndarray | Tensor | None = None) -> None:
        from ..data.transforms import (
            MultiView,
            build_eval_transform,
            build_train_transform,
        )
        from ..models import create_model, model_default_normalization
        from ..pretrain import resolve_pretrained_path

        cfg.validate()
        check_run_files(cfg)  # the pretrained_path file, before data set and model are built
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist_rank, self.world_size = dist_info()
        self.run_dir = run_dir_of(cfg, run_dir)
        self.is_main = self.dist_rank == 0
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        normalize = cfg.normalize
        if normalize == "auto":
            normalize = "imagenet" if model_default_normalization(cfg.model) is not None else None
        self._eval_tf = build_eval_transform(cfg.image_size, normalize=normalize)
        #: Without RandAugment and Cutout the training transform is the evaluation transform.
        self.unaugmented_training = not (cfg.randaugment or cfg.cutout)
        self._train_tf = self._eval_tf if self.unaugmented_training else build_train_transform(
            cfg.image_size, randaugment=cfg.randaugment, cutout=cfg.cutout, normalize=normalize)
        self.train_set, self.val_set = build_datasets(cfg, self._train_tf, self._eval_tf)
        self.num_classes = self.train_set.num_classes
        #: (N_val, K) bool mask of validation labels left out of the AP (VOC's difficult-only
        #: labels under ``voc_difficult_eval=ignore``, the VOC protocol); None scores every label.
        self.val_ignore: Tensor | None = None
        if cfg.data == "voc" and cfg.voc_difficult_eval == "ignore":
            self.val_ignore = self.val_set.difficult_mask
        self.clean_labels = self.train_set.annotation_labels.clone().to(torch.uint8)
        self.given_labels = noisy_labels(cfg, self.clean_labels).to(torch.uint8)
        self.train_set.set_labels(self.given_labels)
        self.noise_report = noise_rate_report(self.given_labels, self.clean_labels)
        self.true_labels_known = cfg.noise != "clean"

        # Class groups: COCO's 10,000 / 1,000 thresholds scaled by N_train / 82,081 for every
        # data set (scaled_group_thresholds), unless many_threshold / few_threshold are given;
        # counted on the clean training positives (the data set's natural groups).
        d_many, d_few = scaled_group_thresholds(len(self.train_set))
        many = d_many if cfg.many_threshold is None else cfg.many_threshold
        few = d_few if cfg.few_threshold is None else cfg.few_threshold
        self.groups = class_groups(self.clean_labels.sum(0), many=many, few=few)
        # A group without classes has no mAP: it is left out of every metrics row and summary.
        self.group_absent = {
            name: f"absent: {reason} among the clean training labels (many_threshold={many}, few_threshold={few})"
            for name, reason in group_absence_reasons(self.groups, many=many, few=few).items()
        }
        for name, reason in self.group_absent.items():
            _logger.info("class group %r %s", name, reason)
        self._map_figures = MapFigures(self.groups, self.group_absent, self.val_ignore)
        self.group_thresholds = (int(many), int(few))
        #: All N training images with their given labels (before any ``train_indices``).
        self._all_train_set = self.train_set
        #: (M,) int64 indices of the trained images among all N, or None (all of them).
        self.train_indices: Tensor | None = None
        if train_indices is not None:
            self.train_set = self.train_set.subset(train_indices)
            self.train_indices = torch.as_tensor(np.asarray(train_indices), dtype=torch.int64).reshape(-1)
            self.clean_labels = self.clean_labels[self.train_indices]
            self.given_labels = self.given_labels[self.train_indices]
            self.noise_report = noise_rate_report(self.given_labels, self.clean_labels)
            _logger.info("training on %d of %d training images", len(self.train_set), len(self._all_train_set))

        #: The backbone weights' file (``pretrained_path=offline`` resolved to the cached
        #: ``balancemix-pretrain`` backbone of this model and image size).
        self.pretrained_path = resolve_pretrained_path(cfg.pretrained_path, cfg.model, cfg.image_size)
        seed_everything(cfg.seed)
        self.model = create_model(
            cfg.model, num_classes=self.num_classes, head=cfg.head, pretrained_path=self.pretrained_path,
            drop_rate=cfg.drop_rate,
        ).to(self.device)
        if cfg.channels_last:  # NHWC weights make convolutions return NHWC activations
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ddp_model: nn.Module = self.model
        if self.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None

        self.amp = amp_enabled(cfg.amp, self.device)
        # bfloat16 keeps float32's exponent range: only float16 (CUDA) needs loss scaling.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        self.steps_per_epoch = steps_per_epoch(cfg, len(self.train_set), self.world_size)
        self.worker_init_fn = seed_worker

        #: What the method is built from (it never sees the trainer).
        self.context = MethodContext(
            cfg=cfg, model=self.model, ddp_model=self.ddp_model, device=self.device,
            given_labels=self.given_labels, clean_labels=self.clean_labels,
            true_labels_known=self.true_labels_known, num_classes=self.num_classes,
            train_set=self.train_set, eval_transform=self._eval_tf, unaugmented_training=self.unaugmented_training,
            predict=self.predict,
            build_view_set=self.build_view_set, run_dir=self.run_dir, pretrained_path=self.pretrained_path,
            amp=self.amp, world_size=self.world_size, rank=self.dist_rank, worker_init_fn=self.worker_init_fn,
        )
        self.method = build_method(cfg.method, self.context)
        #: The networks the optimiser trains: the model, then the method's extra networks.
        self.trained_modules: list[nn.Module] = [self.model, *self.method.extra_modules()]
        self.optimizer, self.scheduler = self.build_optimizer(self.trained_modules)
        extra = self.method.num_extra_views
        #: Where a paired method's second (minority) stream reads its items: the training set
        #: with the plain training transform, as the random stream's trained view (the extra
        #: views of a minority item would be built and dropped by the collate).
        self.minority_set: Dataset = self.train_set
        if extra:
            self.minority_set = copy.copy(self.train_set)
            self.train_set.transform = MultiView(
                [self._train_tf] + list(self.method.extra_view_transforms(self._train_tf, self._eval_tf))
            )
        self.train_sampler = None
        if not self.method.paired:
            self.train_sampler = ShardedRandomSampler(
                len(self.train_set), seed=cfg.seed, num_replicas=self.world_size, rank=self.dist_rank
            )
        self.start_epoch = 0
        self.best: dict[str, Any] = {"mAP": -math.inf, "epoch": -1}
        self.metrics: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ builders
    def build_optimizer(
        self, modules: nn.Module | Sequence[nn.Module]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Optimiser (no weight decay on 1-D parameters) and per-step schedule over the
        parameters of ``modules``, spanning the run; see :func:`.optim.build_optimizer`."""
        if isinstance(modules, nn.Module):
            modules = [modules]
        return build_optimizer(self.cfg, modules, self.cfg.epochs * self.steps_per_epoch)

    def build_view_set(self, num_views: int, *, image_view: bool = False) -> Dataset:
        """A second training set whose items carry ``num_views`` train-transform views, then
        (``image_view``) the image under the eval transform."""
        from ..data.transforms import MultiView

        transforms = [self._train_tf] * num_views + ([self._eval_tf] if image_view else [])
        view_set, _ = build_datasets(self.cfg, MultiView(transforms), self._eval_tf)
        if self.train_indices is not None:
            view_set = view_set.subset(self.train_indices)
        view_set.set_labels(self.given_labels)
        return view_set

    def training_images(self, indices: Sequence[int] | np.ndarray | Tensor | None = None) -> Dataset:
        """Training images with the eval transform and their given labels, for inference.

        Args:
            indices: ``(M,)`` indices among all N training images (also those left out by
                ``train_indices``); default all N, in order.

        Returns:
            A data set of ``(image, given target, position)`` items; with :meth:`predict` it
            gives (M, K) sigmoid probabilities (e.g. out-of-fold predictions).
        """
        images = copy.copy(self._all_train_set)
        images.transform = self._eval_tf
        return images if indices is None else images.subset(indices)

    def loader_generator(self, epoch: int, stream: int) -> torch.Generator:
        """Seeded generator of a DataLoader (worker seeds) for (epoch, stream)."""
        return self.context.loader_generator(epoch, stream)

    def _train_loader(self, epoch: int) -> DataLoader:
        self.method.set_epoch(epoch)
        return train_loader(
            self.cfg, self.method, self.train_set, self.train_sampler, epoch,
            generator=self.loader_generator(epoch, TRAIN_LOADER_STREAM), pin_memory=self.device.type == "cuda",
            minority_set=self.minority_set,
        )

    # ------------------------------------------------------------------ steps
    def autocast(self):
        """Mixed-precision context (:func:`~balancemix_timm.utils.autocast`) when ``amp``."""
        return autocast(self.device, self.amp)

    def optimizer_step(self, loss: Tensor) -> None:
        """Backward of ``loss``, then clipping, (scaled) optimiser step, schedule and EMA.

        Gradients are clipped to ``cfg.grad_clip`` per network of :attr:`trained_modules`
        (each network's own norm), after unscaling.

        Raises:
            FloatingPointError: ``loss`` is not finite (nothing is stepped).
        """
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (check the learning rate and the labels)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            for module in self.trained_modules:
                torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def view_probs(self, views: Tensor, model: nn.Module | None = None, count: int | None = None) -> Tensor:
        """Probabilities of (V, B, C, H, W) views (the first ``count`` of B) in eval mode, no grad:
        (V, count, K); see :meth:`MethodContext.view_probs`."""
        return self.context.view_probs(views, model, count)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training; returns the mean loss and timings."""
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.seed, epoch, GLOBAL_STREAM))
        self.ddp_model.train()
        loader = self._train_loader(epoch)
        total, count = 0.0, 0
        t0 = time.perf_counter()
        bar = progress(loader, self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and self.is_main)
        for step, batch in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            loss = self.method.training_step(batch)
            self.optimizer_step(loss)
            self.method.after_step(batch)
            b = len(batch.index_r) if self.method.paired else len(batch[0])
            total += float(self.method.logged_loss(loss)) * b
            count += b
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
        return dict(train_loss=total / max(count, 1), train_time=time.perf_counter() - t0)

    def predict(self, model: nn.Module, dataset: Dataset) -> tuple[Tensor, Tensor]:
        """Sigmoid scores and targets ``(len(dataset), K)`` of ``dataset``, in order (rows
        gathered under DDP); see :func:`.evaluation.predict`."""
        return predict(
            model, dataset, num_classes=self.num_classes, device=self.device, batch_size=self.cfg.eval_batch_size,
            workers=self.cfg.workers, amp=self.amp, rank=self.dist_rank, world_size=self.world_size,
        )

    def validate(self) -> dict[str, float]:
        """mAP (all, many, medium, few) of the model and, if kept, its EMA."""
        scores, targets = self.predict(self.model, self.val_set)
        out = self._map_figures(scores, targets, "")
        if self.ema is not None:
            scores_e, _ = self.predict(self.ema.module, self.val_set)
            out.update(self._map_figures(scores_e, targets, "ema_"))
            out["best_of_mAP"] = max(out["mAP"], out["ema_mAP"])
        self.model.train()
        return out

    def best_checkpoint(self, state: dict[str, Any], weights: str, score: float) -> dict[str, Any]:
        """``best.pth``'s content: the weights that scored ``score``, and which they are.

        Contract: ``model`` holds the weights whose validation mAP is ``mAP`` (loading
        ``model`` and validating reproduces ``mAP``); ``weights`` names them, ``"regular"``
        (the trained model) or ``"ema"`` (its exponential moving average). With EMA on, the
        other weights are kept too, under ``model_regular`` or ``model_ema``.

        Args:
            state: The epoch's :meth:`state_dict` (``epoch``, ``config``, ``model``, ``ema``).
            weights: ``"regular"`` or ``"ema"`` (:func:`scored_weights` of the epoch's row).
            score: Their validation mAP.
        """
        regular = state["model"]
        ema = self.ema.module.state_dict() if self.ema is not None else None
        out: dict[str, Any] = dict(
            model=ema if weights == "ema" else regular, weights=weights, epoch=state["epoch"], mAP=score,
            config=state["config"],
        )
        if ema is not None:
            if weights == "ema":
                out["model_regular"] = regular
            else:
                out["model_ema"] = ema
        return out

    # ------------------------------------------------------------------ run
    def fit(self, resume: str | Path | None = None, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train for ``cfg.epochs`` epochs (continuing a checkpoint if given).

        Args:
            resume: A ``last.pth`` to continue from.
            stop_after: Stop once this many epochs are complete (as an interruption would);
                the schedule still spans ``cfg.epochs``.

        Returns:
            The run summary (:meth:`finish`).
        """
        cfg = self.cfg
        if resume is not None:
            self.load_checkpoint(resume)
        if self.is_main:
            write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        metrics_path = self.run_dir / "metrics.jsonl"
        if self.is_main and resume is None and metrics_path.exists():
            metrics_path.unlink()
        end = cfg.epochs if stop_after is None else min(cfg.epochs, int(stop_after))
        for epoch in range(self.start_epoch, end):
            t0 = time.perf_counter()
            row: dict[str, Any] = dict(epoch=epoch + 1)
            row.update(self.train_epoch(epoch))
            row.update(self.method.end_epoch(epoch))
            row.update(self.validate())
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["epoch_time"] = time.perf_counter() - t0
            weights = scored_weights(row)
            score = row["ema_mAP"] if weights == "ema" else row["mAP"]
            is_best = score > self.best["mAP"]
            if is_best:
                self.best = {"mAP": score, "epoch": epoch + 1, "weights": weights}
            row["best_mAP"] = self.best["mAP"]
            self.metrics.append(row)
            if self.is_main:
                append_json_line(metrics_path, row)
                state = self.state_dict(epoch)
                atomic_save(state, self.run_dir / "last.pth")
                if is_best:
                    atomic_save(self.best_checkpoint(state, weights, score), self.run_dir / "best.pth")
                groups = ", ".join(
                    f"{name} {row[f'mAP_{name}']:.2f}" if f"mAP_{name}" in row else f"{name} absent"
                    for name in self.groups
                )
                _logger.info(
                    "epoch %d/%d: loss %.4f  mAP %.2f (%s)  %.1fs",
                    epoch + 1, cfg.epochs, row["train_loss"], row["mAP"], groups, row["epoch_time"],
                )
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Write the summary, label issues and plots; return the summary."""
        last = self.metrics[-1] if self.metrics else {}
        summary = dict(
            run_dir=str(self.run_dir),
            method=self.cfg.method,
            ablation=self.cfg.ablation,
            noise=self.cfg.noise,
            noise_rate=self.cfg.noise_rate,
            epochs=self.cfg.epochs,
            group_thresholds=dict(many=self.group_thresholds[0], few=self.group_thresholds[1]),
            group_sizes={k: int(len(v)) for k, v in self.groups.items()},
            group_absent=dict(self.group_absent),
            noise_report=self.noise_report,
            last=last,
            best=self.best,
        )
        if self.is_main:
            # Each output is written on its own: one that fails is logged and named in
            # summary.json, the others are still written, and the failure is raised at the end.
            failed: dict[str, Exception] = {}

            def attempt(name: str, write: Callable[[], Any]) -> None:
                try:
                    write()
                except Exception as err:  # noqa: BLE001 - re-raised below, after the other outputs
                    _logger.error("could not write %s in %s: %s", name, self.run_dir, err, exc_info=True)
                    failed[name] = err

            attempt("the method's outputs (e.g. label_issues.csv)",
                    lambda: summary.update(self.method.finish(self.run_dir)))
            if self.cfg.plots:
                attempt("curves.png", lambda: plot_metrics(self.metrics, self.run_dir / "curves.png"))
            if failed:
                summary["output_errors"] = {name: f"{type(err).__name__}: {err}" for name, err in failed.items()}
            attempt("summary.json", lambda: write_json(self.run_dir / "summary.json", summary, indent=2))
            if failed:
                names = ", ".join(failed)
                raise RuntimeError(f"the run finished but these outputs in {self.run_dir} could not be written: "
                                   f"{names} (the others were written; see the log)") from next(iter(failed.values()))
        return summary


def scored_weights(row: dict[str, Any]) -> str:
    """Which weights an epoch's metrics ``row`` scores the run by: ``"ema"`` when it holds an
    EMA mAP above the regular model's (the best epoch is picked on the higher of the two),
    ``"regular"`` otherwise (ties included)."""
    ema = row.get("ema_mAP")
    return "ema" if ema is not None and ema > row["mAP"] else "regular"


def train(cfg: TrainConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it (torch.distributed initialised first
    under torchrun).

    Args:
        cfg: The configuration.
        resume: A checkpoint to continue from, or ``"auto"`` (the run folder's ``last.pth``
            if there is one).
        run_dir: Output folder (default ``<output_dir>/<run_name>``).

    Returns:
        The run summary.

    Raises:
        ValueError: an invalid configuration, or a damaged ``resume`` or ``pretrained_path``
            checkpoint (:func:`~balancemix_timm.trainer.checkpoint.check_run_files`), before
            data set and model are built.
    """
    init_distributed(cfg)
    cfg.validate()
    resume = check_run_files(cfg, resume, run_dir)  # before data set and model are built
    trainer = Trainer(cfg, run_dir=run_dir)
    return trainer.fit(resume=resume)
