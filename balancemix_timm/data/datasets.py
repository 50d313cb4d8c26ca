"""Multi-label image data sets that also return each sample's index.

BalanceMix keeps per-instance state across epochs (the minority sampler's weights, Eq. 2-4;
the per-label clean probabilities, Eq. 6-8; the refined labels, Eq. 9), so every sample has to
carry its position in the training set. The data sets here return ``(image, target, index)``:

* :class:`CocoMultiLabel` reads a COCO ``instances_*.json`` file (as ML-Decoder trains on COCO
  2014: images without annotations are dropped, 82,081 train / 40,137 val images).
* :class:`VocMultiLabel` reads the Pascal-VOC directory layout.
* :class:`IndexedDataset` wraps any data set that returns ``(image, target)`` (for instance
  ML-Decoder's own ``CocoDetection``) so that it returns ``(image, target, index)``.

Labels are kept as an ``(N, K)`` ``torch.uint8`` multi-hot matrix (``labels``): a quarter of the
memory of float32 (82,081 x 80 COCO labels take 6.6 MB) and exact. ``__getitem__`` returns the
row as a float32 ``(K,)`` target, ready for BCE. The labels read from the annotation files stay
available as ``annotation_labels`` when the training labels are replaced (noise injection),
so label precision / recall (Eq. 12-13 of BalanceMix) can be measured against them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from balancemix_timm._checks import check_binary, check_ndim

__all__ = [
    "VOC_CLASSES",
    "CocoMultiLabel",
    "VocMultiLabel",
    "IndexedDataset",
    "build_dataset",
    "check_same_classes",
    "parse_difficult",
]

_logger = logging.getLogger(__name__)

#: The 20 Pascal-VOC classes in their standard (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

_MAX_LISTED_MISSING = 5

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


def _as_label_matrix(labels: Any, name: str, shape: tuple[int, int]) -> Tensor:
    """Validate a caller-given label matrix and return it as an (N, K) uint8 tensor."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    elif not isinstance(labels, Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} must be a tensor or array of shape {shape}, got {type(labels).__name__}"
            ) from None
    check_ndim(labels, name, 2)
    if tuple(labels.shape) != shape:
        raise ValueError(
            f"{name} must have shape {shape} (images, classes), got {tuple(labels.shape)}"
        )
    check_binary(labels, name)
    return labels.detach().to(device="cpu", dtype=torch.uint8).contiguous().clone()


#: Image modes whose samples Pillow's ``convert("RGB")`` clips to 0..255 instead of scaling:
#: they are scaled to the 8-bit range here (:func:`_to_rgb`).
_WIDE_MODES = ("I", "F")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded PIL image of any mode to 8-bit RGB, keeping its content.

    Rules:

    * 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ...; 16-bit grey PNG and TIFF) and ``I``
      (32-bit integers, read as 16-bit samples): ``round(v / 257)``, so 0..65535 maps onto
      0..255. ``I`` values outside 0..65535 are refused.
    * ``F`` (32-bit float): values in [0, 1] are scaled by 255; values outside [0, 1] or not
      finite are refused (no range can be assumed for them).
    * Every other mode (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGBA``, ``CMYK``, ``YCbCr``,
      ``LAB``, ``HSV``, ...) goes through Pillow's ``convert("RGB")``, which maps them
      colorimetrically and drops alpha; 16-bit RGB(A) PNGs are already 8-bit after decoding.

    Args:
        img: a PIL image (already opened; this call decodes it).

    Returns:
        An ``RGB`` PIL image of the same size.

    Raises:
        ValueError: a mode whose values cannot be mapped onto 0..255 as stated above, or a
            mode Pillow cannot convert to RGB.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in _WIDE_MODES:
        arr = np.asarray(img)
        if mode == "F":
            arr = arr.astype(np.float64)
            if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
                raise ValueError(f"mode F image with values in [{arr.min():g}, {arr.max():g}]: "
                                 "float images must hold values in [0, 1]")
            grey = np.rint(arr * 255.0)
        else:
            arr = arr.astype(np.int64)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError(f"mode {mode} image with values in [{arr.min()}, {arr.max()}]: "
                                 "integer images must hold 16-bit values in [0, 65535]")
            grey = np.rint(arr / 257.0)
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def _load_rgb(path: str, index: int) -> Image.Image:
    """Open ``path`` with PIL and convert it to 8-bit RGB (see :func:`_to_rgb`).

    Every failure names the file and the sample index and is chained from Pillow's error:
    decode errors (truncated, empty or unidentified files) stay ``OSError``, images over
    Pillow's decompression-bomb limit stay ``PIL.Image.DecompressionBombError``, anything else
    (an unconvertible mode or range, a decoder's ``ValueError`` or ``SyntaxError``) is a
    ``ValueError``.

    Raises:
        FileNotFoundError: the file does not exist.
        OSError, PIL.Image.DecompressionBombError, ValueError: as above.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file for sample {index} not found: {path}")
    try:
        with Image.open(path) as img:
            return _to_rgb(img)
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - every decode failure is re-raised naming the file
        msg = f"cannot read image file for sample {index}: {path} ({type(err).__name__}: {err})"
        if isinstance(err, OSError):  # includes PIL.UnidentifiedImageError and truncated files
            raise OSError(msg) from err
        if isinstance(err, Image.DecompressionBombError):
            raise Image.DecompressionBombError(msg) from err
        raise ValueError(msg) from err


class _MultiLabelImageDataset(Dataset):
    """Shared behaviour: label storage, ``(image, target, index)`` samples, file checks.

    Subclasses set ``_image_paths`` (list of str), ``_image_ids``, ``_classes``,
    ``_category_ids`` and call :meth:`_init_labels`.
    """

    transform: Callable[[Image.Image], Any] | None
    _image_paths: list[str]
    _image_ids: list[Any]
    _classes: list[str]
    _category_ids: list[int]
    _annotation_labels: Tensor
    _labels: Tensor

    def _init_labels(self, annotation_labels: Tensor, labels: Any | None) -> None:
        self._annotation_labels = annotation_labels
        if labels is None:
            self._labels = annotation_labels.clone()
        else:
            self.set_labels(labels)

    # ------------------------------------------------------------------ labels
    @property
    def labels(self) -> Tensor:
        """The training labels, an ``(N, K)`` ``torch.uint8`` multi-hot matrix.

        These are the annotation labels unless replaced with ``labels=`` or
        :meth:`set_labels` (noise injection). Returned as the stored tensor, not a copy.
        """
        return self._labels

    @property
    def annotation_labels(self) -> Tensor:
        """The labels read from the annotation files, ``(N, K)`` ``torch.uint8``."""
        return self._annotation_labels

    def set_labels(self, labels: Tensor | np.ndarray | Sequence[Sequence[int]]) -> None:
        """Replace the training labels (for example with noisy ones).

        Args:
            labels: ``(N, K)`` binary matrix (bool, integer or float holding only 0 and 1).

        Raises:
            ValueError: if the shape is not ``(len(self), num_classes)`` or an entry is not 0/1.
        """
        self._labels = _as_label_matrix(labels, "labels", (len(self._image_paths),
                                                           len(self._classes)))

    def positive_counts(self, *, annotation: bool = False) -> Tensor:
        """Number of positive labels per class, ``(K,)`` int64.

        Args:
            annotation: count the annotation labels instead of the (possibly replaced)
                training labels.
        """
        source = self._annotation_labels if annotation else self._labels
        return source.sum(dim=0, dtype=torch.int64)

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> "_MultiLabelImageDataset":
        """A shallow copy holding only the images ``indices``, renumbered ``0..M-1``.

        The copy shares the transform and class list; its annotation and training labels are
        the rows ``indices`` of this data set's (so injected noise is kept). Used to train on a
        part of the training set (cross-validation folds, see ``Trainer(train_indices=...)``).

        Args:
            indices: ``(M,)`` distinct sample indices in ``[0, len(self))``, in the order the
                subset should have.

        Raises:
            ValueError: an index out of range, a repeated index, or no index.
        """
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
        n = len(self)
        if idx.numel() == 0:
            raise ValueError("subset: no index given")
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"subset: indices must be in [0, {n}), got [{int(idx.min())}, {int(idx.max())}]")
        if len(torch.unique(idx)) != idx.numel():
            raise ValueError("subset: repeated indices")
        picked = idx.tolist()
        sub = copy.copy(self)
        sub._image_paths = [self._image_paths[i] for i in picked]
        sub._image_ids = [self._image_ids[i] for i in picked]
        sub._annotation_labels = self._annotation_labels[idx].clone()
        sub._labels = self._labels[idx].clone()
        if getattr(self, "_difficult_mask", None) is not None:
            sub._difficult_mask = self._difficult_mask[idx].clone()
        return sub

    # -------------------------------------------------------------- properties
    @property
    def classes(self) -> list[str]:
        """Class names, in class-index order."""
        return list(self._classes)

    @property
    def category_ids(self) -> list[int]:
        """The data set's own id of each class, in class-index order."""
        return list(self._category_ids)

    @property
    def image_ids(self) -> list[Any]:
        """The data set's own id of each sample, in sample-index order."""
        return list(self._image_ids)

    @property
    def image_paths(self) -> list[str]:
        """Full path of each sample's image file, in sample-index order."""
        return list(self._image_paths)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self._classes)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._image_paths)

    def __getitem__(self, index: int) -> tuple[Any, Tensor, int]:
        """Return ``(image, target, index)``.

        Args:
            index: sample index in ``[0, len(self))`` (negative indices count from the end;
                the returned index is always the non-negative one).

        Returns:
            ``image``: the RGB PIL image after ``transform`` (a tensor with the usual
            transforms); ``target``: float32 ``(K,)`` multi-hot training labels;
            ``index``: int.

        Raises:
            IndexError: index out of range.
            FileNotFoundError: the image file does not exist (the message names it).
            OSError: the image file cannot be decoded (the message names it and ``index``).
            PIL.Image.DecompressionBombError: the image is over Pillow's pixel limit (the
                message names it and ``index``).
            ValueError: the image's mode or values cannot be read as 8-bit RGB (see
                :func:`_to_rgb`; the message names it and ``index``).
        """
        n = len(self._image_paths)
        index = int(index)
        if index < -n or index >= n:
            raise IndexError(f"index {index} out of range for a data set of {n} images")
        if index < 0:
            index += n
        image = _load_rgb(self._image_paths[index], index)
        if self.transform is not None:
            image = self.transform(image)
        target = self._labels[index].to(torch.float32)
        return image, target, index

    def verify_files(self) -> None:
        """Check that every image file exists.

        Raises:
            FileNotFoundError: listing the first few missing paths and how many are missing.
        """
        missing = [p for p in self._image_paths if not os.path.isfile(p)]
        if missing:
            shown = ", ".join(missing[:_MAX_LISTED_MISSING])
            more = "" if len(missing) <= _MAX_LISTED_MISSING else ", ..."
            raise FileNotFoundError(
                f"{len(missing)} of {len(self._image_paths)} image files are missing: "
                f"{shown}{more}"
            )

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._extra_repr()
        return (f"{type(self).__name__}(num_images={len(self)}, "
                f"num_classes={self.num_classes}{', ' + extra if extra else ''})")


# ====================================================================== COCO
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


# ======================================================================= VOC
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


# =================================================================== wrapper
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


# ================================================================ class check
def check_same_classes(train: Any, val: Any, *, names: tuple[str, str] = ("train", "val")) -> None:
    """Check that two data sets give every class column the same meaning.

    The class names must agree column by column and, when both data sets carry
    ``category_ids`` (COCO), so must the category ids.

    Args:
        train: a data set with ``classes`` (and optionally ``category_ids``).
        val: the other data set.
        names: how the two are named in the error message.

    Raises:
        ValueError: listing the categories found in only one of them and the columns whose
            class differs.
    """
    a_name, b_name = names
    a, b = list(train.classes), list(val.classes)
    a_ids = list(getattr(train, "category_ids", range(len(a))))
    b_ids = list(getattr(val, "category_ids", range(len(b))))
    if a == b and a_ids == b_ids:
        return
    a_cats = [f"{n!r} (id {i})" for n, i in zip(a, a_ids)]
    b_cats = [f"{n!r} (id {i})" for n, i in zip(b, b_ids)]
    only_a = [c for c in a_cats if c not in b_cats]
    only_b = [c for c in b_cats if c not in a_cats]
    columns = [f"{k}: {x} vs {y}" for k, (x, y) in enumerate(zip(a_cats, b_cats)) if x != y]
    parts = [f"{a_name} has {len(a)} classes and {b_name} has {len(b)}"]
    if only_a:
        parts.append(f"only in {a_name}: {', '.join(only_a)}")
    if only_b:
        parts.append(f"only in {b_name}: {', '.join(only_b)}")
    if columns:
        parts.append(f"differing class columns: {'; '.join(columns[:10])}"
                     + (" ..." if len(columns) > 10 else ""))
    raise ValueError(f"the {a_name} and {b_name} data sets declare different categories, so a "
                     f"class column would mean different things: " + "; ".join(parts))


# =================================================================== factory
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
