"""``balancemix-train``: BalanceMix (or a baseline) end to end on a timm model.

Usage::

    balancemix-train configs/demo_balancemix.yaml epochs=5 noise=mislabel noise_rate=0.4

The run folder (``<output_dir>/<run_name>``) receives ``config.yaml``, ``metrics.jsonl`` (one
line per epoch), ``last.pth`` (atomic, every epoch), ``best.pth``, ``summary.json``,
``label_issues.csv`` and, with matplotlib installed, ``curves.png``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig, config_diff, load_config
from .engine import ABLATIONS, BalanceMix
from .methods import build_method
from .metrics import average_precision, class_groups, group_absence_reasons, scaled_group_thresholds
from .noise import apply_noise, noise_rate_report
from .refine import LabelState
from .sampling import ShardedRandomSampler, TailMergingBatchSampler, num_batches
from .utils import (
    ModelEma,
    atomic_save,
    epoch_seed,
    resolve_device,
    rng_state,
    seed_everything,
    seed_worker,
    view_probabilities,
)

__all__ = ["Trainer", "train", "main", "build_datasets", "noisy_labels"]

_logger = logging.getLogger("balancemix_timm.train")



# ---------------------------------------------------------------------------- data
def _paths(cfg: TrainConfig) -> dict[str, Path]:
    root = Path(cfg.data_root)
    return dict(
        train_images=Path(cfg.train_images) if cfg.train_images else root / "train",
        val_images=Path(cfg.val_images) if cfg.val_images else root / "val",
        train_ann=Path(cfg.train_ann) if cfg.train_ann else root / "annotations" / "instances_train.json",
        val_ann=Path(cfg.val_ann) if cfg.val_ann else root / "annotations" / "instances_val.json",
    )


def build_datasets(cfg: TrainConfig, train_transform: Any = None, val_transform: Any = None) -> tuple[Dataset, Dataset]:
    """Training and validation data sets of ``cfg`` (the demo set is generated if missing).

    Raises:
        ValueError: an empty split, splits that declare different categories (listed, see
            :func:`~balancemix_timm.data.datasets.check_same_classes`), or ``num_classes``
            that does not match the data.
    """
    from .data.datasets import CocoMultiLabel, VocMultiLabel, check_same_classes

    if cfg.data == "demo":
        from .data.demo import make_demo_dataset

        make_demo_dataset(
            cfg.data_root,
            num_train=cfg.demo_num_train,
            num_val=cfg.demo_num_val,
            num_classes=cfg.demo_num_classes,
            image_size=cfg.image_size,
            imbalance_ratio=cfg.demo_imbalance_ratio,
            seed=cfg.demo_seed,
            min_val_positives=cfg.demo_min_val_positives,
        )
    if cfg.data in ("demo", "coco"):
        p = _paths(cfg)
        train = CocoMultiLabel(p["train_images"], p["train_ann"], transform=train_transform, include_empty=cfg.include_empty)
        val = CocoMultiLabel(p["val_images"], p["val_ann"], transform=val_transform, include_empty=cfg.include_empty)
    else:
        train = VocMultiLabel(cfg.data_root, split=cfg.voc_train_split, transform=train_transform)
        val = VocMultiLabel(cfg.voc_val_root or cfg.data_root, split=cfg.voc_val_split, transform=val_transform)
    if len(train) == 0:
        raise ValueError(f"the training set at {cfg.data_root} is empty")
    if len(val) == 0:
        raise ValueError(f"the validation set at {cfg.data_root} is empty")
    # Class column k must name the same category in both splits (and in the model head).
    check_same_classes(train, val, names=("training", "validation"))
    if cfg.num_classes is not None and int(cfg.num_classes) != train.num_classes:
        raise ValueError(
            f"config num_classes={cfg.num_classes} but the data set at {cfg.data_root} has "
            f"{train.num_classes} classes in both splits: {train.classes}"
        )
    return train, val


def noisy_labels(cfg: TrainConfig, clean: Tensor) -> Tensor:
    """The given (noisy) labels of a run: ``clean`` (N, K) with ``cfg.noise`` injected at
    ``cfg.noise_rate`` from ``cfg.noise_seed`` (a copy of ``clean`` when the labels are clean)."""
    if cfg.noise == "clean" or (cfg.noise != "single_positive" and cfg.noise_rate == 0):
        return clean.clone()
    g = torch.Generator().manual_seed(int(cfg.noise_seed))
    return apply_noise(clean, cfg.noise, cfg.noise_rate, generator=g)


# ---------------------------------------------------------------------------- trainer
class Trainer:
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
        from .data.transforms import MultiView, build_eval_transform, build_train_transform
        from .models import create_model, model_default_normalization

        cfg.validate()
        self.cfg = cfg
        if cfg.ablation is not None:
            for key, value in ABLATIONS[cfg.ablation].items():
                setattr(cfg, key, value)
        self.device = resolve_device(cfg.device)
        self.dist_rank, self.world_size = _dist_info()
        name = cfg.run_name or f"{cfg.method}-{cfg.noise}{cfg.noise_rate:g}-s{cfg.seed}"
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.output_dir) / name
        self.is_main = self.dist_rank == 0
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        normalize = cfg.normalize
        if normalize == "auto":
            normalize = "imagenet" if model_default_normalization(cfg.model) is not None else None
        self._train_tf = build_train_transform(cfg.image_size, randaugment=cfg.randaugment, cutout=cfg.cutout, normalize=normalize)
        self._eval_tf = build_eval_transform(cfg.image_size, normalize=normalize)
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
        self._absent_logged: set[str] = set()
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

        from .pretrain import resolve_pretrained_path

        #: The backbone weights' file (``pretrained_path=offline`` resolved to the cached
        #: ``balancemix-pretrain`` backbone of this model and image size).
        self.pretrained_path = resolve_pretrained_path(cfg.pretrained_path, cfg.model, cfg.image_size)
        seed_everything(cfg.seed)
        self.model = create_model(
            cfg.model, num_classes=self.num_classes, head=cfg.head, pretrained_path=self.pretrained_path, drop_rate=cfg.drop_rate
        ).to(self.device)
        self.ddp_model: nn.Module = self.model
        if self.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None

        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer, self.scheduler = self.build_optimizer(self.model)
        self.worker_init_fn = seed_worker

        self.method = build_method(cfg.method, self)
        extra = self.method.num_extra_views
        if extra:
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
    def _steps_per_epoch(self) -> int:
        """Training steps per epoch and rank: the batches of a one-sample tail merged away.

        Raises:
            ValueError: a rank would train on one sample per epoch (a batch of one).
        """
        n = len(self.train_set)
        per_rank = math.ceil(n / self.world_size)
        if per_rank < 2:
            raise ValueError(
                f"the training set of {n} images gives {per_rank} image per rank and epoch on "
                f"{self.world_size} rank(s): a training batch of one sample (batch_size="
                f"{self.cfg.batch_size}) breaks BatchNorm; use more images or fewer ranks"
            )
        # A one-sample tail joins the batch before it (TailMergingBatchSampler): every rank
        # has the same per_rank, so every rank takes the same number of steps.
        steps = num_batches(per_rank, self.cfg.batch_size, merge_single_tail=True)
        if self.cfg.max_steps_per_epoch:
            steps = min(steps, int(self.cfg.max_steps_per_epoch))
        return steps

    def build_optimizer(
        self, model: nn.Module
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """Optimiser (no weight decay on 1-D parameters) and per-step schedule for ``model``."""
        cfg = self.cfg
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
        if cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        elif cfg.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=cfg.lr)
        else:
            opt = torch.optim.AdamW(groups, lr=cfg.lr)
        total = max(1, cfg.epochs * self.steps_per_epoch)
        sched: torch.optim.lr_scheduler.LRScheduler | None = None
        if cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
            )
        elif cfg.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.onecycle_pct_start)
        return opt, sched

    def build_view_set(self, num_views: int, *, image_view: bool = False) -> Dataset:
        """A second training set whose items carry ``num_views`` train-transform views, then
        (``image_view``) the image under the eval transform."""
        from .data.transforms import MultiView

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
        return torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch, stream))

    def _train_loader(self, epoch: int) -> DataLoader:
        cfg = self.cfg
        common = dict(
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=seed_worker,
            generator=self.loader_generator(epoch, 1),
            persistent_workers=False,
        )
        self.method.set_epoch(epoch)
        if self.method.paired:
            from .mixing import MixupCollate, PairedDataset
            from .sampling import PairedBatchSampler

            collate = MixupCollate(alpha=cfg.alpha, mode=cfg.lam_mode, seed=cfg.seed)
            collate.set_epoch(epoch)
            batch_sampler = PairedBatchSampler(self.method.paired_sampler, cfg.batch_size, drop_last=False, merge_single_tail=True)
            # Minority items are read through the views too (their extra views are dropped).
            # Reading them without views measured the same on the demo once the augmentation
            # stream was varied (docs/performance.md, target 4); kept for the published figures.
            pairs = PairedDataset(self.train_set)
            return DataLoader(pairs, batch_sampler=batch_sampler, collate_fn=collate, **common)
        assert self.train_sampler is not None
        self.train_sampler.set_epoch(epoch)
        batches = TailMergingBatchSampler(self.train_sampler, cfg.batch_size, merge_single_tail=True)
        return DataLoader(self.train_set, batch_sampler=batches, **common)

    # ------------------------------------------------------------------ steps
    def autocast(self):
        """Mixed-precision context (float16 on CUDA when ``amp``; a no-op on CPU)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    def optimizer_step(
        self,
        loss: Tensor,
        *,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        ema: ModelEma | None = None,
    ) -> None:
        """Backward, (scaled) step, schedule and EMA update; defaults to the main model."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (check the learning rate and the labels)")
        main = model is None
        model = self.model if main else model
        optimizer = self.optimizer if optimizer is None else optimizer
        scheduler = self.scheduler if main and scheduler is None else scheduler
        ema = self.ema if main and ema is None else ema
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)

    @torch.no_grad()
    def view_probs(self, views: Tensor, model: nn.Module | None = None, count: int | None = None) -> Tensor:
        """Probabilities of (V, B, C, H, W) views (the first ``count`` of B) in eval mode, no grad:
        (V, count, K); see :func:`~balancemix_timm.utils.view_probabilities`."""
        return view_probabilities(self.model if model is None else model, views, self.device,
                                  amp=self.amp, count=count)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of training; returns the mean loss and timings."""
        cfg = self.cfg
        seed_everything(epoch_seed(cfg.seed, epoch, 0))
        self.ddp_model.train()
        loader = self._train_loader(epoch)
        total, count = 0.0, 0
        t0 = time.perf_counter()
        bar = _progress(loader, self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress and self.is_main)
        for step, batch in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            loss = self.method.training_step(batch)
            b = len(batch.index_r) if self.method.paired else len(batch[0])
            total += float(loss) * b
            count += b
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
        return dict(train_loss=total / max(count, 1), train_time=time.perf_counter() - t0)

    @torch.no_grad()
    def predict(self, model: nn.Module, dataset: Dataset) -> tuple[Tensor, Tensor]:
        """Sigmoid scores and targets of ``dataset``, in order (each rank scores every
        ``world_size``-th sample under DDP; the rows are then all-reduced)."""
        from torch.utils.data import Subset

        model.eval()
        n = len(dataset)
        positions = torch.arange(self.dist_rank, n, self.world_size)
        part = Subset(dataset, positions.tolist()) if self.world_size > 1 else dataset
        loader = DataLoader(part, batch_size=self.cfg.eval_batch_size, shuffle=False, num_workers=self.cfg.workers)
        scores, targets = [], []
        for x, y, _ in loader:
            with self.autocast():
                logits = model(x.to(self.device, non_blocking=True))
            scores.append(torch.sigmoid(logits.float()).cpu())
            targets.append(y.float())
        k = self.num_classes
        s = torch.cat(scores) if scores else torch.empty(0, k)
        t = torch.cat(targets) if targets else torch.empty(0, k)
        if self.world_size > 1:
            s, t = _gather_rows(s, t, positions, n, self.device)
        return s, t

    def _map_figures(self, scores: Tensor, targets: Tensor, prefix: str) -> dict[str, float]:
        """mAP (x100) of all classes and of each class group that can be scored.

        A group is left out when it holds no class (:attr:`group_absent`) or when none of its
        classes has a positive validation label; the reason is logged once per key. Labels of
        :attr:`val_ignore` (VOC's difficult-only labels) are left out of every AP.
        """
        ap = average_precision(scores, targets, self.val_ignore)
        out = {f"{prefix}mAP": _nanmean100(ap)}
        for name, idx in self.groups.items():
            key = f"{prefix}mAP_{name}"
            value = _nanmean100(ap[idx]) if len(idx) else float("nan")
            if math.isnan(value):
                if key not in self._absent_logged:
                    self._absent_logged.add(key)
                    reason = self.group_absent.get(name) or (
                        f"absent: none of its {len(idx)} classes has a positive validation label"
                    )
                    _logger.info("%s %s", key, reason)
                continue
            out[key] = value
        return out

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

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return dict(
            format="balancemix-timm/1",
            epoch=epoch,
            config=self.cfg.to_dict(),
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            method=self.method.state_dict(),
            train_sampler=self.train_sampler.state_dict() if self.train_sampler is not None else None,
            given_labels=self.given_labels,
            best=self.best,
            metrics=self.metrics,
            rng=rng_state(),
        )

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from ``path``; refuses a checkpoint of another configuration."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or ckpt.get("format") != "balancemix-timm/1":
            raise ValueError(f"{path} is not a balancemix-timm training checkpoint")
        diff = config_diff(ckpt["config"], self.cfg.to_dict())
        if diff:
            pretty = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"checkpoint {path} was written with another configuration: {pretty}")
        if not torch.equal(ckpt["given_labels"], self.given_labels):
            raise ValueError(f"checkpoint {path} was trained on different labels (data set or noise seed changed)")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.method.load_state_dict(ckpt["method"])
        if self.train_sampler is not None and ckpt["train_sampler"] is not None:
            self.train_sampler.load_state_dict(ckpt["train_sampler"])
        self.best = dict(ckpt["best"])
        self.metrics = list(ckpt["metrics"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        _logger.info("resumed from %s at epoch %d", path, self.start_epoch)

    # ------------------------------------------------------------------ run
    def fit(self, resume: str | Path | None = None, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train for ``cfg.epochs`` epochs (continuing a checkpoint if given).

        Args:
            resume: A ``last.pth`` to continue from.
            stop_after: Stop once this many epochs are complete (as an interruption would);
                the schedule still spans ``cfg.epochs``.
        """
        cfg = self.cfg
        if resume is not None:
            self.load_checkpoint(resume)
        if self.is_main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
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
            score = row.get("best_of_mAP", row["mAP"])
            is_best = score > self.best["mAP"]
            if is_best:
                self.best = {"mAP": score, "epoch": epoch + 1}
            row["best_mAP"] = self.best["mAP"]
            self.metrics.append(row)
            if self.is_main:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                state = self.state_dict(epoch)
                atomic_save(state, self.run_dir / "last.pth")
                if is_best:
                    atomic_save(dict(model=state["model"], epoch=epoch, mAP=score, config=state["config"]), self.run_dir / "best.pth")
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
            summary.update(self.method.finish(self.run_dir))
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
            if self.cfg.plots:
                plot_metrics(self.metrics, self.run_dir / "curves.png")
        return summary


# ---------------------------------------------------------------------------- outputs
_ISSUE_COLUMNS = ("image_id", "file", "class_index", "class", "given", "state", "refined", "changed",
                  "clean_prob", "view_prob", "confidence", "label_quality")


def write_label_issues(engine: Any, dataset: Any, path: str | Path) -> int:
    """``label_issues.csv``: every re-labeled or ambiguous label, most confident first.

    Written through :mod:`balancemix_timm.label_issues` (``engine`` is anything
    :func:`~balancemix_timm.label_issues.load_label_state` accepts: a refreshed engine, a run
    folder, a checkpoint). Columns: image_id, file, class_index, class, given, state, refined,
    changed, clean_prob, view_prob, confidence, label_quality. ``confidence`` is the views'
    agreement with the refined value for re-labeled labels (Eq. 9) and ``1 - p_G`` for
    ambiguous ones; ``label_quality`` is the default score of
    :func:`~balancemix_timm.label_issues.label_quality_scores` (in [0, 1], low = the given
    label is likely wrong). Rows whose ``changed`` is 1 or whose state is ambiguous are what
    :func:`~balancemix_timm.label_issues.find_label_issues` flags by default.
    """
    from .label_issues import describe_label_issues, load_label_state

    if isinstance(engine, BalanceMix) and not engine.history:
        _logger.warning("the engine was never refreshed: %s lists no labels", path)
        Path(path).write_text(",".join(_ISSUE_COLUMNS) + "\n")
        return 0
    st = load_label_state(engine)
    pairs = np.argwhere(st.states != int(LabelState.CLEAN))  # row-major (image, class)
    d = describe_label_issues(st, pairs)
    relabeled = d["state"] == int(LabelState.RELABELED)
    refined = st.refined_labels[d["image_index"], d["class_index"]]
    vp, cp = d["view_prob"].astype(np.float32), d["clean_prob"].astype(np.float32)
    conf = np.where(relabeled, np.where(refined == 1, vp, np.float32(1) - vp), np.float32(1) - cp)
    order = np.argsort(-conf, kind="stable")
    image_ids = list(getattr(dataset, "image_ids", range(len(dataset))))
    paths = list(getattr(dataset, "image_paths", [""] * len(dataset)))
    classes = list(getattr(dataset, "classes", [str(i) for i in range(st.shape[1])]))
    names = {int(LabelState.RELABELED): "relabeled", int(LabelState.AMBIGUOUS): "ambiguous"}
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(_ISSUE_COLUMNS)
        for j in order.tolist():
            n, k, given = int(d["image_index"][j]), int(d["class_index"][j]), int(d["given"][j])
            w.writerow([
                image_ids[n], Path(str(paths[n])).name, k, classes[k], given, names[int(d["state"][j])],
                int(refined[j]), int(int(refined[j]) != given), f"{float(cp[j]):.4f}", f"{float(vp[j]):.4f}",
                f"{float(conf[j]):.4f}", f"{float(d['quality'][j]):.4f}",
            ])
    tmp.replace(path)
    _logger.info("label issues: %d re-labeled or ambiguous labels written to %s", len(order), path)
    return int(len(order))


def plot_metrics(metrics: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """mAP and label-management curves per epoch (needs matplotlib; returns False without)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.info("matplotlib not installed: no plots (pip install 'balancemix-timm[plot]')")
        return False
    if not metrics:
        return False
    ep = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("mAP", "mAP_many", "mAP_medium", "mAP_few", "ema_mAP"):
        if key in metrics[0]:
            axes[0].plot(ep, [m.get(key, float("nan")) for m in metrics], label=key)
    axes[0].set_xlabel("epoch"); axes[0].set_ylabel("validation mAP"); axes[0].legend()
    for key in ("clean_precision", "clean_recall", "relabel_proportion", "relabel_accuracy", "lm_clean_fraction", "lm_ambiguous_fraction"):
        if key in metrics[-1]:
            axes[1].plot(ep, [m.get(key, float("nan")) for m in metrics], label=key)
    axes[1].set_xlabel("epoch"); axes[1].set_title("label management")
    if axes[1].get_lines():  # a method without label management (BCE) has no curve here
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- helpers
def _nanmean100(ap: Tensor) -> float:
    ap = ap[~torch.isnan(ap)]
    return float(ap.mean() * 100) if ap.numel() else float("nan")


def _progress(iterable: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(s: Tensor, t: Tensor, positions: Tensor, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """All-reduce per-rank rows into full (n, K) tables (each row owned by exactly one rank)."""
    import torch.distributed as dist

    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    k = s.shape[1]
    full = torch.zeros(2, n, k, dtype=torch.float64, device=comm)
    full[0, positions.to(comm)] = s.double().to(comm)
    full[1, positions.to(comm)] = t.double().to(comm)
    dist.all_reduce(full)
    return full[0].float().cpu(), full[1].float().cpu()


def _setup_logging(run_dir: Path | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _init_distributed(cfg: TrainConfig) -> None:
    """Initialise torch.distributed under torchrun (NCCL on GPUs, gloo on CPU)."""
    import os

    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return
    use_cuda = resolve_device(cfg.device).type == "cuda"
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        cfg.device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def train(cfg: TrainConfig, *, resume: str | Path | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` for ``cfg`` and run it; returns the summary."""
    _init_distributed(cfg)
    trainer = Trainer(cfg, run_dir=run_dir)
    if resume == "auto":
        last = trainer.run_dir / "last.pth"
        resume = last if last.is_file() else None
    return trainer.fit(resume=resume)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="balancemix-train",
        description="Train a multi-label classifier with BalanceMix (or a baseline) on a timm backbone.",
    )
    p.add_argument(
        "config", nargs="?",
        help="YAML config file, or the name of a shipped recipe (e.g. table6_tresnet_l_640; see --list-recipes)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    p.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' (the run folder's last.pth)")
    p.add_argument("--run-dir", default=None, help="output folder (default <output_dir>/<run_name>)")
    p.add_argument("--list-recipes", action="store_true",
                   help="print the shipped recipe names, their folder and the Table 6 scripts, then exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_recipes:
        from .recipes import list_recipes, list_scripts, recipe_dir

        print(f"recipes in {recipe_dir()}:")
        for name in list_recipes():
            print(f"  {name}")
        print("Table 6 scripts for the patched ML-Decoder:")
        for script in list_scripts():
            print(f"  {script}")
        return 0
    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    cfg = load_config(config, overrides)
    _setup_logging(None, args.verbose)
    _init_distributed(cfg)
    rank, world = _dist_info()
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
        cfg.progress = False
    try:
        summary = train(cfg, resume=args.resume, run_dir=args.run_dir)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return 0
    last = summary.get("last", {})
    keys = ("epoch", "mAP", "mAP_many", "mAP_medium", "mAP_few")
    print(json.dumps({k: last[k] for k in keys if k in last} | {"best": summary["best"]}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
