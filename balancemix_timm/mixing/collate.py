"""Mixing inside DataLoader workers: :class:`PairedDataset` loads both items of a
``(random_idx, minority_idx)`` pair and :class:`MixupCollate` mixes their images into a
:class:`MixedBatch`, leaving the targets unmixed for the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from balancemix_timm.mixing.interpolate import _interpolate
from balancemix_timm.mixing.lambdas import _check_options, _draw_lam
from balancemix_timm.sampling.sharded import _check_int, _derive_seed

__all__ = ["PairedDataset", "MixedBatch", "MixupCollate"]


class PairedDataset(Dataset):
    """Index a dataset with ``(random_idx, minority_idx)`` pairs and return both items.

    Args:
        dataset: A map-style dataset whose items are ``(image, target, index)``; items of the
            form ``(image, target)`` get the requested index appended. ``image`` may be a tensor
            or a tuple of views (first = training view).
        minority_dataset: Where the minority items are read from (default: ``dataset``), same
            length and sample order. With views (for Eq. 9), the same data set with the plain
            training transform saves building the minority items' views, which
            :class:`MixupCollate` drops (its cost and accuracy effect: ``docs/performance.md``
            §4). The ML-Decoder plugin uses it; the trainer reads the minority items through
            the views.
    """

    def __init__(self, dataset: Dataset, minority_dataset: Dataset | None = None) -> None:
        for name, ds in (("dataset", dataset), ("minority_dataset", minority_dataset)):
            if ds is not None and (not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__")):
                raise ValueError(f"{name} must be a sized map-style dataset, got {type(ds).__name__}")
        if minority_dataset is not None and len(minority_dataset) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"minority_dataset has {len(minority_dataset)} items, dataset {len(dataset)}"  # type: ignore[arg-type]
            )
        self.dataset = dataset
        self.minority_dataset = dataset if minority_dataset is None else minority_dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _item(self, index: int, dataset: Dataset) -> tuple[Any, Any, Any]:
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            length = f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
            raise ValueError(
                "dataset items must be (image, target) or (image, target, index) tuples, got "
                f"{type(item).__name__}{length}"
            )
        return (item[0], item[1], index) if len(item) == 2 else tuple(item)  # type: ignore[return-value]

    def __getitem__(self, pair: Sequence[int]) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, Any]]:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"index must be a (random_idx, minority_idx) pair, got {pair!r}")
        r = _check_int(pair[0], "random_idx")
        m = _check_int(pair[1], "minority_idx")
        return self._item(r, self.dataset), self._item(m, self.minority_dataset)


class MixedBatch(NamedTuple):
    """A batch mixed in the DataLoader workers by :class:`MixupCollate`.

    Attributes:
        input: Mixed training views ``lam * x_R + (1 - lam) * x_M``, shape (B, C, H, W).
        target_r: The random items' given targets, collated (e.g. (B, K)), unmixed.
        target_m: The minority items' given targets, collated, unmixed.
        index_r: Dataset indices of the random items, LongTensor (B,).
        index_m: Dataset indices of the minority items, LongTensor (B,).
        lam: Float32 tensor (B,); the same value repeated in batch mode.
        view_r: The random items' extra views stacked to (V - 1, B, C, H, W) when the dataset
            returns a tuple of V >= 2 images; ``None`` otherwise.
    """

    input: Tensor
    target_r: Any
    target_m: Any
    index_r: Tensor
    index_m: Tensor
    lam: Tensor
    view_r: Tensor | None = None


def _split_views(items: list[tuple[Any, Any, Any]], name: str) -> tuple[Tensor, Tensor | None]:
    images = [it[0] for it in items]
    if all(isinstance(im, Tensor) for im in images):
        return torch.stack(images), None
    if not all(isinstance(im, (tuple, list)) and len(im) >= 1 for im in images):
        raise ValueError(f"{name} images must all be tensors or all be non-empty tuples of tensors")
    n_views = len(images[0])
    if any(len(im) != n_views for im in images):
        raise ValueError(f"{name} items must all have the same number of views ({n_views})")
    first = torch.stack([im[0] for im in images])
    if n_views == 1:
        return first, None
    extra = torch.stack([torch.stack([im[v] for im in images]) for v in range(1, n_views)])
    return first, extra


class MixupCollate:
    """``collate_fn`` that mixes the images of :class:`PairedDataset` batches in the workers.

    Each batch is a list of ``((image_r, target_r, index_r), (image_m, target_m, index_m))``.
    The training views are mixed with ``lam`` (Eq. 5 of BalanceMix); the targets are returned
    unmixed so that the engine mixes the refined labels with :func:`mix_targets`.

    Reproducibility: ``lam`` of a batch is drawn from a fresh CPU generator seeded by a hash of
    ``(seed, epoch, the batch's (index_r, index_m) pairs)``, so it does not depend on which worker
    collates the batch nor on ``num_workers``. Since the samplers draw new indices every epoch,
    lambdas differ across epochs even without :meth:`set_epoch`; if you call it, do not use
    ``persistent_workers=True`` (the workers keep the collate object they were started with).

    Args:
        alpha: Beta concentration (paper: 4; 0 disables mixing).
        mode: ``"batch"`` (one lambda per batch) or ``"elem"`` (one per pair).
        prob: Probability of mixing (per batch / per pair); otherwise lambda = 1.
        seed: Base seed.
    """

    _salt = 0x4D495855  # "MIXU"

    def __init__(
        self, *, alpha: float = 4.0, mode: str = "batch", prob: float = 1.0, seed: int = 0
    ) -> None:
        self.alpha, self.mode, self.prob = _check_options(alpha, mode, prob)
        self.seed = _check_int(seed, "seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Mix the epoch into the per-batch seeds (see the class note on persistent workers)."""
        self.epoch = _check_int(epoch, "epoch")

    def batch_generator(self, index_r: Sequence[int], index_m: Sequence[int]) -> torch.Generator:
        """The generator that draws ``lam`` for the batch with these index pairs."""
        parts: list[int] = [self._salt, self.seed, self.epoch, len(index_r)]
        for r, m in zip(index_r, index_m):
            parts.append(int(r))
            parts.append(int(m))
        g = torch.Generator()
        g.manual_seed(_derive_seed(*parts))
        return g

    def __call__(self, batch: Sequence[Any]) -> MixedBatch:
        if not isinstance(batch, (list, tuple)) or len(batch) == 0:
            raise ValueError("batch must be a non-empty list of (random_item, minority_item) pairs")
        for pair in batch:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError("batch must hold (random_item, minority_item) pairs from PairedDataset")
            for it in pair:
                if not isinstance(it, (tuple, list)) or len(it) != 3:
                    raise ValueError("items must be (image, target, index) tuples (use PairedDataset)")
        items_r = [p[0] for p in batch]
        items_m = [p[1] for p in batch]
        x_r, view_r = _split_views(items_r, "random")
        x_m, _ = _split_views(items_m, "minority")  # the minority items' extra views are dropped
        if x_r.shape != x_m.shape:
            raise ValueError(
                f"random and minority images must have the same shape, got {tuple(x_r.shape[1:])} "
                f"and {tuple(x_m.shape[1:])}"
            )
        index_r = torch.tensor([int(it[2]) for it in items_r], dtype=torch.long)
        index_m = torch.tensor([int(it[2]) for it in items_m], dtype=torch.long)
        b = len(batch)
        g = self.batch_generator(index_r.tolist(), index_m.tolist())
        lam = _draw_lam(self.alpha, self.mode, self.prob, b, g)
        if not isinstance(lam, Tensor):
            lam = torch.full((b,), lam, dtype=torch.float32)
        x_mix = _interpolate(x_r, x_m, lam)
        return MixedBatch(
            input=x_mix,
            target_r=default_collate([it[1] for it in items_r]),
            target_m=default_collate([it[1] for it in items_m]),
            index_r=index_r,
            index_m=index_m,
            lam=lam,
            view_r=view_r,
        )

    def state_dict(self) -> dict[str, Any]:
        """Options, seed and epoch."""
        return {
            "alpha": self.alpha,
            "mode": self.mode,
            "prob": self.prob,
            "seed": self.seed,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`'s output."""
        self.alpha, self.mode, self.prob = _check_options(
            state_dict.get("alpha", self.alpha),
            state_dict.get("mode", self.mode),
            state_dict.get("prob", self.prob),
        )
        self.seed = _check_int(state_dict.get("seed", self.seed), "seed")
        self.epoch = _check_int(state_dict.get("epoch", self.epoch), "epoch")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, mode={self.mode!r}, prob={self.prob}, "
            f"seed={self.seed})"
        )
