"""Element-wise losses for multi-label learning with missing labels: Hill and SPLC.

Both come from Y. Zhang, Y. Cheng, X. Huang, F. Wen, R. Feng, Y. Li, Y. Guo, "Simple and Robust
Loss Design for Multi-Label Learning with Missing Labels", arXiv:2112.07368, 2021 (reference
code: github.com/xinyu1205/robust-loss-mlml, ``src/loss_functions/losses.py``). Notation, with
``x`` a logit and ``y`` its target:

* ``p = sigmoid(x)``; the *margin* probability of the positive term ``p_m = sigmoid(x - m)``.
* Focal margin loss of a positive (the paper's positive loss of both methods)::

      L+(x) = -(1 - p_m)^gamma log(p_m)

* Hill loss of a negative (the paper's Sec. "Hill loss": a weighted ``-log(1 - p)`` whose
  Taylor approximation is re-weighted into the shape of a hill)::

      L-_Hill(x) = (lambda - p) p^2

  Its derivative in ``x`` is ``(2 lambda p - 3 p^2) p (1 - p)``; at ``lambda = 1.5`` it is
  ``3 p^2 (1 - p)^2``: zero at ``p = 0`` and ``p = 1``, largest at ``p = 1/2``. Negatives the
  model is confident about (likely missing positives) are hardly pushed down.

* SPLC (self-paced loss correction, the paper's Sec. "SPLC")::

      L_SPLC^+ = L+(x)
      L_SPLC^- = I(p <= tau) L-_focal(x) + (1 - I(p <= tau)) L+(x),   L-_focal = -p^gamma log(1 - p)

  i.e. a negative whose probability exceeds ``tau`` is treated as a (missing) positive. The
  indicator is a hard, non-differentiable choice. The paper and its code switch the correction on
  from ``change_epoch`` on (default 1, i.e. after the first epoch); the epoch lives in the caller
  (:class:`~balancemix_timm.methods.splc.SPLCMethod`), here it is the flag ``correct``.

Soft (Mixup) targets, our extension (the paper uses binary targets only): every loss is linear in
``y``, ``L = y * L_pos + (1 - y) * L_neg``, as :func:`~balancemix_timm.loss.asl_elementwise`;
for SPLC the correction acts on the negative share: if ``p > tau``, the ``(1 - y)`` share is
scored with ``L+`` too, so a corrected entry's loss is ``L+`` whatever ``y``. For binary ``y``
both equal the paper's (and the reference code's) losses.

Which parts carry gradients: everything except SPLC's indicator. The focal weights
``(1 - p_m)^gamma`` and ``p^gamma`` are *not* detached, as in the reference code (unlike ASL's
reference, which detaches its focusing weights).

All functions return the unreduced loss; the methods sum it over the labels and average over the
batch (the reference code sums over batch and labels: ours is that divided by the batch size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from balancemix_timm._checks import prepare_loss_inputs

__all__ = [
    "focal_margin_positive",
    "hill_negative",
    "hill_elementwise",
    "splc_corrected",
    "splc_elementwise",
]


def _number(value: object, name: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def _softplus(x: Tensor) -> Tensor:
    """``log(1 + exp(x)) = -log(sigmoid(-x))``, stable for large ``|x|``.

    Not ``max(x, 0) + log1p(exp(-|x|))``: autograd takes the kinks of ``max`` and ``|.|`` at
    exactly ``x = 0`` as zero slopes and returns the gradient 0 there instead of 1/2.
    """
    return -F.logsigmoid(-x)


def focal_margin_positive(logits: Tensor, *, margin: float = 1.0, gamma: float = 2.0) -> Tensor:
    """Focal margin loss of a positive label (Zhang et al. 2021, positive loss of Hill and SPLC).

    ``L+ = -(1 - p_m)^gamma log(p_m)`` with ``p_m = sigmoid(x - margin)``, computed as
    ``sigmoid(margin - x)^gamma * softplus(margin - x)`` (no ``log(0)`` for very negative logits,
    where the reference's ``torch.log(sigmoid(.))`` underflows to ``-inf``). The focal weight is
    differentiated, as in the reference code.

    Args:
        logits: Raw scores ``x``, any shape, floating point, finite.
        margin: Logit margin ``m`` (the paper: 1; "[0.5, 1] work alike"), >= 0.
        gamma: Focusing exponent (the paper: 2), >= 0.

    Returns:
        Tensor of the shape of ``logits``: the loss of every entry as if it were positive.

    Raises:
        ValueError: on non-float or non-finite logits or options out of range.
    """
    margin = _number(margin, "margin", low=0.0)
    gamma = _number(gamma, "gamma", low=0.0)
    x, _ = prepare_loss_inputs(logits, torch.zeros_like(logits))
    return _focal_margin(x, margin, gamma)


def _focal_margin(x: Tensor, margin: float, gamma: float) -> Tensor:
    z = margin - x  # -log p_m = softplus(z), 1 - p_m = sigmoid(z)
    loss = _softplus(z)
    if gamma > 0:  # a zero exponent is a weight of 1 (and no 0 * inf in pow's gradient)
        loss = torch.sigmoid(z).pow(gamma) * loss
    return loss


def hill_negative(logits: Tensor, *, lamb: float = 1.5) -> Tensor:
    """Hill loss of a negative label (Zhang et al. 2021, Sec. "Hill loss"): ``(lambda - p) p^2``.

    With ``lambda = 1.5`` (the paper's value, never changed there) the loss rises from 0 at
    ``p = 0`` to 0.5 at ``p = 1`` and its gradient in the logit, ``3 p^2 (1 - p)^2``, is
    hill-shaped (zero at both ends, largest at ``p = 1/2``).

    Args:
        logits: Raw scores ``x``, any shape, floating point, finite.
        lamb: The weight ``lambda``, >= 1 (so the loss is >= 0 on [0, 1]; below 1.5 it falls
            again near ``p = 1``).

    Returns:
        Tensor of the shape of ``logits``: the loss of every entry as if it were negative.

    Raises:
        ValueError: on non-float or non-finite logits or ``lamb < 1``.
    """
    lamb = _number(lamb, "lamb", low=1.0)
    x, _ = prepare_loss_inputs(logits, torch.zeros_like(logits))
    return _hill_neg(x, lamb)


def _hill_neg(x: Tensor, lamb: float) -> Tensor:
    p = torch.sigmoid(x)
    return (lamb - p) * p * p


def hill_elementwise(
    logits: Tensor, targets: Tensor, *, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0
) -> Tensor:
    """Element-wise Hill loss (Zhang et al. 2021), soft targets allowed.

    ``L = y * L+(x) + (1 - y) * (lambda - p) p^2`` with the focal margin ``L+`` of
    :func:`focal_margin_positive` and ``p = sigmoid(x)``. For binary ``y`` this is the paper's Hill
    loss (and the reference ``Hill`` with ``reduction='none'``). For soft ``y`` it interpolates the
    two terms linearly; the reference code would instead multiply both terms by
    ``((1 - p_m) y + 1 - y)^gamma`` (it writes the focal weight for binary targets), which differs
    for ``0 < y < 1``.

    Args:
        logits: Raw scores ``x``, shape ``(B, K)`` (any shape works), floating point, finite.
        targets: Targets ``y`` of the same shape, in [0, 1] (binary or soft).
        lamb: Hill weight ``lambda`` (paper: 1.5), >= 1.
        margin: Logit margin of the positive term (paper: 1.0), >= 0.
        gamma: Focusing exponent of the positive term (paper: 2), >= 0.

    Returns:
        Tensor of the shape of ``logits``, unreduced (float32 for half-precision logits).

    Raises:
        ValueError: on bad tensors (see :func:`~balancemix_timm.loss.bce_elementwise`) or options
            out of range.
    """
    options = _hill_options(lamb=lamb, margin=margin, gamma=gamma)
    x, y = prepare_loss_inputs(logits, targets)
    return _hill(x, y, **options)


def _hill_options(*, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0) -> dict[str, float]:
    """The checked options of :func:`hill_elementwise` (``ValueError`` naming a bad one)."""
    return dict(lamb=_number(lamb, "lamb", low=1.0), margin=_number(margin, "margin", low=0.0),
                gamma=_number(gamma, "gamma", low=0.0))


def _hill(x: Tensor, y: Tensor, *, lamb: float, margin: float, gamma: float) -> Tensor:
    """:func:`hill_elementwise` on prepared float tensors with checked options."""
    return y * _focal_margin(x, margin, gamma) + (1 - y) * _hill_neg(x, lamb)


def splc_corrected(logits: Tensor, targets: Tensor, *, tau: float = 0.6) -> Tensor:
    """SPLC's correction mask: entries with a negative share (``y < 1``) and ``sigmoid(x) > tau``.

    The paper's ``1 - I(p <= tau)`` on negatives (strict ``>`` as in the reference code, which
    compares ``sigmoid(logit) > tau`` with the negative's logit, without margin).

    Args:
        logits: Raw scores ``x``, floating point, finite.
        targets: Targets ``y`` of the same shape, in [0, 1].
        tau: Threshold in [0, 1] (paper: 0.6; 0.65 for COCO with 75% labels left); 1 never corrects.

    Returns:
        Bool tensor of the shape of ``logits`` (no gradient).
    """
    tau = _number(tau, "tau", low=0.0, high=1.0)
    x, y = prepare_loss_inputs(logits, targets)
    return _splc_mask(x.detach(), y, tau)


def _splc_mask(x: Tensor, y: Tensor, tau: float) -> Tensor:
    return (y < 1) & (torch.sigmoid(x) > tau)


def splc_elementwise(
    logits: Tensor,
    targets: Tensor,
    *,
    tau: float = 0.6,
    margin: float = 1.0,
    gamma: float = 2.0,
    correct: bool = True,
    corrected_margin: bool = True,
) -> Tensor:
    """Element-wise SPLC loss with the focal margin loss (Zhang et al. 2021), soft targets allowed.

    ``L = y * L+(x) + (1 - y) * [c * L+_c(x) + (1 - c) * L-_focal(x)]`` with
    ``c = correct and sigmoid(x) > tau`` (:func:`splc_corrected`), ``L+`` the focal margin loss
    (:func:`focal_margin_positive`), ``L-_focal = sigmoid(x)^gamma softplus(x)`` the focal loss of
    a negative (the reference code's negative term) and ``L+_c`` the loss of a corrected negative:
    ``L+`` by default (the paper: corrected negatives take the positive loss), or, with
    ``corrected_margin=False``, the focal loss of a positive without margin,
    ``sigmoid(-x)^gamma softplus(-x)`` (the reference code, which subtracts the margin from the
    given positives' logits before correcting).

    Args:
        logits: Raw scores ``x``, shape ``(B, K)`` (any shape works), floating point, finite.
        targets: Targets ``y`` of the same shape, in [0, 1] (binary or soft).
        tau: Correction threshold (paper: 0.6), in [0, 1].
        margin: Logit margin of the positive loss (paper: 1.0), >= 0.
        gamma: Focusing exponent of both terms (paper: 2), >= 0.
        correct: Whether the correction is on (the caller's ``epoch >= change_epoch``).
        corrected_margin: Whether corrected negatives get the margin (paper) or not (reference
            code); the two agree when ``margin == 0``.

    Returns:
        Tensor of the shape of ``logits``, unreduced (float32 for half-precision logits).

    Raises:
        ValueError: on bad tensors or options out of range.
    """
    tau = _number(tau, "tau", low=0.0, high=1.0)
    margin = _number(margin, "margin", low=0.0)
    gamma = _number(gamma, "gamma", low=0.0)
    x, y = prepare_loss_inputs(logits, targets)
    pos = _focal_margin(x, margin, gamma)
    neg = _focal_margin(-x, 0.0, gamma)  # sigmoid(x)^gamma * softplus(x): focal loss of a negative
    if correct:
        as_pos = pos if corrected_margin else _focal_margin(x, 0.0, gamma)
        neg = torch.where(_splc_mask(x.detach(), y, tau), as_pos, neg)
    return y * pos + (1 - y) * neg
