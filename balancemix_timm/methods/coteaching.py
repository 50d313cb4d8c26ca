"""Co-teaching baseline (Han et al., NeurIPS 2018) in a multi-label form, on Mixup batches."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_finite, check_ndim, check_same_shape, check_tensor, check_unit_interval
from ..loss import bce_elementwise
from ._options import choice_option, float_option, int_option
from .base import MixupMethod
from .context import MethodContext

__all__ = [
    "SELECTIONS",
    "CoTeachingMethod",
    "coteaching_forget_rate",
    "num_remember",
    "small_loss_selection",
    "coteaching_losses",
]


SELECTIONS = ("instance", "label")
"""Multi-label forms of the small-loss selection: whole instances by their summed BCE, or the
entries of each class column separately."""

#: Stream of :func:`~balancemix_timm.utils.epoch_seed` for the second network's initialisation.
_INIT_STREAM = 0xC07E


def coteaching_forget_rate(epoch: int, *, forget_rate: float, num_gradual: int) -> float:
    """``R(t) = forget_rate * min(t / T_k, 1)`` (Han et al. 2018, Sec. 3), ``t`` = ``epoch``.

    ``epoch`` is the 0-based epoch index (the number of completed epochs), so the first epoch
    keeps the whole batch and the full forget rate is reached after ``T_k = num_gradual``
    epochs. ``num_gradual = 0`` uses the full rate from the start.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if num_gradual < 0:
        raise ValueError(f"num_gradual must be >= 0, got {num_gradual}")
    check_unit_interval(forget_rate, "forget_rate")
    if num_gradual == 0:
        return float(forget_rate)
    return float(forget_rate) * min(epoch / num_gradual, 1.0)


def num_remember(n: int, remember_rate: float) -> int:
    """How many of ``n`` candidates are kept: ``floor((1 - R(t)) n)`` as in Co-teaching's code,
    at least 1 (a rounding guard of 1e-9 keeps e.g. ``0.7 * 10`` at 7)."""
    check_unit_interval(remember_rate, "remember_rate")
    return max(1, min(n, math.floor(remember_rate * n + 1e-9)))


def small_loss_selection(losses: Tensor, remember_rate: float, *, selection: str = "instance") -> Tensor:
    """The small-loss set of one network (the "small-loss trick" of Co-teaching).

    Args:
        losses: ``(B, K)`` element-wise losses of the network (not modified; no gradient used).
        remember_rate: ``1 - R(t)``, the fraction kept.
        selection: ``"instance"``: the ``num_remember(B)`` instances with the smallest summed
            loss ``sum_k losses[i, k]``; ``"label"``: in every class column, the
            ``num_remember(B)`` entries with the smallest loss.

    Returns:
        Bool mask, ``(B,)`` for ``"instance"`` and ``(B, K)`` for ``"label"``. Ties are broken
        by batch position (stable sort).
    """
    losses = check_tensor(losses, "losses")
    check_ndim(losses, "losses", 2)
    check_finite(losses, "losses")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    b = losses.shape[0]
    keep = num_remember(b, remember_rate)
    values = losses.detach()
    if selection == "instance":
        order = torch.argsort(values.sum(1), stable=True)
        mask = torch.zeros(b, dtype=torch.bool, device=losses.device)
        mask[order[:keep]] = True
        return mask
    order = torch.argsort(values, dim=0, stable=True)
    mask = torch.zeros_like(values, dtype=torch.bool)
    mask.scatter_(0, order[:keep], True)
    return mask


def _reduce(losses: Tensor, keep: Tensor) -> Tensor:
    if keep.ndim == 1:  # instances: mean over the kept instances of the summed loss
        return losses.sum(1)[keep].mean()
    # labels: every column keeps the same number n of entries; sum / n = per-sample sum scale
    n = keep[:, 0].sum().clamp(min=1)
    return (losses * keep).sum() / n


def coteaching_losses(
    losses_1: Tensor, losses_2: Tensor, remember_rate: float, *, selection: str = "instance"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cross-update losses of Co-teaching (Algorithm 1 of Han et al. 2018, steps 4-6).

    Each network picks its small-loss set; the *other* network is updated on it.

    Args:
        losses_1: ``(B, K)`` element-wise losses of network 1 (with gradient).
        losses_2: ``(B, K)`` element-wise losses of network 2 (with gradient).
        remember_rate: ``1 - R(t)``.
        selection: ``"instance"`` or ``"label"`` (see :func:`small_loss_selection`).

    Returns:
        ``(update_1, update_2, keep_1, keep_2)``: the scalar loss that updates network 1 (its
        own losses on the set ``keep_2`` chosen by network 2), the loss that updates network 2
        (on ``keep_1``), and the two selection masks. Instance selection: mean over the kept
        instances of the per-instance summed loss; label selection: the sum over kept entries
        divided by the number kept per column (the same per-sample-sum scale).
    """
    losses_1 = check_tensor(losses_1, "losses_1")
    losses_2 = check_tensor(losses_2, "losses_2")
    check_same_shape(losses_1, "losses_1", losses_2, "losses_2")
    keep_1 = small_loss_selection(losses_1, remember_rate, selection=selection)
    keep_2 = small_loss_selection(losses_2, remember_rate, selection=selection)
    return _reduce(losses_1, keep_2), _reduce(losses_2, keep_1), keep_1, keep_2


class CoTeachingMethod(MixupMethod):
    """Co-teaching: B. Han et al., "Co-teaching: Robust Training of Deep Neural Networks with
    Extremely Noisy Labels", NeurIPS 2018.

    Two networks are trained at once on the same Mixup batches (two random streams, as for
    every baseline of the BalanceMix paper). In every step each network ranks the batch by its
    own BCE loss against the mixed targets, keeps the small-loss fraction ``1 - R(t)`` and
    hands it to its peer, which is updated on that set only. ``R(t) = forget_rate *
    min(t / T_k, 1)`` grows linearly per epoch (:func:`coteaching_forget_rate`).

    Network 1 is the context's model (validated, EMA-tracked and saved as ``best.pth``);
    network 2 comes from the same ``create_model`` call with another initialisation seed
    (with ``pretrained_path`` only the heads differ) and is declared in :meth:`extra_modules`,
    so the trainer's optimiser and schedule train it too (per-parameter updates: the same
    steps as an optimiser of its own with the same recipe; gradients clipped per network).
    Its weights live in the method's checkpoint state, its optimiser state in the trainer's,
    so a resumed run continues exactly.

    One step returns ``update_1 + update_2``: ``update_1`` depends on network 1's parameters
    only and ``update_2`` on network 2's (each network's selection is made without gradient),
    so one backward of the sum gives each network exactly the gradient of its own update loss
    (the sum's backward passes the unit gradient to each term unchanged).

    Multi-label form (open in the paper, option ``selection``):

    - ``"instance"`` (default): an instance's loss is its BCE summed over the labels; whole
      instances are kept or dropped, as in the original single-label algorithm.
    - ``"label"``: each class column is ranked separately and its ``1 - R(t)`` smallest-loss
      entries are kept (label-wise selection; rare classes keep their share).

    Options (``method_options.NAME=value``):
        forget_rate: final ``R`` (default: ``cfg.noise_rate`` for mislabelling / random
            flipping with a non-zero rate, as Han et al. set it to the noise rate; otherwise
            0.2, since the rate is then unknown).
        num_gradual: ``T_k`` in epochs (default 10, Han et al.).
        selection: ``"instance"`` (default) or ``"label"``.

    Logged per epoch: ``ct_forget_rate`` and, with injected noise, ``ct_kept_clean`` /
    ``ct_batch_clean``: the fraction of entries kept by network 1 (instance selection: of
    instances) whose random-stream labels are noise-free, against that fraction in the batches.
    The training loss reported is network 1's update loss (on the set network 2 kept).
    """

    name = "coteaching"
    option_names = ("forget_rate", "num_gradual", "selection")

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        known = cfg.noise in ("mislabel", "random_flip") and cfg.noise_rate > 0
        self.forget_rate = float_option(self.options, "forget_rate", cfg.noise_rate if known else 0.2,
                                        low=0.0, high=1.0)
        self.num_gradual = int_option(self.options, "num_gradual", 10, low=0)
        self.selection = choice_option(self.options, "selection", "instance", SELECTIONS)
        self.model2 = self._build_second_model()
        self.ddp_model2: nn.Module = self.model2
        if ctx.world_size > 1:
            dev = ctx.device
            self.ddp_model2 = nn.parallel.DistributedDataParallel(
                self.model2, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        self._update_1: Tensor | None = None
        self._noisy_rows: Tensor | None = None
        self._reset_counters()

    def _build_second_model(self) -> nn.Module:
        from ..models import create_model
        from ..utils import epoch_seed

        cfg = self.cfg
        # A forked RNG: the second initialisation leaves the global generators untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(cfg.seed, 0, _INIT_STREAM))
            model = create_model(
                cfg.model, num_classes=self.ctx.num_classes, head=cfg.head,
                pretrained_path=self.ctx.pretrained_path, drop_rate=cfg.drop_rate,
            )
        model = model.to(self.ctx.device)
        return model.to(memory_format=torch.channels_last) if cfg.channels_last else model

    # ---------------------------------------------------------------- schedule
    @property
    def current_forget_rate(self) -> float:
        """``R(t)`` of the current epoch."""
        return coteaching_forget_rate(self.epoch, forget_rate=self.forget_rate, num_gradual=self.num_gradual)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.model2.train()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._kept_clean = self._kept = self._seen_clean = self._seen = 0.0

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: Any) -> Tensor:
        targets = self.mixed_targets(batch)
        losses_1 = bce_elementwise(self.forward(batch.input), targets)
        losses_2 = bce_elementwise(self.forward(batch.input, model=self.ddp_model2), targets)
        update_1, update_2, keep_1, _ = coteaching_losses(
            losses_1, losses_2, 1.0 - self.current_forget_rate, selection=self.selection
        )
        self._count(batch.index_r, keep_1)
        self._update_1 = update_1.detach()
        return update_1 + update_2

    def logged_loss(self, loss: Tensor) -> Tensor:
        """Network 1's update loss of the last step (not the sum that is back-propagated)."""
        return loss.detach() if self._update_1 is None else self._update_1

    def extra_modules(self) -> list[nn.Module]:
        """Network 2 (trained by the trainer's optimiser alongside network 1)."""
        return [self.model2]

    def _count(self, index_r: Tensor, keep: Tensor) -> None:
        ctx = self.ctx
        if not ctx.true_labels_known:
            return
        if self._noisy_rows is None:
            self._noisy_rows = (ctx.given_labels != ctx.clean_labels).to(ctx.device)
        wrong = self._noisy_rows[index_r.to(ctx.device)]
        clean = ~wrong.any(1) if keep.ndim == 1 else ~wrong
        self._seen += float(clean.numel())
        self._seen_clean += float(clean.sum())
        self._kept += float(keep.sum())
        self._kept_clean += float((clean & keep).sum())

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ct_forget_rate": self.current_forget_rate}
        if self._seen:
            out["ct_kept_clean"] = self._kept_clean / max(self._kept, 1.0)
            out["ct_batch_clean"] = self._seen_clean / self._seen
        return out

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), model2=self.model2.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "model2" not in state_dict:
            raise ValueError("co-teaching state has no 'model2' (checkpoint of another method?)")
        self.model2.load_state_dict(state_dict["model2"])
