"""Hill loss baseline (Zhang et al., arXiv:2112.07368, 2021) on Mixup batches, like the other baselines."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..losses_mlml import hill_elementwise
from ._options import float_option
from .base import MixupMethod
from .context import MethodContext

__all__ = ["HillMethod"]


class HillMethod(MixupMethod):
    """Hill loss: Y. Zhang, Y. Cheng, X. Huang, F. Wen, R. Feng, Y. Li, Y. Guo, "Simple and Robust
    Loss Design for Multi-Label Learning with Missing Labels", arXiv:2112.07368, 2021.

    With ``p = sigmoid(x)`` and ``p_m = sigmoid(x - margin)``::

        L = sum_k [ y_k (-(1 - p_m,k)^gamma log p_m,k) + (1 - y_k) (lamb - p_k) p_k^2 ]

    (:func:`~balancemix_timm.losses_mlml.hill_elementwise`: the focal margin loss on positives,
    the hill-shaped re-weighting on negatives; nothing detached, as in the reference code),
    summed over the labels and averaged over the batch like every method here, so all share one
    loss scale. The reference code sums over the batch too (``reduction='sum'``), i.e. its loss
    is ours times the batch size (with Adam, as there, only the optimiser's ``eps`` sees the
    difference; with SGD it is a factor on the learning rate). The targets are the Mixup targets
    ``lam * y_R + (1 - lam) * y_M`` of two random streams (the BalanceMix paper applies Mixup to
    every baseline); with soft targets ``y`` interpolates linearly between the two terms.

    Options (``method_options.NAME=value``), defaults = the paper's:
        lamb: 1.5 (>= 1).   margin: 1.0.   gamma: 2.0.
    """

    name = "hill"
    option_names = ("lamb", "margin", "gamma")

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.lamb = float_option(self.options, "lamb", 1.5, low=1.0)
        self.margin = float_option(self.options, "margin", 1.0, low=0.0)
        self.gamma = float_option(self.options, "gamma", 2.0, low=0.0)

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        loss = hill_elementwise(logits, targets, lamb=self.lamb, margin=self.margin, gamma=self.gamma)
        return loss.sum(1).mean()
