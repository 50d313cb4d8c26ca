"""COCO reader: :class:`CocoMultiLabel`, the multi-label view of an ``instances_*.json`` file."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from balancemix_timm.data.datasets.base import _MultiLabelImageDataset

__all__ = ["CocoMultiLabel"]

# The package's one logger: log filters name ``balancemix_timm.data.datasets``.
_logger = logging.getLogger("balancemix_timm.data.datasets")


def _require_keys(entry: Any, keys: Sequence[str], where: str, ann_file: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"ann_file {ann_file}: each entry of {where} must be an object, "
                         f"got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise ValueError(f"ann_file {ann_file}: an entry of {where} lacks the key {key!r} "
                             f"(entry: {str(entry)[:120]})")


class CocoMultiLabel(_MultiLabelImageDataset):
    """Multi-label view of a COCO detection data set (``instances_*.json``).

    An image is positive for every category that has at least one annotation on it (boxes of
    all sizes; ML-Decoder's size-grouped ``(3, 80)`` target collapsed by ``max``). Category ids
    (COCO's are 1..90 with gaps) map to contiguous class indices sorted by category id, which
    is COCO's file order and therefore ML-Decoder's class order.

    Args:
        root: directory holding the images; each image's ``file_name`` is relative to it.
        ann_file: path of the COCO annotation JSON (keys ``images``, ``annotations``,
            ``categories``).
        transform: applied to the RGB PIL image.
        include_empty: keep images that have no annotation (all-zero targets). ``False``
            (default) matches ML-Decoder, which keeps 82,081 of COCO 2014's 82,783 train images.
        labels: optional ``(N, K)`` binary matrix replacing the annotation labels (noise
            injection), in this data set's sample order.
        include_crowd: count ``iscrowd=1`` annotations as positives (default ``True``, as
            ML-Decoder, whose ``imgToAnns`` holds crowd annotations too).
        image_order: ``"images"`` (default) keeps the order of the JSON ``images`` list;
            ``"annotations"`` orders images by their first annotation, as ML-Decoder's
            ``list(coco.imgToAnns.keys())`` does (empty images, if kept, come last). Only
            sample indices depend on it.

    A category without any annotation in ``ann_file`` (after ``include_crowd``) is logged as a
    warning naming it: the model gets an output for it that no target of this split marks
    positive.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: invalid JSON, missing keys, duplicate ids, annotations pointing at unknown
            images or categories, no categories, or no image left.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str | os.PathLike,
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        include_empty: bool = False,
        labels: Tensor | np.ndarray | None = None,
        include_crowd: bool = True,
        image_order: str = "images",
    ) -> None:
        if image_order not in ("images", "annotations"):
            raise ValueError(
                f"image_order must be 'images' or 'annotations', got {image_order!r}")
        self.root = os.fspath(root)
        self.ann_file = os.fspath(ann_file)
        self.transform = transform
        self.include_empty = bool(include_empty)
        self.include_crowd = bool(include_crowd)
        self.image_order = image_order

        data = self._read_json(self.ann_file)
        images, annotations, categories = (data["images"], data["annotations"],
                                           data["categories"])

        # categories -> contiguous indices sorted by category id
        cat_names: dict[int, str] = {}
        for cat in categories:
            _require_keys(cat, ("id", "name"), "categories", self.ann_file)
            cid = int(cat["id"])
            if cid in cat_names:
                raise ValueError(f"ann_file {self.ann_file}: duplicate category id {cid}")
            cat_names[cid] = str(cat["name"])
        if not cat_names:
            raise ValueError(f"ann_file {self.ann_file}: 'categories' is empty")
        self._category_ids = sorted(cat_names)
        self._classes = [cat_names[c] for c in self._category_ids]
        cat_to_index = {c: k for k, c in enumerate(self._category_ids)}

        # images
        file_names: dict[Any, str] = {}
        for img in images:
            _require_keys(img, ("id", "file_name"), "images", self.ann_file)
            if img["id"] in file_names:
                raise ValueError(f"ann_file {self.ann_file}: duplicate image id {img['id']!r}")
            file_names[img["id"]] = str(img["file_name"])

        # annotations -> positive class sets per image, in first-annotation order
        positives: dict[Any, set[int]] = {}
        for ann in annotations:
            _require_keys(ann, ("image_id", "category_id"), "annotations", self.ann_file)
            image_id, cid = ann["image_id"], ann["category_id"]
            if image_id not in file_names:
                raise ValueError(f"ann_file {self.ann_file}: an annotation refers to image id "
                                 f"{image_id!r}, which is not in 'images'")
            try:
                k = cat_to_index[int(cid)]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"ann_file {self.ann_file}: an annotation refers to category id "
                                 f"{cid!r}, which is not in 'categories'") from None
            if not self.include_crowd and ann.get("iscrowd", 0):
                continue
            positives.setdefault(image_id, set()).add(k)

        if image_order == "images":
            order = [i for i in file_names if include_empty or i in positives]
        else:
            order = list(positives)
            if include_empty:
                order += [i for i in file_names if i not in positives]
        if not order:
            what = "images" if include_empty else "images with at least one annotation"
            raise ValueError(f"ann_file {self.ann_file}: the data set is empty (no {what}; "
                             f"{len(file_names)} images, {len(annotations)} annotations)")

        matrix = torch.zeros(len(order), len(self._classes), dtype=torch.uint8)
        for row, image_id in enumerate(order):
            ks = sorted(positives.get(image_id, ()))
            if ks:
                matrix[row, ks] = 1
        self._image_ids = order
        self._image_paths = [os.path.join(self.root, file_names[i]) for i in order]
        self._init_labels(matrix, labels)
        # A category no annotation of this split marks (e.g. the root category of a Roboflow
        # export) is a model output that no target of the split makes positive.
        unannotated = [k for k in range(len(self._classes)) if not int(matrix[:, k].sum())]
        if unannotated:
            named = ", ".join(f"{self._classes[k]!r} (id {self._category_ids[k]})" for k in unannotated)
            _logger.warning(
                "CocoMultiLabel %s: %d of %d categories have no annotation in this split: %s; no "
                "target of this split marks them positive (remove them from 'categories' if they "
                "are not classes)", self.ann_file, len(unannotated), len(self._classes), named,
            )
        _logger.info("CocoMultiLabel %s: %d images (%d without annotations dropped), %d classes",
                     self.ann_file, len(order), len(file_names) - len(order), len(self._classes))

    @staticmethod
    def _read_json(ann_file: str) -> dict[str, Any]:
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f"ann_file not found: {ann_file}")
        try:
            with open(ann_file, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"ann_file {ann_file} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"ann_file {ann_file} must hold a JSON object, "
                             f"got {type(data).__name__}")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"ann_file {ann_file} lacks the key {key!r} "
                                 f"(found: {sorted(data)})")
            if not isinstance(data[key], list):
                raise ValueError(f"ann_file {ann_file}: {key!r} must be a list, "
                                 f"got {type(data[key]).__name__}")
        return data

    def _extra_repr(self) -> str:
        return f"ann_file={self.ann_file!r}"
