"""The ``(image, target)`` -> ``(image, target, index)`` wrapper :class:`IndexedDataset`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a data set returning ``(image, target)`` to return ``(image, target, index)``.

    Meant for ML-Decoder's ``CocoDetection`` and similar classes. Attributes not found on the
    wrapper are looked up on the wrapped data set.

    Args:
        dataset: any map-style data set whose samples are 2-tuples ``(image, target)``.
        float_target: convert the target to a float32 tensor (from a tensor, array or list).
        collapse: collapse a 2-D target ``(G, K)`` to ``(K,)`` by ``max`` over ``G`` (the
            size-grouped ``(3, 80)`` target of some ML-Decoder versions); needs a tensor target
            (``float_target=True`` or a tensor from the data set).
    """

    def __init__(self, dataset: Dataset, *, float_target: bool = True,
                 collapse: bool = True) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"dataset must be a map-style data set with __getitem__ and "
                             f"__len__, got {type(dataset).__name__}")
        self.dataset = dataset
        self.float_target = bool(float_target)
        self.collapse = bool(collapse)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        sample = self.dataset[index]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            got = f"a {len(sample)}-tuple" if isinstance(sample, (tuple, list)) \
                else type(sample).__name__
            raise ValueError(f"dataset samples must be (image, target) pairs, got {got} "
                             f"at index {index}")
        image, target = sample
        if self.float_target:
            target = torch.as_tensor(np.asarray(target) if not isinstance(target, Tensor)
                                     else target).to(torch.float32)
        if self.collapse and isinstance(target, Tensor) and target.ndim == 2:
            target = target.max(dim=0).values
        index = int(index)
        if index < 0:
            index += len(self.dataset)
        return image, target, index

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; guard against recursion while unpickling.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"
