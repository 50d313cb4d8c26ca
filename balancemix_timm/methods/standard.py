"""The paper's default (plain BCE, Eq. 1) and BalanceMix itself as trainer methods."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..engine import BalanceMixEngine
from ..label_issues import write_label_issues
from ..loss import bce_elementwise
from ..metrics import label_precision_recall, relabel_statistics
from ..recipe import BalanceMixRecipe
from ..refine import LabelState
from ..sampling import PairedSampler
from ..utils import EPOCH_PASS_STREAM
from .base import MixupMethod, TrainingMethod
from .context import MethodContext

__all__ = ["BCEMethod", "MixupBCEMethod", "BalanceMixMethod"]

_logger = logging.getLogger(__name__)


class BCEMethod(TrainingMethod):
    """The paper's Default: BCE (Eq. 1) summed over labels, averaged over the batch.

    RandAugment (the trainer's train transform) and no Mixup, as in the paper's tables.
    """

    name = "bce"
    paired = False

    def training_step(self, batch: Any) -> Tensor:
        x, y = batch[0], batch[1].to(self.ctx.device).float()
        logits = self.forward(x)
        return bce_elementwise(logits, y).sum(1).mean()


class MixupBCEMethod(MixupMethod):
    """Plain Mixup (two random streams) with BCE: Table 5's "+ Random Sampler" row."""

    name = "mixup"

    def mixed_loss(self, logits: Tensor, targets: Tensor, batch: Any) -> Tensor:
        return bce_elementwise(logits, targets).sum(1).mean()


class BalanceMixMethod(TrainingMethod):
    """BalanceMix (Alg. 1): minority-augmented mixing + label-wise management.

    The engine (:class:`~balancemix_timm.engine.BalanceMixEngine`) holds the per-sample state. The
    predictions it needs (f(x) of Eq. 2 and 6, and the two views of Eq. 9) come from
    ``cfg.label_source``:

    - ``"views"`` (default): every training item carries ``num_views`` extra RandAugment views;
      after each optimiser step the random batch's views are forwarded without gradient in
      eval mode and recorded. The random sampler is a permutation, so every sample is
      recorded once per epoch, with the weights of the moment it was drawn.
    - ``"epoch_pass"``: after the epoch, a separate no-grad pass over the whole training set
      with ``num_views`` views per sample, all with the epoch's final weights.

    Cost of the views (see ``docs/performance.md``): with ``label_source="views"`` the no-grad
    forwards of ``num_views`` views of the random batch cost about as much as the training
    forward + backward itself. ``cfg.view_fraction = f < 1`` forwards the views of only the
    first ``ceil(f B)`` instances of each random batch (a uniformly random subset, since the
    random sampler is a fresh permutation every epoch); the others keep their last record, so
    each sample is re-recorded every ``1 / f`` epochs on average. ``num_views=1`` halves the
    cost while keeping every record fresh (one view instead of Eq. 9's mean of two).

    The engine's tables live on the training device (no per-step host-device copies).
    """

    name = "balancemix"
    paired = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.recipe = BalanceMixRecipe(ctx.given_labels, cfg.balancemix_options(), seed=cfg.seed,
                                       num_replicas=ctx.world_size, rank=ctx.rank, device=ctx.device,
                                       identical_views=ctx.unaugmented_training)
        if cfg.label_source == "epoch_pass" and ctx.build_view_set is None:
            raise ValueError("label_source='epoch_pass' needs a MethodContext with build_view_set")
        self.view_set = None
        if cfg.label_source == "epoch_pass":
            recipe = self.recipe
            self.view_set = (ctx.build_view_set(1) if recipe.identical_views  # the image stands for every view
                             else ctx.build_view_set(cfg.num_views, image_view=recipe.image_view))

    @property
    def engine(self) -> BalanceMixEngine:
        """The recipe's engine (per-sample state)."""
        return self.recipe.engine

    @property
    def view_time(self) -> float:
        """Seconds spent recording predictions this epoch."""
        return self.recipe.view_time

    @property
    def num_extra_views(self) -> int:
        return self.recipe.num_extra_views

    def extra_view_transforms(self, train_transform: Any, eval_transform: Any) -> list[Any]:
        """``num_views`` RandAugment views, then the un-augmented image with ``confidence_input="image"``;
        the image alone when training is unaugmented (:attr:`MethodContext.unaugmented_training`)."""
        return self.recipe.extra_view_transforms(train_transform, eval_transform)

    @property
    def paired_sampler(self) -> PairedSampler:
        return self.recipe.paired_sampler

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.recipe.set_epoch(epoch)

    def training_step(self, batch: Any) -> Tensor:
        eng = self.engine
        y = eng.mixed_targets(batch.index_r, batch.index_m, batch.lam, device=self.ctx.device)
        logits = self.forward(batch.input)
        return eng.loss(logits, y, batch.index_r)

    def after_step(self, batch: Any) -> None:
        """Record the random batch's views with the weights of this step's update."""
        self.recipe.record_batch(batch, lambda views, count: self.ctx.view_probs(views, count=count))

    def _epoch_pass(self, epoch: int) -> None:
        ctx = self.ctx
        assert self.view_set is not None
        loader = DataLoader(
            self.view_set, batch_size=self.cfg.eval_batch_size,
            sampler=self.recipe.epoch_pass_sampler(len(self.view_set), epoch),
            num_workers=self.cfg.workers, worker_init_fn=ctx.worker_init_fn,
            generator=ctx.loader_generator(epoch, EPOCH_PASS_STREAM),
        )
        self.recipe.record_epoch_pass(((views, index) for views, _, index in loader),
                                      lambda views, count: ctx.view_probs(views, count=count))

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        if self.cfg.label_source == "epoch_pass":
            self._epoch_pass(epoch)
        out: dict[str, Any] = {"view_time": self.view_time}
        report, out["refresh_time"] = self.recipe.end_epoch(epoch)
        out.update({f"lm_{k}": v for k, v in report.as_dict().items() if k != "epoch"})
        out.update(self.label_figures())
        stages = self.diagnostics_stages(epoch)
        if stages and self.cfg.label_diagnostics and self.ctx.is_main:
            self.save_label_diagnostics(epoch, stages)
        return out

    def diagnostics_stages(self, epoch: int) -> list[str]:
        """Which snapshot(s) the refresh that ends ``epoch`` (0-based) is: ``"warmup_end"``
        (the last warm-up epoch, whose refresh decides the first managed epoch's labels)
        and / or ``"last"`` (the last epoch)."""
        stages = []
        if self.cfg.warmup_epochs > 0 and epoch + 1 == self.cfg.warmup_epochs:
            stages.append("warmup_end")
        if epoch + 1 == self.cfg.epochs:
            stages.append("last")
        return stages

    def save_label_diagnostics(self, epoch: int, stages: list[str]) -> Path:
        """Write ``<run_dir>/label_diagnostics/epoch_XXX.npz`` (1-based epoch) from the engine's
        last refresh, without recomputing anything.

        Arrays: ``losses`` (N, K) float32, the BCE losses fed to the 2K GMMs; ``clean_prob``
        (N, K) float32, their p_G; ``probs`` (N, K) float32, the recorded view probabilities;
        ``state`` (N, K) int8 (``state_names``: 0 clean, 1 relabeled, 2 ambiguous);
        ``given_labels``, ``clean_labels``, ``refined_labels`` (N, K) uint8; ``seen`` (N,) bool;
        per group, index ``[l, k]`` = given polarity ``l`` of class ``k``: ``gmm_shift``,
        ``gmm_scale`` (the GMM's normalisation ``z = (loss - shift) / scale``),
        ``gmm_threshold`` (where p_G crosses 0.5, in ``z`` units), ``gmm_threshold_loss`` (same
        in loss units), ``gmm_means`` (2, K, 2) in ``z`` units, ``gmm_fallback``,
        ``gmm_n_samples`` (NaN / empty when no GMM was fitted); scalars ``epoch`` (1-based),
        ``stages``, ``warmup_epochs``, ``epochs``, ``applied``, ``gmm_normalize``,
        ``label_management``, ``method``, ``noise``, ``noise_rate``, ``run_name``.
        """
        import numpy as np

        tr, eng = self.ctx, self.engine
        k = eng.num_classes

        def host(t: Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        gmm = eng.last_gmm
        nan2 = np.full((2, k), np.nan)
        if gmm is not None:
            z = host(gmm.decision_thresholds())
            shift, scale = host(gmm.shift_), host(gmm.scale_)
            extra = dict(gmm_shift=shift, gmm_scale=scale, gmm_threshold=z, gmm_threshold_loss=shift + scale * z,
                         gmm_means=host(gmm.means_), gmm_fallback=host(gmm.fallback_),
                         gmm_n_samples=host(gmm.n_samples_))
        else:
            extra = dict(gmm_shift=nan2, gmm_scale=nan2, gmm_threshold=nan2, gmm_threshold_loss=nan2,
                         gmm_means=np.full((2, k, 2), np.nan), gmm_fallback=np.ones((2, k), bool),
                         gmm_n_samples=np.zeros((2, k), np.int64))
        path = tr.run_dir / "label_diagnostics" / f"epoch_{epoch + 1:03d}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(
            tmp,
            losses=host(eng.losses), clean_prob=host(eng.clean_prob), probs=host(eng.probs),
            state=host(eng.state), state_names=np.array(["clean", "relabeled", "ambiguous"]),
            given_labels=host(eng.given_labels), clean_labels=host(tr.clean_labels.to(torch.uint8)),
            refined_labels=host(eng.refined_labels), seen=host(eng.seen),
            epoch=np.int64(epoch + 1), stages=np.array(stages), warmup_epochs=np.int64(self.cfg.warmup_epochs),
            epochs=np.int64(self.cfg.epochs), applied=np.bool_(eng.applied),
            gmm_normalize=np.array(str(eng.gmm_options.get("normalize", "minmax"))),
            label_management=np.array(eng.label_management), method=np.array(self.cfg.method),
            noise=np.array(self.cfg.noise), noise_rate=np.float64(self.cfg.noise_rate),
            run_name=np.array(tr.run_dir.name),
            **extra,
        )
        tmp.replace(path)
        return path

    def label_figures(self) -> dict[str, float]:
        """Eq. 12-13 figures of the current label management (needs the true labels)."""
        tr, eng = self.ctx, self.engine
        if not tr.true_labels_known:
            return {}
        state, given, refined = eng.state.cpu(), eng.given_labels.cpu(), eng.refined_labels.cpu()
        precision, recall = label_precision_recall(state == LabelState.CLEAN, given, tr.clean_labels)
        proportion, accuracy = relabel_statistics(state == LabelState.RELABELED, refined, tr.clean_labels)
        return dict(clean_precision=precision, clean_recall=recall,
                    relabel_proportion=proportion, relabel_accuracy=accuracy)

    def finish(self, run_dir: Path) -> dict[str, Any]:
        engine = self.engine.cpu_view()  # the table walk reads single entries: keep it on the host
        return {"label_issues": write_label_issues(engine, self.ctx.train_set, run_dir / "label_issues.csv")}

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), engine=self.recipe.state_dict())

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.recipe.load_state_dict(state_dict["engine"])
