"""The training labels of ML-Decoder's data set, read without loading an image."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["labels_from_dataset"]

_logger = logging.getLogger("balancemix_timm.integrations.ml_decoder")


def labels_from_dataset(dataset: Dataset, num_classes: int | None = None) -> Tensor:
    """``(N, K)`` uint8 training labels of ``dataset`` in its sample order, loading no image.

    Sources, in order:

    1. a ``labels`` attribute of shape ``(N, K)`` (our :class:`~balancemix_timm.data.datasets.CocoMultiLabel`);
    2. ML-Decoder's ``CocoDetection`` layout: ``coco.imgToAnns`` read in ``ids`` order, class
       index ``cat2cat[category_id]``; a class is positive when the image has an annotation of
       it, which is ML-Decoder's (3, K) size-grouped target after ``max`` over the groups;
    3. otherwise every item's target (this loads every image; a warning says so), with a 2-D
       target collapsed by ``max`` over its first dimension.

    Args:
        dataset: The training set.
        num_classes: ``K``; required for source 2 when the targets are wider than the categories
            (ML-Decoder's target is always 80 wide).

    Returns:
        ``(N, K)`` ``torch.uint8`` tensor.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset is empty")
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    own = getattr(dataset, "labels", None)
    if isinstance(own, Tensor) and own.ndim == 2 and own.shape[0] == n:
        if num_classes is not None and own.shape[1] != num_classes:
            raise ValueError(f"dataset.labels has {own.shape[1]} classes, num_classes is {num_classes}")
        return own.detach().to("cpu", torch.uint8).clone()
    coco, ids, cat2cat = (getattr(dataset, a, None) for a in ("coco", "ids", "cat2cat"))
    if coco is not None and ids is not None and isinstance(cat2cat, Mapping) and hasattr(coco, "imgToAnns"):
        if len(ids) != n:
            raise ValueError(f"dataset.ids has {len(ids)} entries for {n} samples")
        k = int(num_classes) if num_classes is not None else max(cat2cat.values()) + 1
        labels = torch.zeros(n, k, dtype=torch.uint8)
        img_to_anns = coco.imgToAnns
        for row, img_id in enumerate(ids):
            for ann in img_to_anns.get(img_id, ()) if hasattr(img_to_anns, "get") else img_to_anns[img_id]:
                c = cat2cat[ann["category_id"]]
                if not 0 <= c < k:
                    raise ValueError(
                        f"category {ann['category_id']} maps to class {c}, outside num_classes={k}"
                    )
                labels[row, c] = 1
        return labels
    _logger.warning("reading the labels of %d samples through __getitem__ (loads every image); "
                    "give labels= or a dataset with a .labels tensor to avoid it", n)
    rows = []
    for i in range(n):
        item = dataset[i]
        target = torch.as_tensor(item[1])
        if target.ndim == 2:
            target = target.max(dim=0).values
        rows.append(target.reshape(-1))
    labels = torch.stack(rows)
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"dataset targets have {labels.shape[1]} classes, num_classes is {num_classes}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("dataset targets must be binary (0/1)")
    return labels.to(torch.uint8)
