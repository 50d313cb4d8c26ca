"""T-estimator baseline (Li et al., NeurIPS 2022): per-class flip rates from label correlations,
then importance-reweighted BCE, on Mixup batches."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_probabilities,
    check_same_shape,
    check_tensor,
)
from ..gmm import clean_probability
from ..loss import bce_elementwise
from ..options import gmm_options
from ._options import bool_option, float_option, int_option
from .base import MixupMethod
from .context import MethodContext

__all__ = [
    "TEstimatorMethod",
    "select_clean",
    "estimate_flip_rates",
    "true_flip_rates",
    "reweighting_weights",
    "reweighted_bce_elementwise",
]

_logger = logging.getLogger(__name__)

_MAX_COND = 1e6  # a class whose normal matrix is worse conditioned than this gets no estimate


def select_clean(
    probs: Tensor, labels: Tensor, *, threshold: float = 0.5, **gmm_options: Any
) -> Tensor:
    """Per-class clean-sample selection by two-component GMMs on the BCE losses.

    The losses ``-log p`` (given label 1) / ``-log(1 - p)`` (given label 0) of every label are
    split by class and given polarity, a GMM is fitted to each group
    (:func:`~balancemix_timm.gmm.clean_probability`) and a label is clean when the posterior of
    its group's small-loss component exceeds ``threshold``.

    Args:
        probs: ``(N, K)`` predicted probabilities.
        labels: ``(N, K)`` given labels in {0, 1}.
        threshold: Posterior above which a label is selected.
        **gmm_options: Passed to :func:`~balancemix_timm.gmm.clean_probability`.

    Returns:
        ``(N, K)`` bool mask of the selected (clean) labels.
    """
    probs = check_tensor(probs, "probs")
    probs = check_probabilities(probs, "probs")
    labels = check_binary(labels, "labels")
    check_same_shape(probs, "probs", labels, "labels")
    p = probs.double().clamp(1e-7, 1 - 1e-7)
    y = labels.double()
    losses = -(y * p.log() + (1 - y) * (1 - p).log())
    return clean_probability(losses.float(), labels, **gmm_options) > threshold


def estimate_flip_rates(
    noisy_labels: Tensor, clean_mask: Tensor, *, min_clean: int = 5, max_rate: float = 0.49,
    min_z: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form per-class flip rates from label co-occurrence and selected clean labels.

    Model (Li et al., NeurIPS 2022, class-dependent multi-label noise): label ``i`` is flipped
    with ``rho_+(i) = P(y~_i = 0 | y_i = 1)`` and ``rho_-(i) = P(y~_i = 1 | y_i = 0)``, and
    ``y~_i`` is independent of ``y~_j`` (``j != i``) given ``y_i``. Then for every pair
    ``(i, j)``, with the 2 x 2 matrices

    - ``N^{ij}[b, c] = P(y~_i = b, y~_j = c)`` (noisy co-occurrence, counted on all samples),
    - ``C^{ij}[a, c] = P(y~_j = c | y_i = a)`` (counted on the samples whose label ``i`` was
      selected clean: those with given ``y~_i = 1`` estimate the row ``a = 1``, those with
      ``y~_i = 0`` the row ``a = 0``),
    - ``A^i[b, a] = P(y~_i = b, y_i = a) = T^i[a, b] P(y_i = a)``,

    the mismatch of the label correlations reads ``N^{ij} = A^i C^{ij}``. Stacking all
    ``j != i`` gives the least-squares solution

        ``A^i = (sum_j N^{ij} C^{ij T}) (sum_j C^{ij} C^{ij T})^{-1}``,

    and, after clamping ``A^i`` at 0, ``rho_-(i) = A^i[1, 0] / (A^i[0, 0] + A^i[1, 0])`` and
    ``rho_+(i) = A^i[0, 1] / (A^i[0, 1] + A^i[1, 1])`` (columns normalised to ``T^i``). The
    rates are identifiable only when some label ``j`` depends on ``i``
    (``q_ij = P(y~_j = 1 | y_i = 1) != r_ij = P(y~_j = 1 | y_i = 0)``). With ``min_z > 0``
    a class gets an estimate only if some ``j`` has ``|q_ij - r_ij| >= min_z * se_ij``
    (``se`` the binomial standard error of the difference): our optional guard against
    estimates made of sampling noise (the paper has none; default off). A class whose normal
    matrix is singular (condition number above 1e6) never gets one.

    Li et al. estimate "the occurrence probability of one noisy label when a certain clean
    label appears" from selected clean samples and solve a bilinear decomposition in
    ``(T^i, P(y_i))``; we also use the clean-selected *negatives* (row ``a = 0`` of
    ``C^{ij}``), which makes the problem linear in ``A^i``: this is our closed-form version of
    their estimator, not a transcription of their code.

    Args:
        noisy_labels: ``(N, K)`` given labels in {0, 1}, ``K >= 2``.
        clean_mask: ``(N, K)`` bool, the labels selected as clean.
        min_clean: A class needs at least this many selected labels of each polarity.
        max_rate: Estimates are clipped to ``[0, max_rate]`` (default 0.49 keeps
            ``rho_+ + rho_- < 1``, the condition under which T is invertible).
        min_z: Significance (in standard errors) of the strongest dependence a class needs
            (0: no such requirement).

    Returns:
        ``(rho_pos, rho_neg, valid)``: ``(K,)`` float64 rates (0 for invalid classes) and a
        ``(K,)`` bool mask of the classes with an estimate.
    """
    noisy_labels = check_binary(noisy_labels, "noisy_labels")
    check_ndim(noisy_labels, "noisy_labels", 2)
    check_same_shape(noisy_labels, "noisy_labels", clean_mask, "clean_mask")
    n, k = noisy_labels.shape
    if k < 2:
        raise ValueError(f"noisy_labels needs at least 2 classes to use label correlations, got {k}")
    if n == 0:
        raise ValueError("noisy_labels is empty")
    if not 0.0 <= max_rate < 1.0:
        raise ValueError(f"max_rate must be in [0, 1), got {max_rate}")
    if not min_z >= 0:
        raise ValueError(f"min_z must be >= 0, got {min_z}")
    y = noisy_labels.detach().double().cpu()
    m = clean_mask.detach().bool().double().cpu()
    sel_pos, sel_neg = m * y, m * (1 - y)
    n_pos, n_neg = sel_pos.sum(0), sel_neg.sum(0)
    q = (sel_pos.T @ y) / n_pos.clamp(min=1).unsqueeze(1)  # q[i, j] = P(y~_j = 1 | y_i = 1)
    r = (sel_neg.T @ y) / n_neg.clamp(min=1).unsqueeze(1)  # r[i, j] = P(y~_j = 1 | y_i = 0)
    se = (q * (1 - q) / n_pos.clamp(min=1).unsqueeze(1) + r * (1 - r) / n_neg.clamp(min=1).unsqueeze(1)).sqrt()
    z = ((q - r).abs() / se.clamp(min=1e-12)).fill_diagonal_(0.0)
    c = torch.stack([torch.stack([1 - r, r], -1), torch.stack([1 - q, q], -1)], -2)  # (K, K, a, c)
    yn = 1 - y
    co = torch.stack([torch.stack([yn.T @ yn, yn.T @ y], -1), torch.stack([y.T @ yn, y.T @ y], -1)], -2) / n
    off = (~torch.eye(k, dtype=torch.bool)).double()[:, :, None, None]  # j != i
    p = torch.einsum("ijbc,ijac->iba", co * off, c)  # sum_j N C^T
    g = torch.einsum("ijac,ijdc->iad", c * off, c)  # sum_j C C^T
    cond = torch.linalg.cond(g)
    valid = (n_pos >= min_clean) & (n_neg >= min_clean) & torch.isfinite(cond) & (cond < _MAX_COND)
    valid &= z.max(1).values >= min_z
    eye = torch.eye(2, dtype=torch.float64).expand(k, 2, 2)
    g_safe = torch.where(valid[:, None, None], g, eye)
    a = torch.linalg.solve(g_safe, p.transpose(-1, -2)).transpose(-1, -2).clamp(min=0)  # A = P G^-1
    col0, col1 = a[:, 0, 0] + a[:, 1, 0], a[:, 0, 1] + a[:, 1, 1]
    valid &= (col0 > 0) & (col1 > 0)
    rho_neg = torch.where(valid, a[:, 1, 0] / col0.clamp(min=1e-12), torch.zeros(k, dtype=torch.float64))
    rho_pos = torch.where(valid, a[:, 0, 1] / col1.clamp(min=1e-12), torch.zeros(k, dtype=torch.float64))
    return rho_pos.clamp(0, max_rate), rho_neg.clamp(0, max_rate), valid


def true_flip_rates(noisy_labels: Tensor, clean_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Empirical ``(rho_pos, rho_neg)`` per class, ``(K,)`` float64 each (NaN without support).

    Raises:
        ValueError: either label matrix is not binary, or their shapes differ.
    """
    noisy_labels = check_binary(noisy_labels, "noisy_labels")
    clean_labels = check_binary(clean_labels, "clean_labels")
    check_same_shape(noisy_labels, "noisy_labels", clean_labels, "clean_labels")
    y, t = noisy_labels.double(), clean_labels.double()
    rho_pos = ((1 - y) * t).sum(0) / t.sum(0)
    rho_neg = (y * (1 - t)).sum(0) / (1 - t).sum(0)
    return rho_pos, rho_neg


def reweighting_weights(logits: Tensor, rho_pos: Tensor, rho_neg: Tensor) -> tuple[Tensor, Tensor]:
    """Importance weights ``P(y = y~ | x) / P(y~ | x)`` for ``y~ = 1`` and ``y~ = 0``.

    With the model's probability ``p = sigmoid(x)`` taken as the clean posterior (detached),
    the noisy posterior is ``T^T [1 - p, p]``: ``P(y~ = 1 | x) = (1 - p) rho_- + p (1 - rho_+)``.
    Hence (importance reweighting, Liu & Tao 2016, as used by Li et al. 2022)::

        w_1 = p / ((1 - p) rho_- + p (1 - rho_+))   = 1 / ((1 - rho_+) + rho_- e^{-x})
        w_0 = (1 - p) / ((1 - p)(1 - rho_-) + p rho_+) = 1 / ((1 - rho_-) + rho_+ e^{x})

    computed in the right-hand form (no 0/0 for saturated ``p``).

    Args:
        logits: ``(B, K)`` raw scores.
        rho_pos, rho_neg: ``(K,)`` flip rates in [0, 1).

    Returns:
        ``(w_1, w_0)``, both ``(B, K)``, without gradient.
    """
    logits = check_tensor(logits, "logits")
    check_ndim(logits, "logits", 2)
    check_finite(logits, "logits")
    x = logits.detach()
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    rp = rho_pos.to(device=x.device, dtype=x.dtype)
    rn = rho_neg.to(device=x.device, dtype=x.dtype)
    if rp.shape != (x.shape[1],) or rn.shape != (x.shape[1],):
        raise ValueError(f"rho_pos and rho_neg must have shape ({x.shape[1]},), "
                         f"got {tuple(rp.shape)}, {tuple(rn.shape)}")
    if bool(((rp < 0) | (rp >= 1) | (rn < 0) | (rn >= 1)).any()):
        raise ValueError("rho_pos and rho_neg must lie in [0, 1)")
    w1 = 1.0 / ((1 - rp) + torch.exp(torch.log(rn) - x))
    w0 = 1.0 / ((1 - rn) + torch.exp(torch.log(rp) + x))
    return w1, w0


def reweighted_bce_elementwise(logits: Tensor, targets: Tensor, rho_pos: Tensor, rho_neg: Tensor) -> Tensor:
    """Importance-reweighted BCE ``-[y w_1 log p + (1 - y) w_0 log(1 - p)]``, ``(B, K)``.

    For a binary given label ``y~`` this is ``w_{y~} * BCE(x, y~)`` with the weights of
    :func:`reweighting_weights`; a soft (Mixup) target weights each of the two terms by its
    own importance weight.
    """
    targets = check_tensor(targets, "targets")
    check_same_shape(logits, "logits", targets, "targets")
    check_probabilities(targets.float(), "targets")
    w1, w0 = reweighting_weights(logits, rho_pos, rho_neg)
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    y = targets.to(device=x.device, dtype=x.dtype)
    return -(y * w1 * torch.nn.functional.logsigmoid(x) + (1 - y) * w0 * torch.nn.functional.logsigmoid(-x))


class TEstimatorMethod(MixupMethod):
    """T-estimator: S. Li, X. Xia, H. Zhang, Y. Zhan, S. Ge, T. Liu, "Estimating Noise Transition
    Matrix with Label Correlations for Noisy Multi-Label Learning", NeurIPS 2022.

    1. Warm-up: ``warmup_epochs`` epochs of Mixup with BCE (summed over labels, batch mean).
    2. At the end of the last warm-up epoch (of the first epoch if ``warmup_epochs`` is 0),
       one no-grad pass over the training set with the evaluation transform (the context's
       ``predict``; rows gathered under DDP) gives ``p(x)``; per-class, per-polarity GMMs on
       the BCE losses select the clean labels (:func:`select_clean`), and the per-class flip
       rates ``rho_+(k), rho_-(k)`` follow in closed form from the noisy label
       co-occurrence and the clean selection (:func:`estimate_flip_rates`, formula there).
    3. Afterwards every label's loss is importance-reweighted by
       ``p(y~|x) / (T^T [1 - p, p])_{y~}`` (:func:`reweighted_bce_elementwise`), summed over
       labels and averaged over the batch. The estimate is fixed (``reestimate=False``), as in
       Li et al., who estimate T once and then train with it; we keep training the same model.

    The estimator assumes labels flip independently given their own class (true for random
    flipping); mislabelling (Eq. 11 of BalanceMix) couples a lost positive with a gained one,
    and single-positive labels have ``rho_+`` far above ``max_flip_rate``.

    Options (``method_options.NAME=value``):
        warmup_epochs: default ``cfg.warmup_epochs``.
        clean_threshold: GMM posterior above which a label is clean (default 0.5).
        min_clean: selected labels of each polarity a class needs (default 5).
        max_flip_rate: clip of the estimates (default 0.49).
        min_z: a class needs a label dependence this many standard errors strong (default 0:
            off, as in the paper; e.g. 4 keeps classes with no significant correlation at
            rates 0, i.e. plain BCE).
        reestimate: re-estimate after every later epoch too (default False).

    Logged: ``te_estimated`` (0/1), ``te_rho_pos_mean`` / ``te_rho_neg_mean``, ``te_valid``
    (classes with an estimate) and, with injected noise, ``te_rho_pos_mae`` /
    ``te_rho_neg_mae`` against the empirical flip rates of the injected noise.
    """

    name = "testimator"
    option_names = ("warmup_epochs", "clean_threshold", "min_clean", "max_flip_rate", "min_z", "reestimate")

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.warmup_epochs = int_option(self.options, "warmup_epochs", int(cfg.warmup_epochs), low=0)
        self.clean_threshold = float_option(self.options, "clean_threshold", 0.5, low=0.0, high=1.0)
        self.min_clean = int_option(self.options, "min_clean", 5, low=1)
        self.max_flip_rate = float_option(self.options, "max_flip_rate", 0.49, low=0.0, high=1.0, high_open=True)
        self.min_z = float_option(self.options, "min_z", 0.0, low=0.0)
        self.reestimate = bool_option(self.options, "reestimate", False)
        k = ctx.num_classes
        self.rho_pos = torch.zeros(k, dtype=torch.float64)
        self.rho_neg = torch.zeros(k, dtype=torch.float64)
        self.valid = torch.zeros(k, dtype=torch.bool)
        self.estimated_epoch = -1
        if self.estimate_epoch >= cfg.epochs:
            _logger.warning(
                "testimator: warm-up (%d epochs) covers the whole run (%d epochs): no flip rates "
                "will be estimated and the run is plain Mixup with BCE", self.warmup_epochs, cfg.epochs,
            )

    @property
    def estimate_epoch(self) -> int:
        """0-based epoch after which the flip rates are first estimated."""
        return max(self.warmup_epochs, 1) - 1

    @property
    def estimated(self) -> bool:
        return self.estimated_epoch >= 0

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        if not self.estimated:
            return bce_elementwise(logits, targets).sum(1).mean()
        return reweighted_bce_elementwise(logits, targets, self.rho_pos, self.rho_neg).sum(1).mean()

    @torch.no_grad()
    def training_probs(self) -> Tensor:
        """``(N, K)`` probabilities of the training set (evaluation transform, network in eval)."""
        ctx = self.ctx
        if ctx.predict is None or ctx.train_set is None:
            raise ValueError("testimator needs a MethodContext with train_set and predict")
        dataset = copy.copy(ctx.train_set)
        dataset.transform = ctx.eval_transform
        probs, _ = ctx.predict(ctx.model, dataset)
        ctx.model.train()
        return probs

    def estimate(self, probs: Tensor) -> None:
        """Select clean labels from ``probs`` and estimate the flip rates (step 2)."""
        cfg = self.cfg
        given = self.ctx.given_labels
        clean = select_clean(probs, given, threshold=self.clean_threshold,
                             **gmm_options(cfg.balancemix_options().to_dict()))
        self.rho_pos, self.rho_neg, self.valid = estimate_flip_rates(
            given, clean, min_clean=self.min_clean, max_rate=self.max_flip_rate, min_z=self.min_z
        )
        n_bad = int((~self.valid).sum())
        if n_bad:
            _logger.info("testimator: %d of %d classes have no flip-rate estimate (rates 0)", n_bad, len(self.valid))

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        if epoch == self.estimate_epoch or (self.reestimate and epoch > self.estimate_epoch):
            self.estimate(self.training_probs())
            self.estimated_epoch = epoch
        out: dict[str, Any] = {"te_estimated": int(self.estimated)}
        if self.estimated:
            out.update(
                te_rho_pos_mean=float(self.rho_pos.mean()), te_rho_neg_mean=float(self.rho_neg.mean()),
                te_valid=int(self.valid.sum()),
            )
            ctx = self.ctx
            if ctx.true_labels_known:
                true_pos, true_neg = true_flip_rates(ctx.given_labels, ctx.clean_labels)
                out["te_rho_pos_mae"] = float((self.rho_pos - true_pos).abs().nanmean())
                out["te_rho_neg_mae"] = float((self.rho_neg - true_neg).abs().nanmean())
        return out

    def state_dict(self) -> dict[str, Any]:
        return dict(
            super().state_dict(), rho_pos=self.rho_pos.clone(), rho_neg=self.rho_neg.clone(),
            valid=self.valid.clone(), estimated_epoch=self.estimated_epoch,
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        k = len(self.rho_pos)
        for key in ("rho_pos", "rho_neg", "valid"):
            value = state_dict.get(key)
            if not isinstance(value, Tensor) or value.shape != (k,):
                raise ValueError(f"T-estimator state needs {key!r} of shape ({k},)")
        self.rho_pos = state_dict["rho_pos"].double().cpu().clone()
        self.rho_neg = state_dict["rho_neg"].double().cpu().clone()
        self.valid = state_dict["valid"].bool().cpu().clone()
        self.estimated_epoch = int(state_dict.get("estimated_epoch", -1))
