"""Image transforms for multi-label training: ML-Decoder's recipe, written on our own.

ML-Decoder trains COCO with ``Resize((s, s)) -> CutoutPIL(0.5) -> RandAugment -> ToTensor``
and no normalisation (its TResNet backbones expect [0, 1] inputs); it evaluates with
``Resize((s, s)) -> ToTensor``. :func:`build_train_transform` and :func:`build_eval_transform`
build the same pipelines, with optional ImageNet normalisation for backbones that need it
(ResNet). Differences from ML-Decoder, all deliberate:

* RandAugment is torchvision's (``num_ops=2, magnitude=9``) rather than the PyPI
  ``randaugment`` package ML-Decoder imports; both are exposed as options.
* :class:`Cutout` covers at most ``round(factor * H) x round(factor * W)`` pixels; ML-Decoder's
  ``CutoutPIL`` draws an inclusive PIL rectangle one pixel larger, swaps H and W for
  non-square images and draws in place on its input. Ours returns a new image.

Randomness: every transform here draws from the global torch RNG (as torchvision's do) unless
given a ``torch.Generator``. Inside a ``DataLoader`` each worker's torch RNG is seeded with
``base_seed + worker_id`` (``base_seed`` from the loader's ``generator``), so augmentations are
reproducible per worker seed. Do not give a generator to transforms used in several workers:
each worker would receive a copy in the same state and draw the same augmentations.

:class:`MultiView` returns several independently augmented views of one image; the BalanceMix
trainer uses view 0 for the training step and views 1 and 2 for the two RandAugment views
whose averaged predictions re-label noisy labels (Eq. 9 of BalanceMix).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from balancemix_timm._checks import check_unit_interval

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Cutout",
    "MultiView",
    "build_train_transform",
    "build_eval_transform",
]

_logger = logging.getLogger(__name__)

#: ImageNet channel means and standard deviations (RGB, [0, 1] scale).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


class Cutout:
    """Fill one random rectangle with a random colour (ML-Decoder's ``CutoutPIL``).

    The rectangle's centre is uniform over the image; its size is
    ``round(cutout_factor * H) x round(cutout_factor * W)``, clipped at the image border, so
    at most that many pixels change. The colour is uniform over 0..255 per channel.

    Works on PIL images (any mode; the input is not modified) and on tensors ``(..., C, H, W)``
    (uint8 filled with 0..255, floating point with the colour / 255, i.e. images in [0, 1]).
    ML-Decoder places it on the PIL image after ``Resize`` and before RandAugment.

    Args:
        cutout_factor: rectangle side as a fraction of the image side, in (0, 1]
            (ML-Decoder: 0.5).
        p: probability of applying it (ML-Decoder: 1.0, always).
        generator: random source; ``None`` (default) uses the global torch RNG, which
            ``DataLoader`` seeds per worker (see the module docstring).
    """

    def __init__(self, cutout_factor: float = 0.5, *, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        self.cutout_factor = check_unit_interval(cutout_factor, "cutout_factor", low_open=True)
        self.p = check_unit_interval(p, "p")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, "
                             f"got {type(generator).__name__}")
        self.generator = generator

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Draw a rectangle ``(top, left, bottom, right)``, bottom/right exclusive."""
        ch = int(self.cutout_factor * height + 0.5)
        cw = int(self.cutout_factor * width + 0.5)
        yc = _randint(height, self.generator)
        xc = _randint(width, self.generator)
        y0, x0 = yc - ch // 2, xc - cw // 2
        return max(y0, 0), max(x0, 0), min(y0 + ch, height), min(x0 + cw, width)

    def __call__(self, img: Image.Image | Tensor) -> Image.Image | Tensor:
        """Return a copy of ``img`` with one rectangle filled (or ``img`` when skipped)."""
        if self.p < 1.0 and float(torch.rand(1, generator=self.generator)) >= self.p:
            return img
        if isinstance(img, Image.Image):
            width, height = img.size
            top, left, bottom, right = self.box(height, width)
            bands = len(img.getbands())
            colour = [_randint(256, self.generator) for _ in range(bands)]
            out = img.copy()
            if bottom > top and right > left:
                out.paste(colour[0] if bands == 1 else tuple(colour),
                          (left, top, right, bottom))
            return out
        if isinstance(img, Tensor):
            if img.ndim < 3:
                raise ValueError(f"img must be a PIL image or a (..., C, H, W) tensor, "
                                 f"got shape {tuple(img.shape)}")
            channels, height, width = img.shape[-3:]
            top, left, bottom, right = self.box(height, width)
            colour = torch.tensor([_randint(256, self.generator) for _ in range(channels)],
                                  dtype=torch.float32)
            if img.is_floating_point():
                colour = colour / 255.0
            out = img.clone()
            out[..., top:bottom, left:right] = colour.to(out.dtype).view(-1, 1, 1)
            return out
        raise ValueError(f"img must be a PIL image or a tensor, got {type(img).__name__}")

    def __repr__(self) -> str:
        return f"Cutout(cutout_factor={self.cutout_factor}, p={self.p})"


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be a positive int or (height, width), "
                         f"got {image_size!r}")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in image_size):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be a positive int or (height, width), "
                         f"got {image_size!r}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def _normalize(normalize: str | tuple[Sequence[float], Sequence[float]] | None
               ) -> T.Normalize | None:
    if normalize is None:
        return None
    if isinstance(normalize, str):
        if normalize.lower() != "imagenet":
            raise ValueError(f"normalize must be None, 'imagenet' or (mean, std), "
                             f"got {normalize!r}")
        return T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    try:
        mean, std = normalize
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be None, 'imagenet' or (mean, std), "
                         f"got {normalize!r}") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalize (mean, std) must hold 3 values each with std > 0, "
                         f"got {normalize!r}")
    return T.Normalize(mean, std)


def build_train_transform(
    image_size: int | Sequence[int],
    *,
    randaugment: bool = True,
    cutout: bool = True,
    cutout_factor: float = 0.5,
    randaugment_num_ops: int = 2,
    randaugment_magnitude: int = 9,
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> T.Compose:
    """ML-Decoder's training transform for PIL images.

    ``Resize((h, w)) -> Cutout(cutout_factor) -> RandAugment -> ToTensor [-> Normalize]``.

    Args:
        image_size: output side ``s`` (square, as ML-Decoder) or ``(height, width)``.
        randaugment: include torchvision's RandAugment.
        cutout: include :class:`Cutout` (always applied when included).
        cutout_factor: :class:`Cutout` size factor.
        randaugment_num_ops: RandAugment's number of operations per image.
        randaugment_magnitude: RandAugment's magnitude (0..30).
        normalize: ``None`` (ML-Decoder / TResNet: inputs in [0, 1]), ``"imagenet"``
            (ImageNet mean / std, for ResNet and most timm backbones) or ``(mean, std)``.
        interpolation: resize interpolation.

    Returns:
        A callable mapping a PIL image to a float32 ``(3, h, w)`` tensor.
    """
    size = _image_size(image_size)
    steps: list[Callable[[Any], Any]] = [T.Resize(size, interpolation=interpolation)]
    if cutout:
        steps.append(Cutout(cutout_factor))
    if randaugment:
        if not isinstance(randaugment_num_ops, int) or randaugment_num_ops < 0:
            raise ValueError(f"randaugment_num_ops must be a non-negative int, "
                             f"got {randaugment_num_ops!r}")
        if not isinstance(randaugment_magnitude, int) or not 0 <= randaugment_magnitude <= 30:
            raise ValueError(f"randaugment_magnitude must be an int in [0, 30], "
                             f"got {randaugment_magnitude!r}")
        steps.append(T.RandAugment(num_ops=randaugment_num_ops, magnitude=randaugment_magnitude))
    steps.append(T.ToTensor())
    norm = _normalize(normalize)
    if norm is not None:
        steps.append(norm)
    return T.Compose(steps)


def build_eval_transform(
    image_size: int | Sequence[int],
    *,
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = None,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> T.Compose:
    """ML-Decoder's deterministic evaluation transform: ``Resize((h, w)) -> ToTensor
    [-> Normalize]``.

    Args:
        image_size: output side ``s`` or ``(height, width)``.
        normalize: as in :func:`build_train_transform`.
        interpolation: resize interpolation.

    Returns:
        A callable mapping a PIL image to a float32 ``(3, h, w)`` tensor.
    """
    steps: list[Callable[[Any], Any]] = [
        T.Resize(_image_size(image_size), interpolation=interpolation), T.ToTensor()]
    norm = _normalize(normalize)
    if norm is not None:
        steps.append(norm)
    return T.Compose(steps)


class MultiView:
    """Apply a transform several times to one image, returning a tuple of views.

    The BalanceMix trainer uses view 0 for the training step and views 1 and 2 as the two
    RandAugment views whose averaged predictions drive re-labeling (Eq. 9 of BalanceMix).
    With the default collate function a batch then holds a list of ``num_views`` tensors of
    shape ``(B, 3, H, W)`` in the image position.

    Args:
        transform: one transform, applied ``num_views`` times with independent randomness,
            or a sequence of transforms, one per view.
        num_views: number of views; defaults to ``len(transform)`` for a sequence and to 3
            (one training view and two re-labeling views) for a single transform.
    """

    def __init__(self, transform: Callable[[Any], Any] | Sequence[Callable[[Any], Any]],
                 num_views: int | None = None) -> None:
        if callable(transform):
            n = 3 if num_views is None else num_views
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"num_views must be a positive int, got {num_views!r}")
            self.transforms: list[Callable[[Any], Any]] = [transform] * n
        elif isinstance(transform, Sequence) and not isinstance(transform, str):
            ts = list(transform)
            if not ts or not all(callable(t) for t in ts):
                raise ValueError("transform must be a callable or a non-empty sequence of "
                                 "callables")
            if num_views is not None and num_views != len(ts):
                raise ValueError(f"num_views ({num_views!r}) must equal the number of "
                                 f"transforms ({len(ts)})")
            self.transforms = ts
        else:
            raise ValueError(f"transform must be a callable or a sequence of callables, "
                             f"got {type(transform).__name__}")

    @property
    def num_views(self) -> int:
        """Number of views returned per image."""
        return len(self.transforms)

    def __call__(self, img: Any) -> tuple[Any, ...]:
        return tuple(t(img) for t in self.transforms)

    def __repr__(self) -> str:
        return f"MultiView(num_views={self.num_views}, transform={self.transforms[0]!r})"
