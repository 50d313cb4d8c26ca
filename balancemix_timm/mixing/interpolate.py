"""Eq. 5 of BalanceMix: interpolation of images and targets with a given ``lambda``."""

from __future__ import annotations

import torch
from torch import Tensor

from balancemix_timm._checks import check_finite, check_ndim, check_real, check_tensor

__all__ = ["mix", "mix_targets"]


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _check_lam(lam: float | Tensor, batch_size: int) -> float | Tensor:
    if isinstance(lam, Tensor) and lam.ndim == 0:
        lam = float(lam)
    if isinstance(lam, Tensor):
        if lam.ndim != 1 or lam.shape[0] != batch_size:
            raise ValueError(
                f"lam must be a number or a tensor of shape ({batch_size},) (one per sample), "
                f"got shape {tuple(lam.shape)}"
            )
        if lam.dtype == torch.bool or lam.is_complex():
            raise ValueError(f"lam must be real-valued, got {lam.dtype}")
        check_finite(lam, "lam")
        if lam.numel() and (bool((lam < 0).any()) or bool((lam > 1).any())):
            raise ValueError(
                f"lam must lie in [0, 1]; found values in [{float(lam.min()):.4g}, {float(lam.max()):.4g}]"
            )
        return lam
    if isinstance(lam, bool):
        raise ValueError(f"lam must be a number or a tensor, got {lam!r}")
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a number or a tensor, got {type(lam).__name__}") from None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    return value


def _interpolate(a: Tensor, b: Tensor, lam: float | Tensor) -> Tensor:
    """``lam * a + (1 - lam) * b`` in a floating dtype; per-sample ``lam`` broadcast over dims 1..."""
    dtype = _float_dtype(a, b)
    a = a.to(dtype)
    b = b.to(dtype)
    if isinstance(lam, Tensor):
        w = lam.to(device=a.device, dtype=dtype).reshape((-1,) + (1,) * (a.ndim - 1))
        return w * a + (1.0 - w) * b
    return lam * a + (1.0 - lam) * b


def _check_pair(a: Tensor, a_name: str, b: Tensor, b_name: str) -> tuple[Tensor, Tensor]:
    """``(a, b)`` checked and strided (sparse ones densified, the package's layout rule)."""
    a = check_tensor(a, a_name)
    b = check_tensor(b, b_name)
    check_ndim(a, a_name, tuple(range(1, 17)))
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    for t, name in ((a, a_name), (b, b_name)):
        check_real(t, name)  # bool, integer or floating (the package's label dtype rule)
    return a, b


def mix_targets(y_r: Tensor, y_m: Tensor, lam: float | Tensor) -> Tensor:
    """Mix two label batches: ``y_mix = lam * y_R + (1 - lam) * y_M`` (Eq. 5 of BalanceMix).

    Also usable for any pair of same-shape batches (e.g. images).

    Args:
        y_r: Labels of the random-sampler instances, shape (B, ...) (multi-hot or soft): bool,
            integer or floating, as everywhere in the package.
        y_m: Labels of the minority-sampler instances, same shape.
        lam: A float in [0, 1] or a tensor of shape (B,) (one coefficient per sample,
            broadcast over the trailing dims).

    Returns:
        New tensor of shape (B, ...); floating inputs keep their (promoted) dtype, bool or
        integer inputs give the default float dtype. Inputs are not modified.

    Raises:
        ValueError: complex or non-finite inputs, mismatched shapes, or ``lam`` outside [0, 1].
    """
    y_r, y_m = _check_pair(y_r, "y_r", y_m, "y_m")
    return _interpolate(y_r, y_m, _check_lam(lam, y_r.shape[0]))


def mix(
    x_r: Tensor, y_r: Tensor, x_m: Tensor, y_m: Tensor, lam: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Minority-augmented Mixup of two batches (Eq. 5 of BalanceMix).

    ``x_mix = lam * x_R + (1 - lam) * x_M`` and ``y_mix = lam * y_R + (1 - lam) * y_M``.

    Args:
        x_r: Random-sampler inputs, shape (B, ...), e.g. (B, C, H, W).
        y_r: Random-sampler labels, shape (B, K) (multi-hot or soft; bool, integer or floating).
        x_m: Minority-sampler inputs, same shape as ``x_r``.
        y_m: Minority-sampler labels, same shape as ``y_r``.
        lam: A float in [0, 1] or a tensor of shape (B,) broadcast over trailing dims.

    Returns:
        ``(x_mix, y_mix)``, new floating tensors shaped like ``x_r`` and ``y_r``. Bool and
        integer inputs (e.g. bool labels, uint8 images) are mixed and returned in the default
        float dtype, not rounded.
    """
    x_r, x_m = _check_pair(x_r, "x_r", x_m, "x_m")
    y_r, y_m = _check_pair(y_r, "y_r", y_m, "y_m")
    if x_r.shape[0] != y_r.shape[0]:
        raise ValueError(
            f"x_r and y_r must have the same batch size, got {x_r.shape[0]} and {y_r.shape[0]}"
        )
    lam = _check_lam(lam, x_r.shape[0])
    return _interpolate(x_r, x_m, lam), _interpolate(y_r, y_m, lam)
