"""Input validation shared by the public functions.

Every public function of the package validates its tensors with these helpers so that bad
input fails early with a ``ValueError`` that names the argument and what was wrong.

The label dtype rule of the whole public API: labels and targets may be ``bool``, any integer
dtype or any floating dtype. Hard labels must hold 0/1 (:func:`binary_mask`,
:func:`check_binary`); where soft targets are allowed (mixed targets, losses) floating values in
[0, 1] are accepted too. Arithmetic on labels is done in a floating dtype (the inputs' floating
dtype if they have one, else the default float dtype); only complex tensors are refused
(:func:`check_real`).

The layout rule: a sparse tensor (COO, CSR, CSC, BSR, BSC; multi-hot label matrices with many
classes are often stored so) is accepted wherever a tensor is and densified by
:func:`check_tensor`, so every helper here returns a strided tensor and callers go on with the
returned value (``labels = check_tensor(labels, "labels")``), never with the argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "binary_mask",
    "check_binary",
    "check_finite",
    "check_probabilities",
    "check_same_shape",
    "check_ndim",
    "check_unit_interval",
    "check_real",
    "prepare_loss_inputs",
]


def check_tensor(value: object, name: str) -> Tensor:
    """``value`` as a strided tensor: itself, or densified when sparse (the layout rule).

    Raises:
        ValueError: ``value`` is not a tensor (the message names ``name``).
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        return value.to_dense()
    return value


def check_ndim(value: Tensor, name: str, ndim: int | Sequence[int]) -> Tensor:
    """Raise ``ValueError`` unless ``value.ndim`` is ``ndim`` (or one of them)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if value.ndim not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(value.shape)}")
    return value


def check_real(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` unless ``value`` is real-valued: bool, integer or floating.

    Bool counts as real (``False``/``True`` are 0/1, the label dtype rule of this module);
    complex tensors are refused. Floating values must also be finite.
    """
    value = check_tensor(value, name)
    if value.is_complex():
        raise ValueError(f"{name} must be real-valued (bool, integer or floating), got {value.dtype}")
    check_finite(value, name)
    return value


def check_same_shape(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    """Raise ``ValueError`` if the two tensors' shapes differ."""
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_finite(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``value`` holds NaN or infinite entries; return ``value``
    (densified when sparse, :func:`check_tensor`)."""
    value = check_tensor(value, name)
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        n_nan = int(torch.isnan(value).sum())
        n_inf = int(torch.isinf(value).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")
    return value


def binary_mask(value: Tensor, name: str) -> Tensor:
    """``value`` as a bool tensor (``value`` itself if bool and strided) after checking that
    every entry is 0 or 1; raise ``ValueError`` naming ``name`` otherwise."""
    value = check_tensor(value, name)
    if value.dtype == torch.bool:
        return value
    mask = value.bool()
    # Binary exactly when as many entries equal 1 as are non-zero (NaN is non-zero and not 1).
    # Counting bools is several times faster than comparing with a bool copy (a mixed-dtype
    # pass) or counting the values themselves.
    if int(torch.count_nonzero(mask)) == int(torch.count_nonzero(value.eq(1))):
        return mask
    check_finite(value, name)
    bad = (value != 0) & (value != 1)
    example = value[bad].flatten()[0].item()
    raise ValueError(
        f"{name} must be binary (0 or 1); found {int(bad.sum())} other entries, e.g. {example}"
    )


def check_binary(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` unless every entry of ``value`` is 0 or 1; return ``value``
    (densified when sparse, :func:`check_tensor`)."""
    value = check_tensor(value, name)
    binary_mask(value, name)
    return value


def check_probabilities(value: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` unless ``value`` is finite and within [0, 1]; return ``value``
    (densified when sparse, :func:`check_tensor`)."""
    value = check_tensor(value, name)
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")
    check_finite(value, name)
    if value.numel() and (bool((value < 0).any()) or bool((value > 1).any())):
        raise ValueError(
            f"{name} must lie in [0, 1]; found values in "
            f"[{float(value.min()):.4g}, {float(value.max()):.4g}]"
        )
    return value


def check_unit_interval(
    value: float, name: str, *, low_open: bool = False, high_open: bool = False,
    low: float = 0.0, high: float = 1.0,
) -> float:
    """Raise ``ValueError`` unless ``low <(=) value <(=) high``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (ok_low and ok_high) or v != v:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{hb}, got {value!r}")
    return v


def _loss_dtype(logits: Tensor) -> torch.dtype:
    """Half-precision logits are upcast to float32 (``eps`` = 1e-8 underflows in float16)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return logits.dtype


def prepare_loss_inputs(logits: Tensor, targets: Tensor, *, validate: bool = True) -> tuple[Tensor, Tensor]:
    """Validate ``logits`` / ``targets`` of an element-wise loss and return both as float tensors of
    one dtype (float32 for half-precision logits); ``validate`` also checks their values."""
    logits = check_tensor(logits, "logits")
    targets = check_tensor(targets, "targets")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    check_same_shape(logits, "logits", targets, "targets")
    if validate:
        check_finite(logits, "logits")
        if targets.is_floating_point():
            targets = check_probabilities(targets, "targets")
        else:
            targets = check_binary(targets, "targets")
    dtype = _loss_dtype(logits)
    return logits.to(dtype), targets.to(device=logits.device, dtype=dtype)
