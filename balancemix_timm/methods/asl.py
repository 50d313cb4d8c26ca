"""ASL baseline (Ben-Baruch et al., ICCV 2021) on Mixup batches, as in BalanceMix's Tables 1-4."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..loss import asl_elementwise
from ._options import float_option
from .base import MixupMethod
from .context import MethodContext

__all__ = ["ASLMethod"]


class ASLMethod(MixupMethod):
    """Asymmetric loss: E. Ben-Baruch et al., "Asymmetric Loss For Multi-Label Classification",
    ICCV 2021.

    With ``p = sigmoid(x)`` and the shifted probability ``p_m = max(p - clip, 0)``::

        L = -sum_k [ y_k (1 - p_k)^gamma_pos log p_k + (1 - y_k) p_m,k^gamma_neg log(1 - p_m,k) ]

    (:func:`~balancemix_timm.loss.asl_elementwise`, focusing weights treated as constants in
    back-propagation as in the reference implementation), summed over the labels and averaged
    over the batch, like the BCE default (Eq. 1 of BalanceMix). The targets are the Mixup
    targets ``lam * y_R + (1 - lam) * y_M`` of two random streams (the BalanceMix paper applies
    RandAug and Mixup to every baseline); with soft targets ``y`` interpolates linearly between
    the positive and the negative term.

    Options (``method_options.NAME=value``), defaults = the BalanceMix paper's ASL setting:
        gamma_pos: 0.   gamma_neg: 4.   clip: 0.05.
    """

    name = "asl"
    option_names = ("gamma_pos", "gamma_neg", "clip")

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.gamma_pos = float_option(self.options, "gamma_pos", 0.0, low=0.0)
        self.gamma_neg = float_option(self.options, "gamma_neg", 4.0, low=0.0)
        self.clip = float_option(self.options, "clip", 0.05, low=0.0, high=1.0, high_open=True)

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        loss = asl_elementwise(logits, targets, gamma_pos=self.gamma_pos, gamma_neg=self.gamma_neg, clip=self.clip)
        return loss.sum(1).mean()
