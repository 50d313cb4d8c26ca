"""The patched ML-Decoder script's training loader and the BalanceMix views of its data set."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.transforms import MultiView

__all__ = ["PairedTrainLoader", "with_views", "first_of_pairs"]


class PairedTrainLoader:
    """The training loader of the patched script: paired random/minority batches, mixed.

    Iterating yields ``(mixed_images, targets_r)`` like ML-Decoder's loader yields
    ``(images, targets)``; the full :class:`~balancemix_timm.mixing.MixedBatch` of the batch
    being yielded is kept on the plugin for :meth:`BalanceMixPlugin.mix`, ``criterion`` and
    ``record``. ``len()`` is the number of batches per epoch, ``ceil(N / batch_size)`` (one
    fewer when a one-pair tail joins the batch before it).

    Args:
        on_batch: Called with each :class:`~balancemix_timm.mixing.MixedBatch` before it is
            yielded, and with None once the epoch's batches are done (the plugin keeps it).
        loader: A DataLoader yielding :class:`~balancemix_timm.mixing.MixedBatch`.
    """

    def __init__(self, on_batch: Callable[[Any], None], loader: DataLoader) -> None:
        self.on_batch = on_batch
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Any]]:
        for batch in self.loader:
            self.on_batch(batch)
            yield batch.input, batch.target_r
        self.on_batch(None)


# ============================================================================ plugin

def with_views(dataset: Dataset, num_views: int, image_transform: Callable[[Any], Any] | None = None) -> Dataset:
        """A shallow copy of ``dataset`` whose ``transform`` returns ``num_views`` views of its
        own transform, then (``image_transform``) the image under ``image_transform``."""
        if not hasattr(dataset, "transform") or dataset.transform is None:  # type: ignore[attr-defined]
            raise ValueError(
                "dataset must have a transform attribute that its __getitem__ applies, to make "
                "the augmented views of label_source='views' and the image of "
                "confidence_input='image' (or use label_source='epoch_pass' and "
                "confidence_input='views' with such a dataset)"
            )
        views = copy.copy(dataset)
        transforms = [dataset.transform] * num_views  # type: ignore[attr-defined]
        if image_transform is not None:
            transforms.append(image_transform)
        views.transform = MultiView(transforms)  # type: ignore[attr-defined]
        return views



def first_of_pairs(batch: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """Collate of the epoch pass: ``(views (V, B, C, H, W) or images (B, C, H, W), index (B,))``."""
    items = [pair[0] for pair in batch]
    index = torch.tensor([int(it[2]) for it in items], dtype=torch.long)
    images = [it[0] for it in items]
    if isinstance(images[0], (tuple, list)):
        return torch.stack([torch.stack([im[v] for im in images]) for v in range(len(images[0]))]), index
    return torch.stack(images), index
