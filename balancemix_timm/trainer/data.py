"""The run's data: training and validation sets of a :class:`~balancemix_timm.config.TrainConfig`,
the given (noise-injected) labels and the training loader of an epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..methods import TrainingMethod
from ..mixing import MixupCollate, PairedDataset
from ..noise import apply_noise
from ..sampling import PairedBatchSampler, ShardedRandomSampler, TailMergingBatchSampler
from ..utils import seed_worker

__all__ = ["build_datasets", "noisy_labels", "train_loader"]


def _paths(cfg: TrainConfig) -> dict[str, Path]:
    """Image folders and COCO annotation files of ``cfg`` (explicit paths win over
    ``data_root``'s ``train`` / ``val`` / ``annotations`` layout)."""
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
    from ..data.datasets import CocoMultiLabel, VocMultiLabel, check_same_classes

    if cfg.data == "demo":
        from ..data.demo import make_demo_dataset

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
        train = CocoMultiLabel(p["train_images"], p["train_ann"], transform=train_transform,
                               include_empty=cfg.include_empty)
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
    """The given (noisy) labels of a run.

    Args:
        cfg: The run's configuration (``noise``, ``noise_rate``, ``noise_seed``).
        clean: ``(N, K)`` labels in {0, 1}.

    Returns:
        ``(N, K)``: ``clean`` with ``cfg.noise`` injected at ``cfg.noise_rate`` from a generator
        seeded with ``cfg.noise_seed`` (a copy of ``clean`` when the labels are clean).
    """
    if cfg.noise == "clean" or (cfg.noise != "single_positive" and cfg.noise_rate == 0):
        return clean.clone()
    g = torch.Generator().manual_seed(int(cfg.noise_seed))
    return apply_noise(clean, cfg.noise, cfg.noise_rate, generator=g)


def train_loader(
    cfg: TrainConfig, method: TrainingMethod, train_set: Dataset, sampler: ShardedRandomSampler | None,
    epoch: int, *, generator: torch.Generator, pin_memory: bool, minority_set: Dataset | None = None,
) -> DataLoader:
    """The training batches of ``epoch`` as ``method`` consumes them.

    A paired method gets :class:`~balancemix_timm.mixing.MixedBatch` batches of its
    ``paired_sampler`` (Mixup of the random and the second stream); a plain one gets
    ``(image, target, index)`` batches of ``sampler``. Either way a one-sample tail joins the
    batch before it.

    Args:
        cfg: ``batch_size``, ``workers``, ``alpha``, ``lam_mode``, ``seed``.
        method: The training method (its ``set_epoch`` already called for ``epoch``).
        train_set: The training data set.
        sampler: The random sampler of a plain method (None for a paired one).
        epoch: 0-based epoch.
        generator: Seeds the loader's workers.
        pin_memory: Pin host batches (for a CUDA device).
        minority_set: Where a paired method's second stream reads its items (default:
            ``train_set``); the same images, e.g. without ``train_set``'s extra views.

    Raises:
        ValueError: a plain method without ``sampler``.
    """
    common: dict[str, Any] = dict(
        num_workers=cfg.workers,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=False,
    )
    if method.paired:
        collate = MixupCollate(alpha=cfg.alpha, mode=cfg.lam_mode, seed=cfg.seed)
        collate.set_epoch(epoch)
        batch_sampler = PairedBatchSampler(method.paired_sampler, cfg.batch_size, drop_last=False,
                                           merge_single_tail=True)
        pairs = PairedDataset(train_set, None if minority_set is train_set else minority_set)
        return DataLoader(pairs, batch_sampler=batch_sampler, collate_fn=collate, **common)
    if sampler is None:
        raise ValueError(f"method {method.name!r} is not paired: its training loader needs a sampler")
    sampler.set_epoch(epoch)
    batches = TailMergingBatchSampler(sampler, cfg.batch_size, merge_single_tail=True)
    return DataLoader(train_set, batch_sampler=batches, **common)
