"""Losses of BalanceMix: element-wise BCE / ASL and the label-wise weighted loss (Eq. 10).

The loss of BalanceMix on a minority-augmented mini-batch ``B_mix`` is (Eq. 10 of
BalanceMix)::

    L = 1/|B_mix| * sum_{x in B_mix} [ sum_{k in C u R} BCE_k + sum_{k in U} p_G[k] * BCE_k ]

i.e. every label's element-wise loss is multiplied by a weight (1 for clean ``C`` and
re-labeled ``R`` labels, the clean-label probability ``p_G`` for ambiguous ``U`` labels),
summed over the classes and averaged over the batch. The targets are the mixed (soft) refined
labels of Eq. 5, while the reliability ``state`` and ``p_G`` are those of the random-sampler
instance, which dominates the mix since ``lambda >= 0.5``.

The element-wise base loss is BCE by default. For the ML-Decoder experiments (Table 6) the
asymmetric loss of Ben-Baruch et al. (2021) can be used instead (``base_loss="asl"``), and
``reduction="sum"`` reproduces ML-Decoder's summed (not averaged) criterion. ``base_loss="hill"``
takes the Hill loss of Zhang et al. (2021) (:func:`~balancemix_timm.losses_mlml.hill_elementwise`),
a loss for missing positives that pushes confident negatives down hardly at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from balancemix_timm._checks import (
    check_finite,
    check_ndim,
    check_probabilities,
    check_same_shape,
    check_tensor,
    check_unit_interval,
    prepare_loss_inputs,
)
from balancemix_timm.losses_mlml import _hill, _hill_options
from balancemix_timm.refine import LabelState

__all__ = [
    "AMBIGUOUS_MODES",
    "BASE_LOSSES",
    "REDUCTIONS",
    "bce_elementwise",
    "asl_elementwise",
    "label_weights",
    "balancemix_loss",
    "BalanceMixLoss",
]

_logger = logging.getLogger(__name__)

ElementwiseLoss = Callable[..., Tensor]
BaseLoss = str | ElementwiseLoss

AMBIGUOUS_MODES = ("weight", "drop", "keep")
"""How ambiguous labels are weighted: by ``p_G`` (Eq. 10), 0 (dropped) or 1 (kept as is)."""

BASE_LOSSES = ("bce", "asl", "hill")
"""Named element-wise losses of Eq. 10: BCE (the paper), ASL (Ben-Baruch et al. 2021, ML-Decoder's
criterion) and Hill (Zhang et al. 2021, :func:`~balancemix_timm.losses_mlml.hill_elementwise`)."""

REDUCTIONS = ("mean", "sum", "none")
"""``mean``: batch mean of per-sample sums (Eq. 10); ``sum``: sum of everything (ML-Decoder);
``none``: the per-sample sums, shape ``(B,)``."""


def bce_elementwise(logits: Tensor, targets: Tensor) -> Tensor:
    """Element-wise binary cross-entropy from logits (Eq. 1 of BalanceMix), soft targets allowed.

    Computed in the numerically stable form
    ``max(x, 0) - x * y + log(1 + exp(-|x|))``, which equals
    ``-[y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))]`` without overflow for large ``|x|``.

    Args:
        logits: Raw scores ``x``, shape ``(B, K)`` (any shape works), floating point, finite.
        targets: Targets ``y`` of the same shape, in [0, 1]: binary labels (any dtype) or soft
            (mixed) targets.

    Returns:
        Tensor of the same shape: the loss of every label, unreduced. float16 / bfloat16
        logits are computed (and returned) in float32.

    Raises:
        ValueError: on non-float or non-finite logits, targets outside [0, 1] or a shape
            mismatch.
    """
    x, y = prepare_loss_inputs(logits, targets)
    return _bce(x, y)


def _bce(x: Tensor, y: Tensor) -> Tensor:
    return x.clamp(min=0) - x * y + torch.log1p(torch.exp(-x.abs()))


def asl_elementwise(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    focal_grad: bool = False,
) -> Tensor:
    """Element-wise asymmetric loss (ASL, Ben-Baruch et al., ICCV 2021), soft targets allowed.

    With ``p = sigmoid(x)`` and the shifted probability ``p_m = max(p - clip, 0)`` of the
    negative part::

        L = -[ y (1 - p)^gamma_pos log(p) + (1 - y) p_m^gamma_neg log(1 - p_m) ]

    Both logarithms are clamped at ``eps`` (``log(max(., eps))``), as in the reference
    implementation. For binary ``y`` this is exactly ASL. For soft (mixed) targets this is our
    soft-target form: ``y`` interpolates linearly between the positive and the negative term,
    each with its own focusing weight. (ML-Decoder's implementation instead multiplies the sum
    of both terms by one weight ``(1 - p_t)^(gamma_pos y + gamma_neg (1 - y))`` with
    ``p_t = p y + (1 - p_m)(1 - y)``; the two agree only for binary targets.)

    ``1 - p`` and ``1 - p_m`` are computed as ``sigmoid(-x)`` and ``min(sigmoid(-x) + clip, 1)``
    to keep precision for large positive logits.

    Defaults are the setting of ASL's and ML-Decoder's multi-label training (and of the
    BalanceMix paper's ASL baseline): ``gamma_pos=0``, ``gamma_neg=4``, ``clip=0.05``.

    Args:
        logits: Raw scores ``x``, shape ``(B, K)`` (any shape works), floating point, finite.
        targets: Targets ``y`` of the same shape, in [0, 1] (binary or soft).
        gamma_pos: Focusing exponent of the positive term, >= 0.
        gamma_neg: Focusing exponent of the negative term, >= 0.
        clip: Probability margin ``m`` of the negative term, in [0, 1); 0 disables clipping.
        eps: Lower clamp of the arguments of both logarithms, > 0.
        focal_grad: If False (default), the focusing weights ``(1 - p)^gamma_pos`` and
            ``p_m^gamma_neg`` are treated as constants in back-propagation, like ML-Decoder's
            ``disable_torch_grad_focal_loss=True`` (its class default and its ``train.py``
            setting). If True, gradients also flow through the weights.

    Returns:
        Tensor of the same shape as ``logits``: the unreduced loss of every label (float32 for
        float16 / bfloat16 logits). ML-Decoder's criterion is ``asl_elementwise(...).sum()``.

    Raises:
        ValueError: on bad tensors (see :func:`bce_elementwise`) or options out of range.
    """
    options = _asl_options(
        gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip, eps=eps, focal_grad=focal_grad
    )
    x, y = prepare_loss_inputs(logits, targets)
    return _asl(x, y, **options)


def _asl_options(
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    focal_grad: bool = False,
) -> dict[str, Any]:
    """Validate ASL's options (unknown keywords raise ``TypeError``, as for the function)."""
    for name, value in (("gamma_pos", gamma_pos), ("gamma_neg", gamma_neg)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    clip = check_unit_interval(clip, "clip", high_open=True)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
    return dict(
        gamma_pos=float(gamma_pos), gamma_neg=float(gamma_neg), clip=clip, eps=float(eps),
        focal_grad=bool(focal_grad),
    )


def _asl(
    x: Tensor, y: Tensor, *, gamma_pos: float, gamma_neg: float, clip: float, eps: float,
    focal_grad: bool,
) -> Tensor:
    p = torch.sigmoid(x)
    one_minus_p = torch.sigmoid(-x)
    if clip > 0:
        p_m = (p - clip).clamp(min=0)
        one_minus_pm = (one_minus_p + clip).clamp(max=1)
    else:
        p_m = p
        one_minus_pm = one_minus_p

    loss_pos = torch.log(p.clamp(min=eps))
    loss_neg = torch.log(one_minus_pm.clamp(min=eps))
    # A zero exponent means a constant weight of 1 (also avoids 0 * inf in pow's gradient).
    if gamma_pos > 0:
        w_pos = one_minus_p.pow(gamma_pos)
        loss_pos = loss_pos * (w_pos if focal_grad else w_pos.detach())
    if gamma_neg > 0:
        w_neg = p_m.pow(gamma_neg)
        loss_neg = loss_neg * (w_neg if focal_grad else w_neg.detach())
    return -(y * loss_pos + (1 - y) * loss_neg)


def _check_state(state: Tensor, name: str = "state") -> None:
    state = check_tensor(state, name)
    if state.dtype == torch.bool:
        raise ValueError(f"{name} must hold LabelState values 0, 1, 2, got a bool tensor")
    if state.is_floating_point():
        check_finite(state, name)
    bad = (state != 0) & (state != 1) & (state != 2)
    if bool(bad.any()):
        example = state[bad].flatten()[0].item()
        raise ValueError(
            f"{name} must hold LabelState values 0 (clean), 1 (re-labeled) or 2 (ambiguous); "
            f"found {int(bad.sum())} other entries, e.g. {example}"
        )


def _check_mode(ambiguous: str) -> None:
    if ambiguous not in AMBIGUOUS_MODES:
        raise ValueError(f"ambiguous must be one of {AMBIGUOUS_MODES}, got {ambiguous!r}")


def label_weights(
    state: Tensor,
    clean_prob: Tensor | None = None,
    *,
    ambiguous: str = "weight",
    validate: bool = True,
) -> Tensor:
    """Per-label loss weights of Eq. 10 of BalanceMix.

    CLEAN and RELABELED labels get weight 1; AMBIGUOUS labels get the clean-label probability
    ``p_G`` (``ambiguous="weight"``, the paper's importance re-weighting), 0
    (``"drop"``, ambiguous labels excluded as in Table 5's "+ Clean Labels" /
    "+ Re-labeled Labels" rows) or 1 (``"keep"``, used as given).

    Args:
        state: :class:`~balancemix_timm.refine.LabelState` values, shape ``(B, K)``, any
            integer (or whole-valued float) dtype.
        clean_prob: Clean-label probabilities ``p_G`` of the same shape, floats in [0, 1].
            Required for ``ambiguous="weight"``; ignored (may be None) otherwise.
        ambiguous: ``"weight"`` | ``"drop"`` | ``"keep"``.
        validate: Check values (this synchronises with the device); shapes are always
            checked.

    Returns:
        Float tensor of shape ``(B, K)`` on ``state``'s device (dtype of ``clean_prob`` if
        given, else float32), detached from any graph.

    Raises:
        ValueError: on an unknown mode, values of ``state`` outside {0, 1, 2}, a missing or
            invalid ``clean_prob`` for ``"weight"``, or mismatched shapes.
    """
    _check_mode(ambiguous)
    state = check_tensor(state, "state")
    if validate:
        _check_state(state)
    dtype = torch.float32
    if clean_prob is not None:
        clean_prob = check_tensor(clean_prob, "clean_prob")
        check_same_shape(state, "state", clean_prob, "clean_prob")
        if validate:
            clean_prob = check_probabilities(clean_prob, "clean_prob")
        elif not clean_prob.is_floating_point():
            raise ValueError(f"clean_prob must be a floating-point tensor, got {clean_prob.dtype}")
        dtype = clean_prob.dtype
        clean_prob = clean_prob.detach().to(state.device)
    elif ambiguous == "weight":
        raise ValueError('clean_prob is required when ambiguous="weight" (Eq. 10 weights by p_G)')

    is_ambiguous = state == int(LabelState.AMBIGUOUS)
    ones = torch.ones(state.shape, dtype=dtype, device=state.device)
    if ambiguous == "keep":
        return ones
    if ambiguous == "drop":
        return ones.masked_fill(is_ambiguous, 0.0)
    assert clean_prob is not None
    return torch.where(is_ambiguous, clean_prob, ones)


#: The named losses with options: ``name -> (options checker, loss on prepared tensors, title)``.
_LOSSES_WITH_OPTIONS = {"asl": (_asl_options, _asl, "ASL"), "hill": (_hill_options, _hill, "Hill")}


def _resolve_base_loss(
    base_loss: BaseLoss, base_loss_kwargs: Mapping[str, Any] | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``fn(x, y)`` on already validated float tensors."""
    kwargs = dict(base_loss_kwargs or {})
    if isinstance(base_loss, str):
        if base_loss == "bce":
            if kwargs:
                raise ValueError(
                    f'base_loss_kwargs must be empty for base_loss="bce", got {kwargs}'
                )
            return _bce
        if base_loss in _LOSSES_WITH_OPTIONS:
            checked, loss, title = _LOSSES_WITH_OPTIONS[base_loss]
            try:
                options = checked(**kwargs)
            except TypeError as err:
                raise ValueError(f"base_loss_kwargs has an unknown {title} option: {err}") from None
            return lambda x, y: loss(x, y, **options)
        raise ValueError(f'base_loss must be one of {BASE_LOSSES} or a callable, got {base_loss!r}')
    if callable(base_loss):
        return lambda x, y: base_loss(x, y, **kwargs)
    raise ValueError(f'base_loss must be one of {BASE_LOSSES} or a callable, got {base_loss!r}')


def balancemix_loss(
    logits: Tensor,
    targets: Tensor,
    state: Tensor | None = None,
    clean_prob: Tensor | None = None,
    *,
    base_loss: BaseLoss = "bce",
    ambiguous: str = "weight",
    reduction: str = "mean",
    base_loss_kwargs: Mapping[str, Any] | None = None,
    validate: bool = True,
) -> Tensor:
    """The BalanceMix loss on a (mixed) mini-batch, Eq. 10 of BalanceMix.

    ``loss = 1/B sum_b sum_k w[b, k] * l(logits[b, k], targets[b, k])`` with the weights of
    :func:`label_weights` and the element-wise base loss ``l`` (BCE in the paper).

    Gradients flow only through ``logits``: ``targets``, ``state`` and ``clean_prob`` are
    detached. ``state`` / ``clean_prob`` are moved to ``logits.device`` if needed (so they may
    be indexed from per-dataset tensors kept on the CPU).

    Args:
        logits: Model outputs, shape ``(B, K)``, floating point, finite.
        targets: (Mixed, refined) targets of the same shape, in [0, 1]; binary labels of any
            dtype are accepted.
        state: :class:`~balancemix_timm.refine.LabelState` of each label of the random-sampler
            instance, shape ``(B, K)``. None means every label is treated as CLEAN (plain
            summed base loss, e.g. during warm-up).
        clean_prob: Clean-label probabilities ``p_G`` of the random-sampler instance, shape
            ``(B, K)``; required when ``state`` is given and ``ambiguous="weight"``.
        base_loss: ``"bce"`` (Eq. 10), ``"asl"`` (:func:`asl_elementwise`), ``"hill"``
            (:func:`~balancemix_timm.losses_mlml.hill_elementwise`), or a callable
            ``(logits, targets, **base_loss_kwargs) -> Tensor[B, K]`` of unreduced losses,
            called with float targets of the logits' dtype (float32 for half logits).
        ambiguous: Weight of ambiguous labels: ``"weight"`` (``p_G``, Eq. 10), ``"drop"`` (0)
            or ``"keep"`` (1).
        reduction: ``"mean"`` (default, Eq. 10): mean over the batch of the per-sample sums
            over classes; ``"sum"``: sum over batch and classes (ML-Decoder's ASL criterion is
            summed, use this for a like-for-like swap); ``"none"``: per-sample sums ``(B,)``.
        base_loss_kwargs: Keyword options for the base loss, e.g. ``{"gamma_neg": 2}`` for
            ASL, ``{"lamb": 1.5}`` for Hill. Must be empty for ``"bce"``.
        validate: Check values (finite logits, targets in [0, 1], ``state`` in {0, 1, 2},
            ``clean_prob`` in [0, 1]). Each check synchronises with the device; under mixed
            precision, overflowing logits raise here where ``GradScaler`` alone would just
            skip the step. Shapes and options are always checked.

    Returns:
        A scalar tensor (``"mean"`` / ``"sum"``) or a ``(B,)`` tensor (``"none"``), float32 for
        float16 / bfloat16 logits, else the dtype of ``logits``.

    Raises:
        ValueError: on shapes that do not match ``(B, K)``, non-finite logits, bad targets,
            state or clean_prob values, an unknown option, an empty batch with
            ``reduction="mean"``, or a base loss returning the wrong shape.
    """
    _check_mode(ambiguous)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    fn = _resolve_base_loss(base_loss, base_loss_kwargs)

    logits = check_tensor(logits, "logits")
    check_ndim(logits, "logits", 2)
    targets = check_tensor(targets, "targets")
    check_same_shape(logits, "logits", targets, "targets")
    if state is not None:
        state = check_tensor(state, "state")
        check_same_shape(logits, "logits", state, "state")
    if clean_prob is not None:
        clean_prob = check_tensor(clean_prob, "clean_prob")
        check_same_shape(logits, "logits", clean_prob, "clean_prob")
    if reduction == "mean" and logits.shape[0] == 0:
        raise ValueError('logits has an empty batch (B = 0): reduction="mean" is undefined')

    x, y = prepare_loss_inputs(logits, targets.detach(), validate=validate)
    elementwise = fn(x, y)
    if not isinstance(elementwise, Tensor) or elementwise.shape != logits.shape:
        got = tuple(elementwise.shape) if isinstance(elementwise, Tensor) else type(elementwise)
        raise ValueError(
            f"base_loss must return an unreduced tensor of shape {tuple(logits.shape)}, got {got}"
        )

    if state is not None:
        weights = label_weights(
            state.to(logits.device),
            None if clean_prob is None else clean_prob.to(logits.device),
            ambiguous=ambiguous,
            validate=validate,
        )
        elementwise = elementwise * weights.to(elementwise.dtype)

    per_sample = elementwise.sum(dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


class BalanceMixLoss(nn.Module):
    """Module form of :func:`balancemix_loss` (Eq. 10 of BalanceMix).

    Args:
        base_loss: ``"bce"`` | ``"asl"`` | ``"hill"`` | callable, see :func:`balancemix_loss`.
        ambiguous: ``"weight"`` | ``"drop"`` | ``"keep"``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        base_loss_kwargs: Keyword options of the base loss (e.g. ASL's ``gamma_neg``).
        validate: Check tensor values on every call.

    Example:
        >>> criterion = BalanceMixLoss(base_loss="bce", ambiguous="weight")
        >>> loss = criterion(logits, mixed_targets, state_r, clean_prob_r)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        base_loss: BaseLoss = "bce",
        ambiguous: str = "weight",
        reduction: str = "mean",
        base_loss_kwargs: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        _check_mode(ambiguous)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        _resolve_base_loss(base_loss, base_loss_kwargs)  # validates early
        self.base_loss = base_loss
        self.ambiguous = ambiguous
        self.reduction = reduction
        self.base_loss_kwargs = dict(base_loss_kwargs or {})
        self.validate = validate

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        state: Tensor | None = None,
        clean_prob: Tensor | None = None,
    ) -> Tensor:
        """Compute the loss; see :func:`balancemix_loss` for shapes."""
        return balancemix_loss(
            logits,
            targets,
            state,
            clean_prob,
            base_loss=self.base_loss,
            ambiguous=self.ambiguous,
            reduction=self.reduction,
            base_loss_kwargs=self.base_loss_kwargs,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        name = self.base_loss if isinstance(self.base_loss, str) else getattr(
            self.base_loss, "__name__", type(self.base_loss).__name__
        )
        return (
            f"base_loss={name!r}, ambiguous={self.ambiguous!r}, reduction={self.reduction!r}"
            + (f", base_loss_kwargs={self.base_loss_kwargs}" if self.base_loss_kwargs else "")
        )
