"""The shared multi-label image data set: label storage, ``(image, target, index)`` samples and
image files read as 8-bit RGB.

Labels are kept as an ``(N, K)`` ``torch.uint8`` multi-hot matrix (``labels``); ``__getitem__``
returns the row as a float32 ``(K,)`` target. The COCO and VOC readers
(:mod:`~balancemix_timm.data.datasets.coco`, :mod:`~balancemix_timm.data.datasets.voc`) subclass
:class:`_MultiLabelImageDataset`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from balancemix_timm._checks import check_binary, check_ndim

_MAX_LISTED_MISSING = 5


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
    labels = check_binary(labels, name)
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
    """Open ``path`` with PIL, turn it upright and convert it to 8-bit RGB (see :func:`_to_rgb`).

    The one image reader of the data sets (COCO, VOC and the demo set, in training and
    evaluation). Upright means as image viewers show it: an EXIF ``Orientation`` tag (2-8, e.g.
    6 for a phone photo stored sideways) is applied with Pillow's
    :func:`PIL.ImageOps.exif_transpose`, so the pixels reach the model in their displayed
    geometry (width and height swapped for orientations 5-8).

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
            ImageOps.exif_transpose(img, in_place=True)
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

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> _MultiLabelImageDataset:
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
