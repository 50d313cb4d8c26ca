"""LL-R and LL-Ct baselines (Kim et al., CVPR 2022): large-loss rejection / correction."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_ndim, check_same_shape, check_tensor, check_unit_interval
from ..loss import bce_elementwise
from ._options import choice_option, float_option
from .base import MixupMethod
from .context import MethodContext

__all__ = [
    "LargeLossMethod",
    "LLRMethod",
    "LLCtMethod",
    "large_loss_rate",
    "large_loss_count",
    "large_loss_selection",
    "large_loss_modification",
]

_logger = logging.getLogger(__name__)

_SCHEMES = ("reject", "correct")
_NEGATIVES = ("both", "random")
_COUNTS = ("entries", "negatives")
_REDUCTIONS = ("mean", "sum_mean")


def large_loss_rate(epoch: int, delta_rel: float) -> float:
    """Fraction ``1 - clean_rate`` modified in ``epoch`` (0-based): ``epoch * delta_rel / 100``.

    Kim et al.'s code starts with ``clean_rate = 1`` and subtracts ``delta_rel / 100`` after
    every epoch (``delta_rel`` is given in percent, their README's values 0.1-0.5), so the
    first epoch is trained unmodified. Capped at 1.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if not delta_rel >= 0:
        raise ValueError(f"delta_rel must be >= 0, got {delta_rel}")
    return min(epoch * float(delta_rel) / 100.0, 1.0)


def large_loss_count(num_entries: int, num_candidates: int, rate: float) -> int:
    """``min(ceil(num_entries * rate), num_candidates)`` (a 1e-9 guard keeps exact products).

    Kim et al. take ``k = ceil(B * K * (1 - clean_rate))`` over all ``B * K`` entries of the
    batch and pick the ``k`` largest losses among the unobserved (negative) ones.
    """
    check_unit_interval(rate, "rate")
    if rate == 0:
        return 0
    return min(max(0, math.ceil(num_entries * rate - 1e-9)), int(num_candidates))


def large_loss_selection(losses: Tensor, candidates: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` candidate entries with the largest loss.

    Args:
        losses: ``(B, K)`` element-wise losses (no gradient used).
        candidates: ``(B, K)`` bool, the entries that may be selected (negative labels).
        k: How many to select (at most the number of candidates).

    Returns:
        ``(B, K)`` bool mask with exactly ``min(k, candidates.sum())`` True entries, all
        candidates, none with a smaller loss than an unselected candidate.
    """
    losses = check_tensor(losses, "losses")
    check_ndim(losses, "losses", 2)
    check_finite(losses, "losses")
    check_same_shape(losses, "losses", candidates, "candidates")
    k = min(int(k), int(candidates.sum()))
    mask = torch.zeros(losses.shape, dtype=torch.bool, device=losses.device)
    if k <= 0:
        return mask
    scores = losses.detach().masked_fill(~candidates.bool(), -math.inf).flatten()
    top = torch.topk(scores, k).indices
    mask.view(-1)[top] = True
    return mask


def large_loss_modification(
    losses: Tensor, corrected_losses: Tensor, candidates: Tensor, rate: float, *, scheme: str,
    count: str = "entries",
) -> tuple[Tensor, Tensor]:
    """Rejects (LL-R) or corrects (LL-Ct) the largest-loss negative entries of a batch.

    Args:
        losses: ``(B, K)`` element-wise losses against the given targets.
        corrected_losses: ``(B, K)`` losses against the corrected (positive) targets; used for
            the selected entries with ``scheme="correct"``.
        candidates: ``(B, K)`` bool: the negative (unobserved) entries.
        rate: ``1 - clean_rate`` (:func:`large_loss_rate`).
        scheme: ``"reject"`` (LL-R: the selected losses become 0) or ``"correct"`` (LL-Ct: they
            become ``corrected_losses``, the label flipped to positive for this batch only).
        count: ``"entries"``: ``k = ceil(B * K * rate)`` as in Kim et al.'s code;
            ``"negatives"``: ``k = ceil(#candidates * rate)``.

    Returns:
        ``(final_losses, selected)``, both ``(B, K)``.
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
    if count not in _COUNTS:
        raise ValueError(f"count must be one of {_COUNTS}, got {count!r}")
    check_same_shape(losses, "losses", corrected_losses, "corrected_losses")
    n_cand = int(candidates.sum())
    k = large_loss_count(losses.numel() if count == "entries" else n_cand, n_cand, rate)
    selected = large_loss_selection(losses, candidates, k)
    replacement = torch.zeros_like(losses) if scheme == "reject" else corrected_losses
    return torch.where(selected, replacement, losses), selected


class LargeLossMethod(MixupMethod):
    """Large-loss rejection / correction: Y. Kim, J. M. Kim, Z. Akata, J. Lee, "Large Loss
    Matters in Weakly Supervised Multi-Label Classification", CVPR 2022.

    Unobserved (negative) labels are treated as possibly false negatives. In each batch, the
    ``k = ceil(B * K * (1 - clean_rate))`` negative entries with the largest BCE loss are
    rejected (LL-R: loss 0) or corrected (LL-Ct: the label is flipped to positive for this
    batch only; the data set keeps its labels). ``1 - clean_rate = epoch * delta_rel / 100``
    (0-based epoch; :func:`large_loss_rate`): nothing is modified in the first epoch and
    ``delta_rel`` percent more of the batch's entries every epoch after it. The loss is the
    mean over all ``B * K`` entries (rejected ones count as 0), as in Kim et al.'s code: note
    that this is ``1/K`` of the per-sample-sum scale of the other methods at the same learning
    rate (``reduction="sum_mean"`` gives that scale instead).

    Mixup (the BalanceMix paper trains every baseline on Mixup batches) makes the targets
    ``lam * y_R + (1 - lam) * y_M`` soft; the option ``negatives`` says which entries count:

    - ``"both"`` (default): the mixed target is 0, i.e. the label is unobserved in both mixed
      instances (or in the random one when ``lam = 1``); the corrected target is 1.
    - ``"random"``: the random instance's given label is 0 (it dominates, ``lam >= 0.5``);
      the correction sets that instance's label to 1: target ``lam + (1 - lam) y_M``.

    Options (``method_options.NAME=value``):
        delta_rel: per-epoch increase of the modified fraction, in percent of the batch's
            entries (default 0.2; Kim et al.'s README lists 0.1-0.5 and their ``config.py``
            divides by 100).
        negatives: ``"both"`` (default) or ``"random"``.
        count: ``"entries"`` (default, ``k`` from ``B * K``) or ``"negatives"`` (from the
            number of negative entries).
        reduction: ``"mean"`` (default, over ``B * K``) or ``"sum_mean"`` (sum over labels,
            mean over the batch).

    Logged per epoch: ``ll_rate``, ``ll_selected`` (entries modified) and, with injected
    noise, ``ll_selected_precision``: the fraction of modified entries whose true label is
    positive in the random instance (or, with ``negatives="both"``, in either instance).
    """

    name = "large_loss"
    scheme = "reject"
    option_names = ("delta_rel", "negatives", "count", "reduction")

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.delta_rel = float_option(self.options, "delta_rel", 0.2, low=0.0, high=100.0)
        self.negatives = choice_option(self.options, "negatives", "both", _NEGATIVES)
        self.count = choice_option(self.options, "count", "entries", _COUNTS)
        self.reduction = choice_option(self.options, "reduction", "mean", _REDUCTIONS)
        self._clean_cache: Tensor | None = None
        self._reset_counters()

    @property
    def current_rate(self) -> float:
        """``1 - clean_rate`` of the current epoch."""
        return large_loss_rate(self.epoch, self.delta_rel)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._selected = 0.0
        self._true_pos = 0.0

    def candidates_and_corrected(self, targets: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """The negative entries ``(B, K)`` bool and the corrected targets ``(B, K)``."""
        if self.negatives == "both":
            return targets == 0, torch.ones_like(targets)
        labels = self.labels_on_device()
        y_r = labels[batch.index_r.to(targets.device)]
        lam = batch.lam.to(device=targets.device, dtype=targets.dtype).view(-1, 1)
        return y_r == 0, (targets + lam * (1 - y_r)).clamp(max=1.0)

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        candidates, corrected = self.candidates_and_corrected(targets, batch)
        losses = bce_elementwise(logits, targets)
        corrected_losses = bce_elementwise(logits, corrected) if self.scheme == "correct" else losses
        final, selected = large_loss_modification(
            losses, corrected_losses, candidates, self.current_rate, scheme=self.scheme, count=self.count
        )
        self._count(selected, batch)
        if self.reduction == "mean":
            return final.mean()
        return final.sum(1).mean()

    def _count(self, selected: Tensor, batch: Any) -> None:
        n = float(selected.sum())
        self._selected += n
        ctx = self.ctx
        if n == 0 or not ctx.true_labels_known:
            return
        if self._clean_cache is None:
            self._clean_cache = ctx.clean_labels.to(ctx.device).bool()
        truth = self._clean_cache[batch.index_r.to(ctx.device)]
        if self.negatives == "both":
            truth = truth | self._clean_cache[batch.index_m.to(ctx.device)]
        self._true_pos += float((truth & selected).sum())

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ll_rate": self.current_rate, "ll_selected": int(self._selected)}
        if self.ctx.true_labels_known and self._selected:
            out["ll_selected_precision"] = self._true_pos / self._selected
        return out


class LLRMethod(LargeLossMethod):
    """LL-R (large-loss rejection) of Kim et al., CVPR 2022; see :class:`LargeLossMethod`."""

    name = "llr"
    scheme = "reject"


class LLCtMethod(LargeLossMethod):
    """LL-Ct (temporary large-loss correction) of Kim et al., CVPR 2022; see
    :class:`LargeLossMethod`."""

    name = "llct"
    scheme = "correct"
