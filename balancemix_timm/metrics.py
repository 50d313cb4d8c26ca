"""Evaluation metrics of BalanceMix: mAP, class-group mAP, label precision/recall, re-labeling.

* :func:`average_precision` / :func:`mean_average_precision`: per-class average precision
  computed exactly as scikit-learn's ``average_precision_score`` (vectorised over classes in
  torch) and its mean over classes, x100 ("Evaluation Metric" of BalanceMix).
* :func:`class_groups` / :func:`group_mean_average_precision`: mAP over the many-shot
  (> 10,000 positives), medium-shot (1,000-10,000) and few-shot (< 1,000) classes;
  :func:`scaled_group_thresholds` scales these COCO thresholds to a data set of any size and
  :func:`group_absence_reasons` says why a group holds no class.
* :func:`label_precision_recall`: label precision and recall of the selected clean labels
  (Eq. 12 of BalanceMix).
* :func:`relabel_statistics`: re-label proportion and accuracy (Eq. 13 of BalanceMix).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import Tensor

from balancemix_timm._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_same_shape,
    check_tensor,
)

__all__ = [
    "average_precision",
    "mean_average_precision",
    "COCO_NUM_TRAIN",
    "COCO_MANY_THRESHOLD",
    "COCO_FEW_THRESHOLD",
    "scaled_group_thresholds",
    "class_groups",
    "group_absence_reasons",
    "group_mean_average_precision",
    "label_precision_recall",
    "relabel_statistics",
]

_logger = logging.getLogger(__name__)

#: Number of MS-COCO 2014 training images, the reference of :func:`scaled_group_thresholds`.
COCO_NUM_TRAIN = 82081
#: COCO's many-shot / few-shot thresholds (positive labels) of the BalanceMix paper.
COCO_MANY_THRESHOLD = 10000
COCO_FEW_THRESHOLD = 1000


def _check_scores_targets(scores: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    scores = check_tensor(scores, "scores")
    targets = check_tensor(targets, "targets")
    check_ndim(scores, "scores", 2)
    check_ndim(targets, "targets", 2)
    check_same_shape(scores, "scores", targets, "targets")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError(f"scores must be a real-valued numeric tensor, got {scores.dtype}")
    check_finite(scores, "scores")
    targets = check_binary(targets, "targets")
    return (
        scores.detach().to(dtype=torch.float64),
        targets.detach().to(device=scores.device, dtype=torch.float64),
    )


def _check_ignore(ignore: Tensor | None, targets: Tensor) -> Tensor | None:
    if ignore is None:
        return None
    ignore = check_tensor(ignore, "ignore")
    check_same_shape(ignore, "ignore", targets, "targets")
    ignore = check_binary(ignore, "ignore")
    return ignore.detach().to(device=targets.device).bool()


def average_precision(scores: Tensor, targets: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Per-class average precision, identical to scikit-learn's ``average_precision_score``.

    For each class the samples are ranked by decreasing score; tied scores form one threshold.
    With ``P_n`` and ``R_n`` the precision and recall when predicting positive every sample
    whose score is at least the ``n``-th distinct threshold::

        AP = sum_n (R_n - R_{n-1}) * P_n,     R_0 = 0,

    the step-wise (non-interpolated) area under the precision-recall curve. Equivalently, each
    positive sample contributes ``P / #positives`` where ``P`` is the precision at the end of
    its tie group.

    Args:
        scores: ``(N, K)`` real-valued scores (probabilities or logits; only the order within a
            class matters), finite.
        targets: ``(N, K)`` binary ground truth (float, integer or bool).
        ignore: optional ``(N, K)`` binary mask; where it is set the (sample, class) pair is
            left out of that class's ranking, neither positive nor negative. The VOC protocol
            ignores this way the labels present only through difficult objects
            (:attr:`~balancemix_timm.data.datasets.VocMultiLabel.difficult_mask`).

    Returns:
        ``(K,)`` float64 tensor on ``scores``' device. A class without any positive target has
        an undefined AP and gets ``NaN`` (scikit-learn warns and returns 0 there);
        :func:`mean_average_precision` excludes such classes.

    Raises:
        ValueError: on non-tensor, non-2-D, mismatched, non-finite or non-binary input (or an
            ``ignore`` of another shape or not binary).
    """
    s, y = _check_scores_targets(scores, targets)
    skip = _check_ignore(ignore, y)
    if skip is not None and bool(skip.any()):
        # Ignored pairs rank below every finite score as negatives: they then add no true or
        # false positive before any counted sample, which is leaving them out.
        s = s.masked_fill(skip, -math.inf)
        y = y.masked_fill(skip, 0.0)
    n, k = s.shape
    if n == 0:
        return torch.full((k,), math.nan, dtype=torch.float64, device=s.device)
    s_sorted, order = torch.sort(s, dim=0, descending=True, stable=True)
    y_sorted = torch.gather(y, 0, order)
    tp = torch.cumsum(y_sorted, dim=0)  # (N, K) true positives among the top n+1
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=s.device).unsqueeze(1)
    precision = tp / rank
    # last element of every tie group (where the next sorted score differs, or the end)
    group_end = torch.ones_like(s_sorted, dtype=torch.bool)
    group_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    # index of the end of the tie group of every position: reverse cumulative minimum
    idx = torch.arange(n, device=s.device).unsqueeze(1).expand(n, k)
    end_idx = torch.where(group_end, idx, torch.full_like(idx, n))
    end_idx = torch.flip(torch.cummin(torch.flip(end_idx, dims=(0,)), dim=0).values, dims=(0,))
    precision_at_end = torch.gather(precision, 0, end_idx)
    n_pos = tp[-1]
    ap = (y_sorted * precision_at_end).sum(dim=0) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, math.nan))


def _nanmean_x100(values: Tensor) -> float:
    valid = values[~torch.isnan(values)]
    if valid.numel() == 0:
        return math.nan
    return float(valid.mean()) * 100.0


def mean_average_precision(scores: Tensor, targets: Tensor, ignore: Tensor | None = None) -> float:
    """Mean average precision over classes, x100 ("Evaluation Metric" of BalanceMix).

    Classes without any positive target (NaN AP, see :func:`average_precision`) are excluded
    from the mean and a warning is logged.

    Args:
        scores: ``(N, K)`` finite real-valued scores.
        targets: ``(N, K)`` binary ground truth.
        ignore: optional ``(N, K)`` binary mask of pairs left out (see
            :func:`average_precision`).

    Returns:
        mAP in ``[0, 100]``, or ``NaN`` when no class has a positive target.
    """
    ap = average_precision(scores, targets, ignore)
    n_nan = int(torch.isnan(ap).sum())
    if n_nan:
        _logger.warning(
            "mean_average_precision: %d of %d classes have no positive target and are "
            "excluded from the mean", n_nan, ap.numel(),
        )
    return _nanmean_x100(ap)


def scaled_group_thresholds(num_train: int) -> tuple[int, int]:
    """COCO's many-shot / few-shot thresholds scaled to a training set of ``num_train`` images.

    The BalanceMix paper groups COCO classes by their number of positive labels among 82,081
    training images: many-shot (more than 10,000), medium-shot (1,000 to 10,000) and few-shot
    (fewer than 1,000). The rule for every data set: the same fractions of ``num_train``, i.e.
    ``many = round(10000 * N / 82081)`` and ``few = max(1, round(1000 * N / 82081))``, with
    ``many`` raised to ``few + 1`` when rounding makes them meet. MS-COCO itself gets 10,000 /
    1,000; a 3,000-image set 365 / 37; VOC 2007 trainval (5,011) 610 / 61.

    Args:
        num_train: Number of training images.

    Returns:
        ``(many, few)``: a class with more than ``many`` positives is many-shot, one with fewer
        than ``few`` is few-shot, the rest medium-shot. ``few >= 1`` and ``many > few``.

    Raises:
        ValueError: ``num_train`` is not a positive int.
    """
    if not isinstance(num_train, int) or isinstance(num_train, bool) or num_train < 1:
        raise ValueError(f"num_train must be a positive int, got {num_train!r}")
    many = round(COCO_MANY_THRESHOLD * num_train / COCO_NUM_TRAIN)
    few = max(1, round(COCO_FEW_THRESHOLD * num_train / COCO_NUM_TRAIN))
    return max(many, few + 1), few


def class_groups(
    positive_counts: Tensor, *, many: int = 10000, few: int = 1000
) -> dict[str, Tensor]:
    """Split classes into many-, medium- and few-shot groups by their positive-label count.

    "Evaluation Metric" of BalanceMix: many-shot classes have more than 10,000 positive labels,
    medium-shot classes from 1,000 to 10,000 and few-shot classes less than 1,000.

    The counts are whatever the caller passes (docs/design.md, decision 8). The trainer passes the CLEAN
    training positives, so that the groups are the dataset's natural (e.g. MS-COCO's) groups
    and do not change with the injected noise; pass noisy counts to group by the labels the
    model was trained on.

    Args:
        positive_counts: ``(K,)`` non-negative number of positive labels of each class.
        many: a class with ``count > many`` is many-shot.
        few: a class with ``count < few`` is few-shot; ``few <= count <= many`` is medium-shot.

    Returns:
        ``{"many": idx, "medium": idx, "few": idx}``, each a sorted ``LongTensor`` of class
        indices; together they partition ``range(K)``.

    Raises:
        ValueError: if ``positive_counts`` is not a finite non-negative 1-D tensor or
            ``many <= few``.
    """
    positive_counts = check_tensor(positive_counts, "positive_counts")
    check_ndim(positive_counts, "positive_counts", 1)
    if positive_counts.is_complex() or positive_counts.dtype == torch.bool:
        raise ValueError(
            f"positive_counts must be a real-valued numeric tensor, got {positive_counts.dtype}"
        )
    check_finite(positive_counts, "positive_counts")
    if positive_counts.numel() and bool((positive_counts < 0).any()):
        raise ValueError("positive_counts must be non-negative")
    if not many > few:
        raise ValueError(f"many must be greater than few, got many={many}, few={few}")
    if few < 0:
        raise ValueError(f"few must be non-negative, got {few}")
    c = positive_counts.detach()
    many_mask = c > many
    few_mask = c < few
    medium_mask = ~many_mask & ~few_mask
    return {
        "many": many_mask.nonzero().squeeze(1).long(),
        "medium": medium_mask.nonzero().squeeze(1).long(),
        "few": few_mask.nonzero().squeeze(1).long(),
    }


def group_absence_reasons(
    groups: Mapping[str, Tensor], *, many: int, few: int
) -> dict[str, str]:
    """Why each class group of :func:`class_groups` that holds no class is empty.

    Args:
        groups: ``{"many": idx, "medium": idx, "few": idx}`` from :func:`class_groups`.
        many: The ``many`` threshold the groups were made with.
        few: The ``few`` threshold the groups were made with.

    Returns:
        Group name -> reason (e.g. ``"no class has > 365 positives"``), only for empty groups.
    """
    rules = {
        "many": f"no class has > {many} positives",
        "medium": f"no class has {few}-{many} positives",
        "few": f"no class has < {few} positives",
    }
    return {
        name: rules.get(name, "it holds no class")
        for name, index in groups.items()
        if int(index.numel() if index.dtype != torch.bool else index.sum()) == 0
    }


def group_mean_average_precision(
    scores: Tensor, targets: Tensor, groups: Mapping[str, Tensor], ignore: Tensor | None = None
) -> dict[str, float]:
    """mAP (x100) over all classes and over each class group.

    Args:
        scores: ``(N, K)`` finite real-valued scores.
        targets: ``(N, K)`` binary ground truth.
        groups: name -> class indices (``LongTensor``) or ``(K,)`` bool mask, e.g. the output
            of :func:`class_groups`.
        ignore: ``(N, K)`` bool mask of labels left out of every AP (see
            :func:`average_precision`), or None.

    Returns:
        ``{"all": mAP, **{name: mAP of the group}}``. A group with no class, or whose classes
        all lack positive targets, gets ``NaN``. Classes without a positive target are excluded
        from every mean (a warning is logged once).
    """
    if not isinstance(groups, Mapping):
        raise ValueError(f"groups must be a mapping of name -> class indices, got {type(groups)}")
    if "all" in groups:
        raise ValueError('groups must not contain the reserved key "all"')
    ap = average_precision(scores, targets, ignore)
    k = ap.numel()
    n_nan = int(torch.isnan(ap).sum())
    if n_nan:
        _logger.warning(
            "group_mean_average_precision: %d of %d classes have no positive target and are "
            "excluded from the means", n_nan, k,
        )
    out = {"all": _nanmean_x100(ap)}
    for name, index in groups.items():
        index = check_tensor(index, f"groups[{name!r}]")
        index = index.detach().to(ap.device)
        if index.dtype == torch.bool:
            if index.shape != (k,):
                raise ValueError(
                    f"groups[{name!r}] bool mask must have shape ({k},), got {tuple(index.shape)}"
                )
            index = index.nonzero().squeeze(1)
        elif index.is_floating_point() or index.is_complex():
            raise ValueError(f"groups[{name!r}] must hold integer class indices, got {index.dtype}")
        index = index.long().flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= k):
            raise ValueError(f"groups[{name!r}] holds class indices outside [0, {k})")
        out[name] = _nanmean_x100(ap[index])
    return out


def _check_label_triplet(
    mask: Tensor, mask_name: str, a: Tensor, a_name: str, b: Tensor, b_name: str
) -> tuple[Tensor, Tensor, Tensor]:
    mask, a, b = (check_binary(t, name) for t, name in ((mask, mask_name), (a, a_name), (b, b_name)))
    check_same_shape(mask, mask_name, a, a_name)
    check_same_shape(a, a_name, b, b_name)
    dev = mask.device
    return (
        mask.detach().to(dtype=torch.bool),
        a.detach().to(device=dev, dtype=torch.bool),
        b.detach().to(device=dev, dtype=torch.bool),
    )


def label_precision_recall(
    selected: Tensor, noisy_labels: Tensor, true_labels: Tensor
) -> tuple[float, float]:
    """Label precision and recall of the selected clean labels (Eq. 12 of BalanceMix).

    With ``C`` the set of selected labels and ``L`` the set of labels whose given (noisy) value
    equals the true one::

        precision = |{y~ in C : y~ = y}| / |C|,     recall = |{y~ in C : y~ = y}| / |L|.

    Args:
        selected: ``(N, K)`` binary mask of the labels selected as clean (e.g.
            ``state == LabelState.CLEAN``).
        noisy_labels: ``(N, K)`` binary given labels.
        true_labels: ``(N, K)`` binary ground-truth labels.

    Returns:
        ``(precision, recall)`` as fractions in ``[0, 1]``; ``NaN`` when the denominator is
        empty (nothing selected, or no correct label).
    """
    c, noisy, true = _check_label_triplet(
        selected, "selected", noisy_labels, "noisy_labels", true_labels, "true_labels"
    )
    correct = noisy == true
    hit = int((c & correct).sum())
    n_sel = int(c.sum())
    n_correct = int(correct.sum())
    precision = hit / n_sel if n_sel else math.nan
    recall = hit / n_correct if n_correct else math.nan
    return precision, recall


def relabel_statistics(
    relabeled: Tensor, refined_labels: Tensor, true_labels: Tensor
) -> tuple[float, float]:
    """Re-label proportion and accuracy (Eq. 13 of BalanceMix).

    With ``R`` the set of re-labeled labels and ``D`` all labels of the data::

        proportion = |R| / |D|,     accuracy = |{y~ in R : y~ = y}| / |R|,

    where ``y~`` is the label after re-labeling (a label re-labeled to the value it already had
    still counts as re-labeled).

    Args:
        relabeled: ``(N, K)`` binary mask of the re-labeled labels (e.g.
            ``state == LabelState.RELABELED``).
        refined_labels: ``(N, K)`` binary labels after re-labeling.
        true_labels: ``(N, K)`` binary ground-truth labels.

    Returns:
        ``(proportion, accuracy)`` as fractions in ``[0, 1]``; ``NaN`` when the denominator is
        empty (no label at all, or nothing re-labeled).
    """
    r, refined, true = _check_label_triplet(
        relabeled, "relabeled", refined_labels, "refined_labels", true_labels, "true_labels"
    )
    n_r = int(r.sum())
    n_all = r.numel()
    hit = int((r & (refined == true)).sum())
    proportion = n_r / n_all if n_all else math.nan
    accuracy = hit / n_r if n_r else math.nan
    return proportion, accuracy
