"""SPLC baseline (self-paced loss correction, Zhang et al., arXiv:2112.07368, 2021) on Mixup batches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..losses_mlml import splc_corrected, splc_elementwise
from ._options import bool_option, float_option, int_option
from .base import MixupMethod
from .context import MethodContext

__all__ = ["SPLCMethod"]


class SPLCMethod(MixupMethod):
    """SPLC: Y. Zhang, Y. Cheng, X. Huang, F. Wen, R. Feng, Y. Li, Y. Guo, "Simple and Robust
    Loss Design for Multi-Label Learning with Missing Labels", arXiv:2112.07368, 2021.

    With ``p = sigmoid(x)``, the focal margin loss ``L+`` of positives and the focal loss
    ``L- = -p^gamma log(1 - p)`` of negatives::

        L = sum_k [ y_k L+_k + (1 - y_k) (c_k L+_k + (1 - c_k) L-_k) ],   c_k = [p_k > tau]

    where the correction ``c`` (a negative the model scores above ``tau`` is taken for a missing
    positive) is on from epoch ``change_epoch`` on (0-based, as the trainer and the reference
    code count; the default 1 = after the first epoch) and off before
    (:func:`~balancemix_timm.losses_mlml.splc_elementwise`). Summed over the labels and averaged
    over the batch like every method here (the reference code sums over the batch as well: its
    loss is ours times the batch size). Mixup targets ``lam * y_R + (1 - lam) * y_M`` of two random
    streams; the loss is linear in ``y`` and the correction turns the negative share ``1 - y`` of
    an entry with ``p > tau`` into a positive one.

    Options (``method_options.NAME=value``), defaults = the paper's:
        tau: 0.6.   change_epoch: 1.   margin: 1.0.   gamma: 2.0.
        corrected_margin: true (the paper: corrected negatives take the positive loss, margin
        included); false = the reference code (corrected negatives get the focal loss of a
        positive without the margin).

    Logged per epoch: ``splc_active`` (1 if the correction was on), ``splc_corrected`` (corrected
    entries of the epoch's batches) and, with known true labels, ``splc_corrected_precision``
    (share of them that is a true positive of either mixed instance).
    """

    name = "splc"
    option_names = ("tau", "change_epoch", "margin", "gamma", "corrected_margin")

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.tau = float_option(self.options, "tau", 0.6, low=0.0, high=1.0)
        self.change_epoch = int_option(self.options, "change_epoch", 1, low=0)
        self.margin = float_option(self.options, "margin", 1.0, low=0.0)
        self.gamma = float_option(self.options, "gamma", 2.0, low=0.0)
        self.corrected_margin = bool_option(self.options, "corrected_margin", True)
        self._truth_cache: Tensor | None = None
        self._reset_counters()

    @property
    def correcting(self) -> bool:
        """Whether the correction is on in the current epoch."""
        return self.epoch >= self.change_epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._corrected = 0.0
        self._true_pos = 0.0

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        loss = splc_elementwise(
            logits, targets, tau=self.tau, margin=self.margin, gamma=self.gamma,
            correct=self.correcting, corrected_margin=self.corrected_margin,
        )
        if self.correcting:
            self._count(splc_corrected(logits.detach(), targets, tau=self.tau), batch)
        return loss.sum(1).mean()

    def _count(self, corrected: Tensor, batch: Any) -> None:
        n = float(corrected.sum())
        self._corrected += n
        ctx = self.ctx
        if n == 0 or not ctx.true_labels_known or batch is None:
            return
        if self._truth_cache is None:
            self._truth_cache = ctx.clean_labels.to(ctx.device).bool()
        truth = self._truth_cache[batch.index_r.to(ctx.device)] | self._truth_cache[batch.index_m.to(ctx.device)]
        self._true_pos += float((truth & corrected).sum())

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        out: dict[str, Any] = {"splc_active": int(self.correcting), "splc_corrected": int(self._corrected)}
        if self.ctx.true_labels_known and self._corrected:
            out["splc_corrected_precision"] = self._true_pos / self._corrected
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._reset_counters()
