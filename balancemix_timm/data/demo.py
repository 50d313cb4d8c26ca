"""An offline, long-tailed, multi-label demo data set in COCO format.

MS-COCO (82,081 training images, 80 classes, 2.9 positive labels per image, a class imbalance
ratio of a few hundred) cannot be downloaded where this package is often tested, so this module
builds a small stand-in for it in a few seconds from the 1,797 real handwritten 8x8 digits that
ship inside scikit-learn (:func:`sklearn.datasets.load_digits`, no download).

Design:

* **Classes** are (colour, digit) combinations, e.g. ``"red_3"``: 10 digit shapes times
  :data:`COLOURS` colours. They are interleaved so that every digit occurs in two or three colours
  and every colour carries several digits, so neither cue alone identifies a class. Combinations
  that are *not* classes still appear in the images as unlabelled distractors, as do neutral
  (grey) digits and coloured strokes: colour and shape must be bound together.
* **Long tail**: the number of training images holding class ``k`` (its positive count) follows an
  exponential (Zipf-like in rank) profile ``n_max * ratio ** (-r / (K - 1))`` over the frequency
  rank ``r``, so that the most / least frequent ratio is ``imbalance_ratio`` (100 by default).
  ``n_max`` is set so that an image holds ``mean_labels`` (2.9, as COCO) classes on average.
  :func:`demo_group_thresholds` scales COCO's many-shot / few-shot thresholds (10,000 / 1,000
  positives among 82,081 images) to the demo's size, so all three groups are populated.
* **Images**: each image gets a random number of classes (capacity ``1 + Poisson``), each class
  one instance (sometimes two), drawn from real digits that are scaled, rotated and
  alpha-blended in a jittered colour onto a textured background with strokes, distractor digits
  and pixel noise. Objects overlap at times (the least-overlapping of several random positions
  is used). Every image holds at least one class (COCO loaders drop unlabelled images).
* **Splits**: the 1,797 source digits are split *first* (80 % / 20 %), so training and validation
  images never share a handwritten digit. Every annotation records its ``source_index`` (row of
  ``load_digits``) and ``demo_meta.json`` records both index lists.
* **Format**: ``<root>/train/*.png``, ``<root>/val/*.png``,
  ``<root>/annotations/instances_{train,val}.json`` with COCO's ``images``, ``annotations``
  (``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd`` 0) and ``categories`` (non-contiguous ids, as
  COCO's), so training goes through the ordinary COCO loader.
* **Determinism**: everything derives from ``seed``; the same options give byte-identical files.

Example:
    >>> info = make_demo_dataset("/tmp/demo")  # doctest: +SKIP
    >>> info.class_groups()["few"]  # doctest: +SKIP

Command line: ``python -m balancemix_timm.data.demo --root DIR [--num-train 2000 ...]``.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..metrics import COCO_NUM_TRAIN, scaled_group_thresholds

__all__ = [
    "COLOURS",
    "COCO_NUM_TRAIN",
    "DemoDatasetInfo",
    "class_definitions",
    "demo_group_thresholds",
    "demo_positive_counts",
    "make_demo_dataset",
    "main",
]

_logger = logging.getLogger(__name__)


#: Class colours: name -> hue in degrees (HSV). Per-instance jitter is added when rendering.
COLOURS: dict[str, float] = {"red": 0.0, "green": 120.0, "blue": 225.0, "yellow": 55.0}

#: The ids COCO skips in its 1..90 range; the demo's category ids skip them too.
_COCO_MISSING_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})

_FORMAT_VERSION = 1
_META_NAME = "demo_meta.json"
_SPLITS = ("train", "val")
_VAL_SOURCE_FRACTION = 0.2

# Rendering constants. They were tuned (see the module docstring) so that plain BCE training of
# timm's resnet10t from scratch at 64 px stays far from saturation while the head classes are
# clearly learnable; the clutter (background field, strokes, distractor digits, noise) is what
# keeps colour or shape alone from identifying a class.
_OBJECT_SCALE = (0.34, 0.46)  # object side / image side
_MAX_ROTATION = 10.0  # degrees
_BOLD_PROB = 0.0  # probability of thickening a stroke with a 3x3 max filter
_REPEAT_PROB = 0.25  # a positive class gets a second instance
_HUE_JITTER = 8.0  # degrees (half of it for class objects, all of it for strokes)
_DISTRACTOR_RATE = 0.5  # Poisson mean of unlabelled distractor digits per image
_STROKE_RANGE = (1, 3)  # coloured clutter strokes per image
_NOISE_SIGMA = 4.0  # pixel noise, in 0..255 units
_MAX_LABELS = 6  # capacity limit: most classes drawn for one image
_BG_SATURATION = (0.0, 0.25)  # background base colour (HSV saturation range)
_BG_VALUE = (0.25, 0.6)  # background base brightness range
_BG_VARIATION = 20.0  # std of the smooth colour field around the base colour (0..255 units)
_BG_TEXTURE = (0.1, 0.4)  # weight range of the fine grey texture
_OBJ_SATURATION = (0.7, 1.0)  # object colour saturation range
_OBJ_VALUE = (0.75, 1.0)  # object colour brightness range
_OPACITY = (0.9, 1.0)  # object alpha range
_PLACEMENT_TRIES = 20  # candidate positions per object (the least-overlapping one is used)


# --------------------------------------------------------------------------------------------
# Class definitions, counts and thresholds
# --------------------------------------------------------------------------------------------


def class_definitions(num_classes: int) -> list[tuple[str, int]]:
    """Return the ``(colour, digit)`` pair of each class.

    The ``10 * len(COLOURS)`` combinations are interleaved (combination ``i`` has digit
    ``i % 10`` and colour ``(i % 10 + i // 10) % C``) and the first ``num_classes`` are taken, so
    every digit appears in several colours and every colour on several digits.

    Args:
        num_classes: number of classes, 2 to ``10 * len(COLOURS)``.

    Returns:
        List of ``num_classes`` ``(colour_name, digit)`` pairs.
    """
    colours = list(COLOURS)
    max_classes = 10 * len(colours)
    if not isinstance(num_classes, int) or not 2 <= num_classes <= max_classes:
        raise ValueError(f"num_classes must be an int in [2, {max_classes}], got {num_classes!r}")
    out = []
    for i in range(num_classes):
        digit = i % 10
        out.append((colours[(digit + i // 10) % len(colours)], digit))
    return out


def _category_ids(num_classes: int) -> list[int]:
    """COCO-like non-contiguous category ids (COCO's gaps in 1..90, then 91, 92, ...)."""
    ids: list[int] = []
    candidate = 1
    while len(ids) < num_classes:
        if candidate not in _COCO_MISSING_IDS:
            ids.append(candidate)
        candidate += 1
    return ids


def demo_group_thresholds(num_train: int) -> tuple[int, int]:
    """COCO's many-shot / few-shot thresholds scaled to ``num_train`` training images.

    The rule of every data set, :func:`balancemix_timm.metrics.scaled_group_thresholds`.

    Args:
        num_train: number of training images.

    Returns:
        ``(many, few)``: a class with more than ``many`` positives is many-shot, one with fewer
        than ``few`` is few-shot, the rest medium-shot. ``few >= 1`` and ``many > few``.
    """
    return scaled_group_thresholds(num_train)


def _group_of(count: int, many: int, few: int) -> str:
    if count > many:
        return "many"
    if count < few:
        return "few"
    return "medium"


def demo_positive_counts(
    num_images: int,
    num_classes: int,
    *,
    imbalance_ratio: float = 100.0,
    mean_labels: float = 2.9,
) -> list[int]:
    """Target positive counts by frequency rank: an exponential (Zipf-like) long tail.

    ``count[r] = round(n_max * imbalance_ratio ** (-r / (K - 1)))`` with ``n_max`` chosen so the
    counts sum to ``mean_labels * num_images`` (capped at ``num_images``), every count at least 1.

    Args:
        num_images: number of images of the split.
        num_classes: ``K``.
        imbalance_ratio: most / least frequent class, >= 1.
        mean_labels: mean number of positive classes per image (COCO: 2.9).

    Returns:
        ``K`` counts, non-increasing in rank.
    """
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not math.isfinite(imbalance_ratio) or imbalance_ratio < 1.0:
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {imbalance_ratio!r}")
    if not math.isfinite(mean_labels) or not 1.0 <= mean_labels <= _MAX_LABELS:
        raise ValueError(f"mean_labels must be in [1, {_MAX_LABELS}], got {mean_labels!r}")
    profile = imbalance_ratio ** (-np.arange(num_classes) / (num_classes - 1))
    n_max = min(float(num_images), mean_labels * num_images / profile.sum())
    if n_max >= num_images:
        _logger.warning(
            "mean_labels=%s is too high for imbalance_ratio=%s; the head class is capped at "
            "every image", mean_labels, imbalance_ratio,
        )
    counts = np.maximum(1, np.round(n_max * profile)).astype(np.int64)
    return [int(c) for c in np.minimum(counts, num_images)]


# --------------------------------------------------------------------------------------------
# Info object
# --------------------------------------------------------------------------------------------


@dataclass
class DemoDatasetInfo:
    """What :func:`make_demo_dataset` wrote.

    Attributes:
        root: the data set's root folder.
        train_images, val_images: the image folders.
        train_annotations, val_annotations: the COCO ``instances_*.json`` files.
        class_names: ``K`` names ``"<colour>_<digit>"`` in category-id order.
        category_ids: the ``K`` COCO category ids (non-contiguous).
        train_positive_counts, val_positive_counts: positive images per class (``K`` ints).
        thresholds: ``(many, few)`` from :func:`demo_group_thresholds`.
        options: the generation options (as recorded in ``demo_meta.json``).
        reused: True when an existing matching set was found and nothing was written.
    """

    root: Path
    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    class_names: list[str]
    category_ids: list[int]
    train_positive_counts: list[int]
    val_positive_counts: list[int]
    thresholds: tuple[int, int]
    options: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def imbalance_ratio(self) -> float:
        """Measured most / least frequent positive count on the training split."""
        return max(self.train_positive_counts) / max(1, min(self.train_positive_counts))

    def class_groups(self) -> dict[str, list[int]]:
        """Class indices of the many-, medium- and few-shot groups (by training counts)."""
        many, few = self.thresholds
        groups: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
        for k, c in enumerate(self.train_positive_counts):
            groups[_group_of(c, many, few)].append(k)
        return groups


# --------------------------------------------------------------------------------------------
# Label assignment
# --------------------------------------------------------------------------------------------


def _assign_labels(
    rng: np.random.Generator, num_images: int, counts: Sequence[int], mean_labels: float
) -> np.ndarray:
    """Draw a ``(N, K)`` bool matrix whose column sums are exactly ``counts``.

    Each image gets a capacity ``1 + Poisson`` (clipped to ``_MAX_LABELS``); classes, largest
    first, pick their images without replacement with probability proportional to the remaining
    capacity. Images left without a label then take one over from an image holding three or more
    (column sums unchanged).
    """
    n, k_total = num_images, len(counts)
    counts = np.asarray(counts, dtype=np.int64)
    lam = max(0.0, 1.15 * counts.sum() / n - 1.0)
    capacity = np.clip(1 + rng.poisson(lam, size=n), 1, min(_MAX_LABELS, k_total)).astype(np.int64)
    labels = np.zeros((n, k_total), dtype=bool)
    for k in np.argsort(-counts, kind="stable"):
        free = np.flatnonzero(capacity > 0)
        need = int(counts[k])
        if need > free.size:  # not enough capacity left: give the rest to any image
            capacity[~labels[:, k]] += 1
            free = np.flatnonzero(capacity > 0)
        p = capacity[free] / capacity[free].sum()
        chosen = rng.choice(free, size=need, replace=False, p=p)
        labels[chosen, k] = True
        capacity[chosen] -= 1
    # Give every image at least one label by moving labels from crowded images.
    for i in np.flatnonzero(labels.sum(1) == 0):
        donors = np.flatnonzero(labels.sum(1) >= 3)
        if donors.size == 0:
            break
        d = int(rng.choice(donors))
        k = int(rng.choice(np.flatnonzero(labels[d])))
        labels[d, k] = False
        labels[i, k] = True
    return labels


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg / 360.0) % 1.0, s, v), dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field plus fine texture, float32 ``(size, size, 3)`` in 0..255."""
    base = _hsv(rng.uniform(0, 360), rng.uniform(*_BG_SATURATION), rng.uniform(*_BG_VALUE))
    grid = np.clip(base + rng.normal(0.0, _BG_VARIATION, size=(4, 4, 3)), 0, 255)
    grid = grid.astype(np.uint8)
    field_img = Image.fromarray(grid, "RGB").resize((size, size), Image.BICUBIC)
    canvas = np.asarray(field_img, dtype=np.float32).copy()
    fine = rng.normal(0.0, 1.0, size=(max(2, size // 4), max(2, size // 4))).astype(np.float32)
    fine_img = Image.fromarray(((fine * 40 + 128).clip(0, 255)).astype(np.uint8), "L")
    fine_up = np.asarray(fine_img.resize((size, size), Image.BILINEAR), np.float32) - 128.0
    canvas += fine_up[..., None] * rng.uniform(*_BG_TEXTURE)
    return canvas


def _strokes(rng: np.random.Generator, canvas: np.ndarray, count: int) -> np.ndarray:
    """Draw ``count`` random coloured lines / arcs onto the canvas."""
    size = canvas.shape[0]
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    hues = list(COLOURS.values())
    width_max = max(1, size // 32)
    for _ in range(count):
        if rng.random() < 0.6:  # class hues: colour alone must not reveal a class
            colour = _hsv(hues[rng.integers(len(hues))] + rng.normal(0, _HUE_JITTER),
                          rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
        else:
            colour = _hsv(rng.uniform(0, 360), rng.uniform(0, 1), rng.uniform(0.3, 1.0))
        fill = tuple(int(c) for c in colour)
        width = int(rng.integers(1, width_max + 1))
        pts = rng.uniform(0, size, size=4)
        if rng.random() < 0.5:
            draw.line([(pts[0], pts[1]), (pts[2], pts[3])], fill=fill, width=width)
        else:
            box = [min(pts[0], pts[2]), min(pts[1], pts[3]), max(pts[0], pts[2]) + 2,
                   max(pts[1], pts[3]) + 2]
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 270)), fill=fill, width=width)
    return np.asarray(img, dtype=np.float32).copy()


def _digit_mask(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    """Scale, maybe thicken, and rotate one 8x8 digit; float32 alpha mask in [0, 1]."""
    side = int(rng.integers(max(5, round(_OBJECT_SCALE[0] * size)),
                            max(6, round(_OBJECT_SCALE[1] * size)) + 1))
    img = Image.fromarray((digit * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), "L")
    # Non-square scaling (+-15 %) for some shape variation.
    w = max(4, round(side * rng.uniform(0.85, 1.15)))
    img = img.resize((w, side), Image.BILINEAR)
    if side >= 12 and rng.random() < _BOLD_PROB:
        img = img.filter(ImageFilter.MaxFilter(3))
    img = img.rotate(float(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)), Image.BILINEAR,
                     expand=True)
    mask = np.asarray(img, dtype=np.float32) / 255.0
    # Crisper edges: stretch the contrast of the bilinear ramp.
    return np.clip((mask - 0.15) * 1.6, 0.0, 1.0)


def _place(
    rng: np.random.Generator, occupancy: np.ndarray, mask: np.ndarray, tries: int | None = None
) -> tuple[int, int]:
    """Top-left corner for ``mask`` with the least overlap among ``tries`` random positions."""
    size = occupancy.shape[0]
    h, w = mask.shape
    tries = _PLACEMENT_TRIES if tries is None else tries
    best, best_xy = None, (0, 0)
    solid = mask > 0.3
    for _ in range(tries):
        x = int(rng.integers(0, max(1, size - w + 1)))
        y = int(rng.integers(0, max(1, size - h + 1)))
        overlap = float(occupancy[y : y + h, x : x + w][solid[: size - y, : size - x]].sum())
        if best is None or overlap < best:
            best, best_xy = overlap, (x, y)
            if overlap == 0:
                break
    return best_xy


def _composite(
    canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, x: int, y: int
) -> np.ndarray:
    """Alpha-blend ``colour`` through ``mask`` at ``(x, y)``; returns the clipped mask used."""
    size = canvas.shape[0]
    m = mask[: size - y, : size - x]
    h, w = m.shape
    region = canvas[y : y + h, x : x + w]
    region *= 1.0 - m[..., None]
    region += m[..., None] * colour
    return m


def _render(
    rng: np.random.Generator,
    size: int,
    instances: list[tuple[int, np.ndarray, np.ndarray, int]],
    distractors: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, list[tuple[int, list[float], float, int]]]:
    """Render one image.

    Args:
        instances: ``(class_index, digit 8x8, rgb colour, source_index)`` to annotate.
        distractors: ``(digit 8x8, rgb colour)`` unlabelled digits.

    Returns:
        ``uint8 (size, size, 3)`` image and ``(class_index, bbox, area, source_index)`` per
        instance.
    """
    canvas = _background(rng, size)
    canvas = _strokes(rng, canvas, int(rng.integers(_STROKE_RANGE[0], _STROKE_RANGE[1] + 1)))
    occupancy = np.zeros((size, size), dtype=np.float32)
    items: list[tuple[bool, int]] = [(True, i) for i in range(len(instances))]
    items += [(False, i) for i in range(len(distractors))]
    order = rng.permutation(len(items))
    annotations: list[tuple[int, list[float], float, int] | None] = [None] * len(instances)
    for j in order:
        is_instance, idx = items[int(j)]
        if is_instance:
            _, digit, colour, _ = instances[idx]
        else:
            digit, colour = distractors[idx]
        mask = _digit_mask(rng, digit, size)
        mask = mask[:size, :size]
        x, y = _place(rng, occupancy, mask)
        opacity = float(rng.uniform(*_OPACITY))
        m = _composite(canvas, mask * opacity, colour, x, y)
        occupancy[y : y + m.shape[0], x : x + m.shape[1]] += (m > 0.3)
        if is_instance:
            ys, xs = np.nonzero(m > 0.3)
            if ys.size == 0:  # degenerate; fall back to the pasted rectangle
                bbox = [float(x), float(y), float(m.shape[1]), float(m.shape[0])]
                area = float(m.shape[0] * m.shape[1])
            else:
                bbox = [float(x + xs.min()), float(y + ys.min()),
                        float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
                area = float(ys.size)
            k, _, _, src = instances[idx]
            annotations[idx] = (k, bbox, area, src)
    canvas += rng.normal(0.0, _NOISE_SIGMA, size=canvas.shape).astype(np.float32)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, [a for a in annotations if a is not None]


def _instance_colour(rng: np.random.Generator, colour_name: str) -> np.ndarray:
    return _hsv(COLOURS[colour_name] + rng.normal(0.0, _HUE_JITTER / 2),
                rng.uniform(*_OBJ_SATURATION), rng.uniform(*_OBJ_VALUE))


def split_sources(targets: np.ndarray, val_fraction: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Split source digits into training and validation sources, stratified by digit.

    Each digit's indices are permuted by ``rng`` (digits 0..9 in turn) and the first
    ``max(1, round(val_fraction * count))`` go to validation, so the two splits share no source.

    Args:
        targets: ``int (M,)`` digit class of each source, values 0..9.
        val_fraction: share of each digit's sources for validation, in [0, 1].
        rng: the generator; consumed once per digit.

    Returns:
        ``(train_indices, val_indices)``, each sorted ``int64``.
    """
    train_src, val_src = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(targets == d))
        n_val = max(1, round(val_fraction * idx.size))
        val_src.append(idx[:n_val])
        train_src.append(idx[n_val:])
    return np.sort(np.concatenate(train_src)), np.sort(np.concatenate(val_src))


def _make_split(
    *,
    split: str,
    out_dir: Path,
    labels: np.ndarray,
    classes: list[tuple[str, int]],
    category_ids: list[int],
    digits: np.ndarray,
    digit_targets: np.ndarray,
    source_indices: np.ndarray,
    image_size: int,
    seed: int,
) -> dict[str, Any]:
    """Render and save one split; returns its COCO dictionary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_digit = {d: source_indices[digit_targets[source_indices] == d] for d in range(10)}
    class_set = set(classes)
    distractor_kinds: list[tuple[str | None, int]] = [
        (c, d) for c in COLOURS for d in range(10) if (c, d) not in class_set
    ] + [(None, d) for d in range(10)]  # None: a neutral (grey) digit
    split_code = _SPLITS.index(split)
    images, annotations = [], []
    ann_id = 1
    for i in range(labels.shape[0]):
        rng = np.random.default_rng([seed, split_code, i])
        instances = []
        for k in np.flatnonzero(labels[i]):
            colour_name, digit = classes[int(k)]
            for _ in range(2 if rng.random() < _REPEAT_PROB else 1):
                src = int(rng.choice(by_digit[digit]))
                instances.append((int(k), digits[src], _instance_colour(rng, colour_name), src))
        distractors = []
        for _ in range(int(min(4, rng.poisson(_DISTRACTOR_RATE)))):
            colour_name, digit = distractor_kinds[int(rng.integers(len(distractor_kinds)))]
            src = int(rng.choice(by_digit[digit]))
            if colour_name is None:
                grey = rng.uniform(0.1, 1.0) * 255.0
                colour = np.full(3, grey, dtype=np.float32)
            else:
                colour = _instance_colour(rng, colour_name)
            distractors.append((digits[src], colour))
        image, anns = _render(rng, image_size, instances, distractors)
        image_id = i + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(image, "RGB").save(out_dir / file_name, format="PNG", compress_level=6)
        images.append({"id": image_id, "file_name": file_name, "width": image_size,
                       "height": image_size})
        for k, bbox, area, src in anns:
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": category_ids[k],
                "bbox": [round(v, 2) for v in bbox], "area": area, "iscrowd": 0,
                "source_index": src,
            })
            ann_id += 1
    return {
        "info": {"description": f"balancemix-timm demo data set ({split})",
                 "version": str(_FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": cid, "name": f"{c}_{d}", "supercategory": c}
            for cid, (c, d) in zip(category_ids, classes)
        ],
    }


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _options(**kwargs: Any) -> dict[str, Any]:
    return {"format_version": _FORMAT_VERSION, **kwargs}


def _validate(num_train: int, num_val: int, num_classes: int, image_size: int,
              imbalance_ratio: float, seed: int, min_val_positives: int) -> None:
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                             ("image_size", image_size, 16), ("min_val_positives",
                                                              min_val_positives, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    class_definitions(num_classes)  # validates num_classes
    if not isinstance(imbalance_ratio, (int, float)) or not math.isfinite(imbalance_ratio) \
            or imbalance_ratio < 1.0:
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {imbalance_ratio!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _info_from_meta(root: Path, meta: dict[str, Any], reused: bool) -> DemoDatasetInfo:
    return DemoDatasetInfo(
        root=root,
        train_images=root / "train",
        val_images=root / "val",
        train_annotations=root / "annotations" / "instances_train.json",
        val_annotations=root / "annotations" / "instances_val.json",
        class_names=list(meta["class_names"]),
        category_ids=list(meta["category_ids"]),
        train_positive_counts=list(meta["train_positive_counts"]),
        val_positive_counts=list(meta["val_positive_counts"]),
        thresholds=(int(meta["thresholds"]["many"]), int(meta["thresholds"]["few"])),
        options=dict(meta["options"]),
        reused=reused,
    )


def make_demo_dataset(
    root: str | Path,
    *,
    num_train: int = 2000,
    num_val: int = 500,
    num_classes: int = 24,
    image_size: int = 64,
    imbalance_ratio: float = 100.0,
    seed: int = 0,
    mean_labels: float = 2.9,
    min_val_positives: int = 10,
    overwrite: bool = False,
) -> DemoDatasetInfo:
    """Generate (or reuse) the demo data set under ``root``.

    Args:
        root: output folder; it gets ``train/``, ``val/``, ``annotations/`` and
            ``demo_meta.json``.
        num_train: training images.
        num_val: validation images.
        num_classes: ``K``, 2 to ``10 * len(COLOURS)`` (40).
        image_size: image side in pixels (>= 16; 32 to 64 recommended).
        imbalance_ratio: most / least frequent class positive count on the training split.
        seed: everything (split of the source digits, labels, rendering) derives from it.
        mean_labels: mean positive classes per image (COCO: 2.9).
        min_val_positives: floor on each class's validation positives so that few-shot classes
            can be evaluated, capped at 5 % of ``num_val`` (0: the validation split follows the
            training profile exactly).
        overwrite: regenerate even if ``root`` holds a set; without it a set made with other
            options raises ``ValueError``.

    Returns:
        A :class:`DemoDatasetInfo`. When ``root`` already holds a set made with the same options
        it is returned with ``reused=True`` and nothing is written.
    """
    _validate(num_train, num_val, num_classes, image_size, imbalance_ratio, seed,
              min_val_positives)
    root = Path(root)
    options = _options(num_train=num_train, num_val=num_val, num_classes=num_classes,
                       image_size=image_size, imbalance_ratio=float(imbalance_ratio), seed=seed,
                       mean_labels=float(mean_labels), min_val_positives=min_val_positives)
    meta_path = root / _META_NAME
    owned = [root / "train", root / "val", root / "annotations", meta_path]
    if meta_path.exists() and not overwrite:
        meta = json.loads(meta_path.read_text())
        if meta.get("options") != options:
            raise ValueError(
                f"root {str(root)!r} holds a demo data set made with other options "
                f"({meta.get('options')}); pass overwrite=True or another root"
            )
        info = _info_from_meta(root, meta, reused=True)
        complete = (
            info.train_annotations.is_file()
            and info.val_annotations.is_file()
            and sum(1 for _ in info.train_images.glob("*.png")) == num_train
            and sum(1 for _ in info.val_images.glob("*.png")) == num_val
        )
        if not complete:
            raise ValueError(
                f"root {str(root)!r} holds an incomplete demo data set (files are missing); "
                "pass overwrite=True to regenerate it"
            )
        _logger.info("reusing the demo data set in %s", root)
        return info
    if not overwrite and any(p.exists() for p in owned):
        raise ValueError(
            f"root {str(root)!r} already has train/, val/ or annotations/ but no {_META_NAME}; "
            "pass overwrite=True or another root"
        )
    for p in owned:  # only the paths this function writes
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    start = time.perf_counter()
    from sklearn.datasets import load_digits  # local: scikit-learn is only needed here

    bunch = load_digits()
    digits = np.asarray(bunch.images, dtype=np.float32)
    targets = np.asarray(bunch.target, dtype=np.int64)

    master = np.random.default_rng([seed, 7919])
    # 1. Split the source digits first, stratified by digit, so the splits share none.
    train_src_arr, val_src_arr = split_sources(targets, _VAL_SOURCE_FRACTION, master)

    # 2. Classes, their frequency ranks (seeded) and target counts.
    classes = class_definitions(num_classes)
    category_ids = _category_ids(num_classes)
    rank_counts = demo_positive_counts(num_train, num_classes, imbalance_ratio=imbalance_ratio,
                                       mean_labels=mean_labels)
    rank_of_class = master.permutation(num_classes)
    train_counts = [rank_counts[r] for r in rank_of_class]
    val_floor = min(min_val_positives, max(1, num_val // 20))
    val_counts = [
        min(num_val, max(val_floor, round(c * num_val / num_train))) for c in train_counts
    ]

    # 3. Labels and images per split.
    many, few = demo_group_thresholds(num_train)
    split_counts = {"train": train_counts, "val": val_counts}
    split_sizes = {"train": num_train, "val": num_val}
    split_src = {"train": train_src_arr, "val": val_src_arr}
    measured: dict[str, list[int]] = {}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        label_rng = np.random.default_rng([seed, 104729, _SPLITS.index(split)])
        labels = _assign_labels(label_rng, split_sizes[split], split_counts[split], mean_labels)
        measured[split] = [int(c) for c in labels.sum(0)]
        coco = _make_split(split=split, out_dir=root / split, labels=labels, classes=classes,
                           category_ids=category_ids, digits=digits, digit_targets=targets,
                           source_indices=split_src[split], image_size=image_size, seed=seed)
        path = root / "annotations" / f"instances_{split}.json"
        path.write_text(json.dumps(coco, separators=(",", ":"), sort_keys=True))

    meta = {
        "options": options,
        "class_names": [f"{c}_{d}" for c, d in classes],
        "category_ids": category_ids,
        "train_positive_counts": measured["train"],
        "val_positive_counts": measured["val"],
        "thresholds": {"many": many, "few": few},
        "train_source_indices": [int(i) for i in train_src_arr],
        "val_source_indices": [int(i) for i in val_src_arr],
    }
    # Written last: a half-written set is never mistaken for a complete one.
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True))
    info = _info_from_meta(root, meta, reused=False)
    groups = info.class_groups()
    _logger.info(
        "wrote the demo data set to %s in %.1f s: %d train / %d val images, %d classes, "
        "imbalance ratio %.1f, %.2f labels per train image, groups many/medium/few = %d/%d/%d "
        "(thresholds %d / %d)",
        root, time.perf_counter() - start, num_train, num_val, num_classes,
        info.imbalance_ratio, sum(measured["train"]) / num_train, len(groups["many"]),
        len(groups["medium"]), len(groups["few"]), many, few,
    )
    return info


def main(argv: Sequence[str] | None = None) -> DemoDatasetInfo:
    """Command-line entry point: ``python -m balancemix_timm.data.demo --root DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m balancemix_timm.data.demo",
        description="Generate the offline long-tailed multi-label demo data set (COCO format).",
    )
    parser.add_argument("--root", required=True, type=Path, help="output folder")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--num-classes", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--imbalance-ratio", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mean-labels", type=float, default=2.9)
    parser.add_argument("--min-val-positives", type=int, default=10)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    info = make_demo_dataset(
        args.root, num_train=args.num_train, num_val=args.num_val, num_classes=args.num_classes,
        image_size=args.image_size, imbalance_ratio=args.imbalance_ratio, seed=args.seed,
        mean_labels=args.mean_labels, min_val_positives=args.min_val_positives,
        overwrite=args.overwrite,
    )
    groups = info.class_groups()
    for name in ("many", "medium", "few"):
        _logger.info("%s-shot classes: %s", name,
                     ", ".join(f"{info.class_names[k]}({info.train_positive_counts[k]})"
                               for k in groups[name]) or "-")
    return info


if __name__ == "__main__":
    main()
