"""Label layout of the demo set: its classes, their long-tailed positive counts and shot groups,
which image holds which class, and the train / val split of the source digits.

The rules are described in :mod:`balancemix_timm.data.demo`; nothing here draws pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from ..metrics import scaled_group_thresholds

# The demo's one logger: log filters name ``balancemix_timm.data.demo``.
_logger = logging.getLogger("balancemix_timm.data.demo")


#: Class colours: name -> hue in degrees (HSV). Per-instance jitter is added when rendering.
COLOURS: dict[str, float] = {"red": 0.0, "green": 120.0, "blue": 225.0, "yellow": 55.0}

#: The ids COCO skips in its 1..90 range; the demo's category ids skip them too.
_COCO_MISSING_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})


_MAX_LABELS = 6  # capacity limit: most classes drawn for one image


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
