"""Data-set factory: :func:`build_dataset` builds a COCO or VOC multi-label data set by name."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from PIL import Image

from balancemix_timm.data.datasets.coco import CocoMultiLabel
from balancemix_timm.data.datasets.voc import VocMultiLabel

__all__ = ["build_dataset"]


def build_dataset(
    kind: str,
    root: str | os.PathLike,
    *,
    ann_file: str | os.PathLike | None = None,
    split: str | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    **kwargs: Any,
) -> CocoMultiLabel | VocMultiLabel:
    """Build a multi-label data set by name.

    Args:
        kind: ``"coco"`` (needs ``ann_file``) or ``"voc"`` (uses ``split``, default
            ``"trainval"``).
        root: image directory (COCO) or VOC root.
        ann_file: COCO annotation JSON.
        split: VOC image-set name.
        transform: image transform.
        **kwargs: further keyword options of :class:`CocoMultiLabel` / :class:`VocMultiLabel`.

    Raises:
        ValueError: unknown ``kind`` or arguments that do not fit it.
    """
    key = str(kind).lower()
    if key == "coco":
        if ann_file is None:
            raise ValueError("ann_file is required for kind='coco'")
        if split is not None:
            raise ValueError("split is not used for kind='coco'; pass ann_file instead")
        return CocoMultiLabel(root, ann_file, transform=transform, **kwargs)
    if key == "voc":
        if ann_file is not None:
            raise ValueError("ann_file is not used for kind='voc'; pass split instead")
        return VocMultiLabel(root, "trainval" if split is None else split,
                             transform=transform, **kwargs)
    raise ValueError(f"kind must be 'coco' or 'voc', got {kind!r}")
