"""Confidence-based minority sampling probabilities (Eq. 2-4 of BalanceMix) and their spread.

:func:`class_confidences` (Eq. 2), :func:`instance_scores` (Eq. 3) and
:func:`minority_sampling_probs` (Eq. 4) turn predicted probabilities and labels into the minority
sampler's weights; :func:`weight_spread` summarises them.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from balancemix_timm._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_probabilities,
    check_same_shape,
    check_tensor,
)

__all__ = ["class_confidences", "instance_scores", "minority_sampling_probs", "weight_spread"]

# The package's one logger: log filters name ``balancemix_timm.sampling``.
_logger = logging.getLogger("balancemix_timm.sampling")


_SCORES = ("paper", "positive")


def _check_probs_labels(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    probs = check_tensor(probs, "probs")
    labels = check_tensor(labels, "labels")
    check_ndim(probs, "probs", 2)
    check_same_shape(probs, "probs", labels, "labels")
    if probs.shape[0] < 1 or probs.shape[1] < 1:
        raise ValueError(f"probs must have at least one row and one column, got {tuple(probs.shape)}")
    probs = check_probabilities(probs, "probs")
    labels = check_binary(labels, "labels")
    positive = labels.to(device=probs.device).bool()
    return probs.to(torch.float64), positive


def class_confidences(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class expected confidences P(k) and A(k) (Eq. 2 of BalanceMix).

    ``P(k)`` is the mean of ``probs[:, k]`` over the rows whose label ``k`` is positive and
    ``A(k)`` the mean of ``1 - probs[:, k]`` over the rows whose label ``k`` is negative, both over
    the whole given set.

    Args:
        probs: Predicted probabilities f(x)_k, shape (N, K), floats in [0, 1].
        labels: Given (noisy) labels, shape (N, K), binary (bool, int or float).

    Returns:
        ``(P, A)``, each float64 of shape (K,), on ``probs``' device. A class with no positive
        label has ``P(k) = NaN`` (an empty mean); one with no negative label has ``A(k) = NaN``.
    """
    p, positive = _check_probs_labels(probs, labels)
    pos = positive.to(torch.float64)
    neg = 1.0 - pos
    n_pos = pos.sum(0)
    n_neg = neg.sum(0)
    sum_p = (p * pos).sum(0)
    sum_a = ((1.0 - p) * neg).sum(0)
    nan = torch.full_like(sum_p, float("nan"))
    conf_p = torch.where(n_pos > 0, sum_p / n_pos.clamp_min(1.0), nan)
    conf_a = torch.where(n_neg > 0, sum_a / n_neg.clamp_min(1.0), nan)
    return conf_p, conf_a


def instance_scores(probs: Tensor, labels: Tensor, *, score: str = "paper") -> Tensor:
    """Confidence score of every instance (Eq. 3 of BalanceMix, or a variant).

    Args:
        probs: Predicted probabilities, shape (N, K), floats in [0, 1].
        labels: Given labels, shape (N, K), binary.
        score: ``"paper"`` (default, Eq. 3): ``Score_n = sum_k [y_nk=1] P(k) + [y_nk=0] A(k)``.
            ``"positive"``: the mean of ``P(k)`` over the instance's positive labels; an instance
            with no positive label falls back to the mean of ``A(k)`` over its negatives. The
            literal score is dominated by the ~K negatives (every ``A(k)`` is close to 1 on a
            long-tailed set such as COCO), which makes Eq. 4 nearly uniform; the positives-only
            score keeps the minority signal.

    Returns:
        Float64 tensor of shape (N,), non-negative. Classes whose P(k) (or A(k)) is undefined,
        because they have no positive (or no negative) label, contribute 0.
    """
    if score not in _SCORES:
        raise ValueError(f"score must be one of {_SCORES}, got {score!r}")
    labels = check_tensor(labels, "labels")
    conf_p, conf_a = class_confidences(probs, labels)
    conf_p = torch.nan_to_num(conf_p, nan=0.0)
    conf_a = torch.nan_to_num(conf_a, nan=0.0)
    positive = labels.to(device=probs.device).bool()
    pos = positive.to(torch.float64)
    neg = 1.0 - pos
    sum_pos = pos @ conf_p
    sum_neg = neg @ conf_a
    if score == "paper":
        return sum_pos + sum_neg
    n_pos = pos.sum(1)
    n_neg = neg.sum(1)
    mean_pos = sum_pos / n_pos.clamp_min(1.0)
    mean_neg = sum_neg / n_neg.clamp_min(1.0)
    return torch.where(n_pos > 0, mean_pos, mean_neg)


def minority_sampling_probs(
    probs: Tensor, labels: Tensor, *, score: str = "paper", temperature: float = 1.0
) -> Tensor:
    """Sampling probability of every instance for the minority sampler (Eq. 2-4 of BalanceMix).

    ``p_n = Score_n^(-T) / sum_m Score_m^(-T)``; with the defaults (``score="paper"``, ``T = 1``)
    this is exactly Eq. 4, ``p_n = (1 / Score_n) / sum_m (1 / Score_m)`` with the score of Eq. 3.
    An instance whose score is exactly 0 has infinite inverse score; in that (limit) case all the
    mass is spread evenly over the zero-score instances.

    Args:
        probs: Predicted probabilities f(x)_k, shape (N, K), floats in [0, 1], N >= 1.
        labels: Given (noisy) labels, shape (N, K), binary.
        score: ``"paper"`` (Eq. 3) or ``"positive"``, see :func:`instance_scores`.
        temperature: Exponent ``T > 0`` on the inverse score; ``T = 1`` is the paper, larger
            values sharpen the (near-uniform) distribution of the literal formula.

    Returns:
        Float64 tensor of shape (N,) on ``probs``' device, non-negative, summing to 1.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    s = instance_scores(probs, labels, score=score)
    zero = s <= 0
    if bool(zero.any()):
        _logger.warning(
            "%d instance(s) have a zero confidence score; the minority sampler puts all its "
            "mass on them", int(zero.sum()),
        )
        return zero.to(torch.float64) / zero.sum()
    if t == 1.0:
        inv = 1.0 / s
        return inv / inv.sum()
    return torch.softmax(-t * torch.log(s), dim=0)


def weight_spread(p: Tensor) -> dict[str, float]:
    """Summary of how far sampling weights are from uniform, for logging.

    See docs/design.md, decision 1: the literal sampler is near-uniform.

    Args:
        p: Sampling weights, shape (N,), finite, non-negative, positive sum (normalised here).

    Returns:
        ``{"max_over_min": max/min (inf if some weight is 0), "max_n": N * max p,
        "min_n": N * min p, "ess_fraction": (sum p)^2 / (N * sum p^2)}``. A uniform distribution
        gives 1, 1, 1, 1.
    """
    w = _check_weights(p, "p", None).to(torch.float64)
    n = w.numel()
    w = w / w.sum()
    w_max = float(w.max())
    w_min = float(w.min())
    return {
        "max_over_min": w_max / w_min if w_min > 0 else float("inf"),
        "max_n": w_max * n,
        "min_n": w_min * n,
        "ess_fraction": float(w.sum() ** 2 / (n * (w * w).sum())),
    }


def _check_weights(weights: Tensor, name: str, size: int | None) -> Tensor:
    weights = check_tensor(weights, name)
    check_ndim(weights, name, 1)
    if size is not None and weights.numel() != size:
        raise ValueError(f"{name} must have length {size}, got {weights.numel()}")
    if weights.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if weights.dtype == torch.bool or weights.is_complex():
        raise ValueError(f"{name} must be a real numeric tensor, got {weights.dtype}")
    check_finite(weights, name)
    if bool((weights < 0).any()):
        raise ValueError(f"{name} must be non-negative; min is {float(weights.min()):.4g}")
    if not float(weights.sum()) > 0:
        raise ValueError(f"{name} must have a positive sum")
    return weights
