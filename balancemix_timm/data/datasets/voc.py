"""Pascal-VOC reader: :class:`VocMultiLabel`, its 20 classes and the ``<difficult>`` flag parser."""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from balancemix_timm.data.datasets.base import _MultiLabelImageDataset

__all__ = ["VOC_CLASSES", "VocMultiLabel", "parse_difficult"]

# The package's one logger: log filters name ``balancemix_timm.data.datasets``.
_logger = logging.getLogger("balancemix_timm.data.datasets")


#: The 20 Pascal-VOC classes in their standard (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


_DIFFICULT_TEXTS = {"1": True, "true": True, "0": False, "false": False, "": False}


def parse_difficult(text: str | None) -> bool | None:
    """Read the text of a VOC ``<difficult>`` element.

    ``1`` / ``true`` (any case, or a number equal to 1 such as ``1.0``) mean difficult;
    ``0`` / ``false`` / an empty element (or a number equal to 0 such as ``0.0``) mean not.

    Args:
        text: the element's text (``None`` for an empty element).

    Returns:
        ``True`` or ``False``, or ``None`` when the text is none of the above (the caller
        decides; :class:`VocMultiLabel` reads such objects as not difficult and warns).
    """
    key = (text or "").strip().lower()
    if key in _DIFFICULT_TEXTS:
        return _DIFFICULT_TEXTS[key]
    try:
        value = float(key)
    except ValueError:
        return None
    if value == 1.0:
        return True
    if value == 0.0:
        return False
    return None


class VocMultiLabel(_MultiLabelImageDataset):
    """Multi-label Pascal-VOC data set.

    Layout: ``root/ImageSets/Main/<split>.txt`` lists image ids (first token of each line),
    ``root/Annotations/<id>.xml`` holds the objects, ``root/JPEGImages/<id>.jpg`` the images.
    An image is positive for every class that has an object in its XML file.

    Args:
        root: the ``VOCdevkit/VOC2007``-style directory.
        split: name of the image-set file (``"trainval"``, ``"train"``, ``"val"``, ``"test"``).
        transform: applied to the RGB PIL image.
        classes: class names in class-index order (default: the 20 standard VOC classes).
        use_difficult: count objects marked ``difficult`` as positives. ``False`` (default)
            ignores them, so a class present only through difficult objects is negative, the
            common multi-label VOC practice. Either way such labels are flagged in
            :attr:`difficult_mask`, which the VOC evaluation protocol leaves out of the AP.
            ``<difficult>`` is read by :func:`parse_difficult`: ``1``/``true`` are difficult,
            ``0``/``false``/``0.0``/empty are not, and any other text (e.g. ``Unspecified``)
            is read as not difficult with a warning naming the first such file.
        include_empty: keep images with no positive class (only possible through ignored
            difficult objects or unlisted classes). ``True`` (default) keeps every image of the
            split file, which defines the data set (VOC 2007: 5,011 trainval / 4,952 test).
        labels: optional ``(N, K)`` binary matrix replacing the annotation labels.
        unknown_classes: what to do with an object whose name is not in ``classes``:
            ``"error"`` (default) raises ``ValueError``; ``"ignore"`` skips it (for a class
            subset).
        image_ext: extension of the image files.

    ``category_ids`` are the class indices ``0..K-1``; ``image_ids`` the split file's ids.

    Raises:
        FileNotFoundError: the split file or an annotation file does not exist.
        ValueError: bad ``classes``, malformed XML, unknown class names, or an empty data set.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "trainval",
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
        use_difficult: bool = False,
        include_empty: bool = True,
        labels: Tensor | np.ndarray | None = None,
        unknown_classes: str = "error",
        image_ext: str = ".jpg",
    ) -> None:
        if unknown_classes not in ("error", "ignore"):
            raise ValueError(
                f"unknown_classes must be 'error' or 'ignore', got {unknown_classes!r}")
        if isinstance(classes, str):
            raise ValueError("classes must be a sequence of class names, got a single string")
        names = list(VOC_CLASSES if classes is None else classes)
        if not names:
            raise ValueError("classes must not be empty")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"classes must hold non-empty strings, got {name!r}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"classes must be unique, got duplicates {dup}")

        self.root = os.fspath(root)
        self.split = split
        self.transform = transform
        self.use_difficult = bool(use_difficult)
        self.include_empty = bool(include_empty)
        self.unknown_classes = unknown_classes
        self._classes = names
        self._category_ids = list(range(len(names)))
        class_to_index = {n: k for k, n in enumerate(names)}

        split_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"split file for split {split!r} not found: {split_file}")
        with open(split_file, encoding="utf-8") as fh:
            ids = [line.split()[0] for line in fh if line.strip()]
        if not ids:
            raise ValueError(f"split file {split_file} lists no images: the data set is empty")

        rows: list[list[int]] = []
        difficult_rows: list[list[int]] = []
        kept: list[str] = []
        self._unrecognised_difficult: list[tuple[str, str]] = []
        for image_id in ids:
            ks, hard = self._parse_xml(os.path.join(self.root, "Annotations", f"{image_id}.xml"),
                                       class_to_index)
            if ks or self.include_empty:
                kept.append(image_id)
                rows.append(ks)
                difficult_rows.append(hard)
        if self._unrecognised_difficult:
            path0, text0 = self._unrecognised_difficult[0]
            _logger.warning(
                "VocMultiLabel %s/%s: %d <difficult> values are neither 0/false nor 1/true "
                "(first: %r in %s); read as not difficult", self.root, split,
                len(self._unrecognised_difficult), text0, path0)
        if not kept:
            raise ValueError(f"split {split!r} of {self.root}: the data set is empty "
                             f"(no image with a positive label among {len(ids)})")
        matrix = torch.zeros(len(kept), len(names), dtype=torch.uint8)
        difficult = torch.zeros(len(kept), len(names), dtype=torch.bool)
        for r, (ks, hard) in enumerate(zip(rows, difficult_rows)):
            if ks:
                matrix[r, ks] = 1
            if hard:
                difficult[r, hard] = True
        self._difficult_mask = difficult
        self._image_ids = kept
        self._image_paths = [os.path.join(self.root, "JPEGImages", f"{i}{image_ext}")
                             for i in kept]
        self._init_labels(matrix, labels)
        _logger.info("VocMultiLabel %s/%s: %d images (%d dropped), %d classes",
                     self.root, split, len(kept), len(ids) - len(kept), len(names))

    @property
    def difficult_mask(self) -> Tensor:
        """``(N, K)`` bool: True where the class is in the image only through difficult objects.

        These are the labels the VOC protocol neither counts as positive nor as negative; pass
        the mask as ``ignore`` to :func:`~balancemix_timm.metrics.average_precision`.
        """
        return self._difficult_mask

    def _parse_xml(self, path: str, class_to_index: dict[str, int]) -> tuple[list[int], list[int]]:
        """Classes of one annotation file: ``(positive indices, difficult-only indices)``."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"annotation file not found: {path}")
        try:
            tree = ET.parse(path)
        except ET.ParseError as err:
            raise ValueError(f"annotation file {path} is not valid XML: {err}") from err
        found: set[int] = set()
        plain: set[int] = set()
        hard: set[int] = set()
        for obj in tree.getroot().iter("object"):
            name_el = obj.find("name")
            if name_el is None or not (name_el.text or "").strip():
                raise ValueError(f"annotation file {path}: an <object> has no <name>")
            name = name_el.text.strip()
            diff_el = obj.find("difficult")
            difficult = False
            if diff_el is not None:
                parsed = parse_difficult(diff_el.text)
                if parsed is None:
                    self._unrecognised_difficult.append((path, str(diff_el.text)))
                difficult = bool(parsed)
            if name not in class_to_index:
                if self.unknown_classes == "error":
                    raise ValueError(f"annotation file {path}: unknown class name {name!r} "
                                     f"(not in classes; pass unknown_classes='ignore' to skip)")
                continue
            k = class_to_index[name]
            (hard if difficult else plain).add(k)
            if difficult and not self.use_difficult:
                continue
            found.add(k)
        return sorted(found), sorted(hard - plain)

    def _extra_repr(self) -> str:
        return f"root={self.root!r}, split={self.split!r}"
