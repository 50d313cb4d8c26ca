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

Layout: the label layout (classes, counts, groups, source split) lives in
:mod:`balancemix_timm.data.demo_labels`, the pixels in :mod:`balancemix_timm.data.demo_render`;
this module writes the files and holds the command line, and every name stays importable from it.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..metrics import COCO_NUM_TRAIN
from ..textfiles import read_json, write_json

# Private names keep importing from this path too.
from .demo_labels import (  # noqa: F401
    _COCO_MISSING_IDS,
    _MAX_LABELS,
    COLOURS,
    _assign_labels,
    _category_ids,
    _group_of,
    class_definitions,
    demo_group_thresholds,
    demo_positive_counts,
    split_sources,
)
from .demo_render import (  # noqa: F401
    _BG_SATURATION,
    _BG_TEXTURE,
    _BG_VALUE,
    _BG_VARIATION,
    _BOLD_PROB,
    _DISTRACTOR_RATE,
    _HUE_JITTER,
    _MAX_ROTATION,
    _NOISE_SIGMA,
    _OBJ_SATURATION,
    _OBJ_VALUE,
    _OBJECT_SCALE,
    _OPACITY,
    _PLACEMENT_TRIES,
    _REPEAT_PROB,
    _STROKE_RANGE,
    _background,
    _composite,
    _digit_mask,
    _hsv,
    _instance_colour,
    _place,
    _render,
    _strokes,
)

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


_FORMAT_VERSION = 1
_META_NAME = "demo_meta.json"
_SPLITS = ("train", "val")
_VAL_SOURCE_FRACTION = 0.2


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
        meta = read_json(meta_path)
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
        write_json(path, coco, separators=(",", ":"), sort_keys=True)

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
    write_json(meta_path, meta, indent=1, sort_keys=True)
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
