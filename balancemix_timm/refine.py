"""Label-wise refinement of noisy multi-labels: clean, re-labeled, ambiguous (Eq. 9 of BalanceMix).

After the clean-label probabilities ``p_G`` of Eq. 8 are known (see
:mod:`balancemix_timm.gmm`), every given label ``y~[n, k]`` falls into one of three groups:

* **clean** (``C``): ``p_G[n, k] > clean_threshold`` (0.5 in the paper); the label is kept.
* **re-labeled** (``R``): not clean, and the model is confident about the class. With
  ``avg = 1/2 (f(aug1(x))_k + f(aug2(x))_k)`` the mean sigmoid probability over two RandAug
  views (Eq. 9 of BalanceMix)::

      avg > eps      =>  y~_k = 1
      avg < 1 - eps  =>  y~_k = 0

  A label whose new value equals the old one still counts as re-labeled.
* **ambiguous** (``U``): neither clean nor re-labeled; the given label is kept and its loss is
  later weighted by ``p_G`` (Eq. 10, :func:`balancemix_timm.loss.balancemix_loss`).

The paper uses ``eps = 0.975`` for clean / mislabeled / randomly flipped labels and
``eps = 0.55`` for the single-positive (missing label) setting. ``eps = 1`` disables
re-labeling altogether (every non-clean label becomes ambiguous), which together with
``ambiguous="drop"`` in the loss gives Table 5's "+ Clean Labels" row.
"""

from __future__ import annotations

import logging
from enum import IntEnum

import torch
from torch import Tensor

from balancemix_timm._checks import (
    check_binary,
    check_ndim,
    check_probabilities,
    check_same_shape,
    check_tensor,
    check_unit_interval,
)

__all__ = ["LabelState", "clean_if_agrees", "refine_labels", "view_average"]

_logger = logging.getLogger(__name__)


def _check_label_tables(labels: Tensor, **probabilities: Tensor) -> tuple[Tensor, ...]:
    """``(labels, *tables)`` strided (sparse ones densified) after checking that ``labels`` is a
    binary (N, K) tensor and each named table holds probabilities of its shape; ``ValueError``
    naming the first offending argument otherwise."""
    labels = check_tensor(labels, "labels")
    check_ndim(labels, "labels", 2)
    labels = check_binary(labels, "labels")
    tables = []
    for name, table in probabilities.items():
        tables.append(check_probabilities(table, name))
        check_same_shape(labels, "labels", tables[-1], name)
    return (labels, *tables)


class LabelState(IntEnum):
    """Reliability of one refined label (``C``, ``R`` and ``U`` of BalanceMix, Eq. 10).

    The integer values are those stored in the ``int8`` state tensors returned by
    :func:`refine_labels` and consumed by :func:`balancemix_timm.loss.label_weights`.
    """

    CLEAN = 0
    RELABELED = 1
    AMBIGUOUS = 2


def view_average(p1: Tensor, p2: Tensor) -> Tensor:
    """Average the predictions on two augmented views: ``1/2 (f(aug1(x)) + f(aug2(x)))``.

    This is the ensembled confidence of Eq. 9 of BalanceMix, where the two views are created
    by RandAug from the same image and ``f`` gives per-class sigmoid probabilities.

    Args:
        p1: Probabilities on the first view, shape ``(N, K)``, floats in [0, 1].
        p2: Probabilities on the second view, same shape as ``p1``.

    Returns:
        Tensor of shape ``(N, K)``: the element-wise mean ``(p1 + p2) / 2`` in the promoted
        floating dtype of the inputs. The inputs are not modified.

    Raises:
        ValueError: if an input is not a float tensor in [0, 1] or the shapes differ.
    """
    p1 = check_probabilities(p1, "p1")
    p2 = check_probabilities(p2, "p2")
    check_same_shape(p1, "p1", p2, "p2")
    if p1.device != p2.device:
        raise ValueError(f"p1 and p2 must be on the same device, got {p1.device} and {p2.device}")
    return (p1 + p2) / 2


def refine_labels(
    labels: Tensor,
    clean_prob: Tensor,
    view_probs: Tensor,
    eps: float,
    *,
    clean_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Split labels into clean / re-labeled / ambiguous and re-label confidently (Eq. 9).

    For every label ``(n, k)`` (Eq. 8-9 of BalanceMix):

    * ``clean_prob[n, k] > clean_threshold``: CLEAN, the given label is kept;
    * otherwise, ``view_probs[n, k] > eps``: RELABELED to 1;
    * otherwise, ``view_probs[n, k] < 1 - eps``: RELABELED to 0;
    * otherwise: AMBIGUOUS, the given label is kept.

    All three comparisons are strict: a clean probability exactly equal to the threshold is not
    clean, and a view probability exactly equal to ``eps`` (or ``1 - eps``) is not re-labeled.
    The comparisons are made in the dtype of ``clean_prob`` / ``view_probs`` (the thresholds are
    rounded to that dtype first), so a float32 probability that prints as ``eps`` compares
    equal to ``eps``. A label re-labeled to the value it already had is still RELABELED.

    Args:
        labels: Given (possibly noisy) labels, shape ``(N, K)``, binary (bool, integer or
            float holding only 0 and 1).
        clean_prob: Clean-label probabilities ``p_G`` of Eq. 8, shape ``(N, K)``, floats in
            [0, 1].
        view_probs: Mean sigmoid probability over two augmented views (see
            :func:`view_average`), shape ``(N, K)``, floats in [0, 1].
        eps: Confidence threshold for re-labeling, in (0.5, 1]. The paper uses 0.975, and 0.55
            for the single-positive label setting; 1.0 disables re-labeling.
        clean_threshold: A label is clean iff ``clean_prob > clean_threshold``; in [0, 1],
            0.5 in the paper.

    Returns:
        ``(refined, state)``: ``refined`` has the shape, dtype and device of ``labels`` (and is
        strided: sparse ``labels`` are densified);
        ``state`` is an ``int8`` tensor of the same shape holding :class:`LabelState` values.
        ``clean_prob`` and ``view_probs`` are moved to ``labels.device`` if needed. The inputs
        are never modified.

    Raises:
        ValueError: on a non-binary ``labels``, probabilities outside [0, 1], mismatched
            shapes, a tensor that is not 2-D, ``eps`` outside (0.5, 1] or ``clean_threshold``
            outside [0, 1].
    """
    labels, clean_prob, view_probs = _check_label_tables(labels, clean_prob=clean_prob, view_probs=view_probs)
    eps = check_unit_interval(eps, "eps", low=0.5, low_open=True)
    clean_threshold = check_unit_interval(clean_threshold, "clean_threshold")

    device = labels.device
    clean_prob = clean_prob.to(device)
    view_probs = view_probs.to(device)

    # Thresholds rounded to the probabilities' own dtype, compared strictly.
    threshold = torch.tensor(clean_threshold, dtype=clean_prob.dtype, device=device)
    high = torch.tensor(eps, dtype=view_probs.dtype, device=device)
    low = torch.tensor(1.0 - eps, dtype=view_probs.dtype, device=device)

    clean = clean_prob > threshold
    to_one = ~clean & (view_probs > high)
    to_zero = ~clean & (view_probs < low)

    state = torch.full(labels.shape, int(LabelState.AMBIGUOUS), dtype=torch.int8, device=device)
    state[clean] = int(LabelState.CLEAN)
    state[to_one | to_zero] = int(LabelState.RELABELED)

    refined = labels.clone()
    refined[to_one] = True if labels.dtype == torch.bool else 1
    refined[to_zero] = False if labels.dtype == torch.bool else 0

    if _logger.isEnabledFor(logging.DEBUG):
        total = max(labels.numel(), 1)
        _logger.debug(
            "refine_labels: clean %.4f, re-labeled %.4f (to 1: %d, to 0: %d), ambiguous %.4f",
            float(clean.sum()) / total,
            float((to_one | to_zero).sum()) / total,
            int(to_one.sum()),
            int(to_zero.sum()),
            float((state == int(LabelState.AMBIGUOUS)).sum()) / total,
        )
    return refined, state


def clean_if_agrees(clean_prob: Tensor, probs: Tensor, labels: Tensor) -> Tensor:
    """Raise to 1 the clean probability of every label the model agrees with.

    A label agrees with the model when its BCE loss is below ln 2, i.e. ``probs > 0.5`` for a
    given positive and ``probs < 0.5`` for a given negative (exactly 0.5 does not agree). The
    small-loss criterion of Eq. 6-8 can only tell a label noisy through the model's
    disagreement with it, but the per-(class, polarity) GMM of Eq. 7 always finds two modes:
    in a group with no noise (most negative groups, every group of clean data) it splits the
    near-zero losses and marks the upper part as not clean although the model predicts those
    labels. This rule (the engine's ``clean_if_agrees`` option; the paper is silent on groups
    without a second mode) keeps them clean. Labels the model disagrees with keep ``p_G``.

    Args:
        clean_prob: ``p_G`` of Eq. 8, shape ``(N, K)``, floats in [0, 1].
        probs: The model's f(x) that the losses of Eq. 6 came from, shape ``(N, K)``, floats
            in [0, 1].
        labels: The given labels the losses were taken against, shape ``(N, K)``, binary.

    Returns:
        A new ``(N, K)`` tensor of ``clean_prob``'s dtype and device: 1 where the label
        agrees, ``clean_prob`` elsewhere.

    Raises:
        ValueError: on non-binary labels, probabilities outside [0, 1] or mismatched shapes.
    """
    labels, clean_prob, probs = _check_label_tables(labels, clean_prob=clean_prob, probs=probs)
    probs = probs.to(clean_prob.device)
    positive = labels.to(clean_prob.device) != 0
    agrees = torch.where(positive, probs > 0.5, probs < 0.5)
    return torch.where(agrees, torch.ones_like(clean_prob), clean_prob)
