"""Image rendering of the demo set: textured backgrounds, coloured strokes, scaled and rotated
digits alpha-blended onto the canvas, and their bounding boxes.

The rules are described in :mod:`balancemix_timm.data.demo`; every draw comes from the caller's
``numpy.random.Generator``, so the same generator state gives the same pixels.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .demo_labels import COLOURS

# Rendering constants. They were tuned (see :mod:`balancemix_timm.data.demo`) so that plain BCE
# training of timm's resnet10t from scratch at 64 px stays far from saturation while the head
# classes are clearly learnable; the clutter (background field, strokes, distractor digits,
# noise) is what keeps colour or shape alone from identifying a class.
_OBJECT_SCALE = (0.34, 0.46)  # object side / image side
_MAX_ROTATION = 10.0  # degrees
_BOLD_PROB = 0.0  # probability of thickening a stroke with a 3x3 max filter
_REPEAT_PROB = 0.25  # a positive class gets a second instance
_HUE_JITTER = 8.0  # degrees (half of it for class objects, all of it for strokes)
_DISTRACTOR_RATE = 0.5  # Poisson mean of unlabelled distractor digits per image
_STROKE_RANGE = (1, 3)  # coloured clutter strokes per image
_NOISE_SIGMA = 4.0  # pixel noise, in 0..255 units
_BG_SATURATION = (0.0, 0.25)  # background base colour (HSV saturation range)
_BG_VALUE = (0.25, 0.6)  # background base brightness range
_BG_VARIATION = 20.0  # std of the smooth colour field around the base colour (0..255 units)
_BG_TEXTURE = (0.1, 0.4)  # weight range of the fine grey texture
_OBJ_SATURATION = (0.7, 1.0)  # object colour saturation range
_OBJ_VALUE = (0.75, 1.0)  # object colour brightness range
_OPACITY = (0.9, 1.0)  # object alpha range
_PLACEMENT_TRIES = 20  # candidate positions per object (the least-overlapping one is used)


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
