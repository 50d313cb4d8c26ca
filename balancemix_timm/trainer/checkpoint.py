"""Checkpoints of a run: what ``last.pth`` holds and how a run resumes from it."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LOCATION_KEYS, TrainConfig, config_diff
from ..methods import TrainingMethod
from ..models.checkpoints import TRAIN_CHECKPOINT_FORMAT, check_checkpoint_file, check_checkpoint_format
from ..sampling import ShardedRandomSampler
from ..utils import ModelEma, rng_state

__all__ = ["CheckpointMixin", "run_dir_of", "check_run_files"]

#: The run's log channel (one name for the whole trainer: log filters use it).
_logger = logging.getLogger("balancemix_timm.trainer")


def run_dir_of(cfg: TrainConfig, run_dir: str | Path | None = None) -> Path:
    """The run folder: ``run_dir`` if given, else ``<output_dir>/<run_name>`` (by default
    ``<method>-<noise><rate>-s<seed>``)."""
    if run_dir is not None:
        return Path(run_dir)
    name = cfg.run_name or f"{cfg.method}-{cfg.noise}{cfg.noise_rate:g}-s{cfg.seed}"
    return Path(cfg.output_dir) / name


def _resume_advice(path: Path) -> str:
    """What to do about a damaged checkpoint ``path`` of a run folder."""
    best = path.parent / "best.pth"
    fresh = "delete it and run again without --resume (or with --resume auto) to start the run afresh"
    if best.is_file() and best != path:
        return (f"the run cannot continue from it; {fresh}, or start a new run from its best weights with "
                f"pretrained_path={best}")
    return f"the run cannot continue from it; {fresh}"


def check_run_files(cfg: TrainConfig, resume: str | Path | None = None,
                    run_dir: str | Path | None = None) -> Path | None:
    """Check the checkpoint files a run reads, before its data set and model are built.

    Args:
        cfg: The configuration; a ``pretrained_path`` file (not ``offline``) is checked.
        resume: A checkpoint to continue from, ``"auto"`` (the run folder's ``last.pth`` if
            there is one) or None.
        run_dir: The run folder (default :func:`run_dir_of`).

    Returns:
        The checkpoint to resume from, or None.

    Raises:
        FileNotFoundError: ``resume`` or ``pretrained_path`` names no file.
        ValueError: a file is empty, cut short or no checkpoint
            (:func:`~balancemix_timm.models.check_checkpoint_file`); the message names it and
            says what to do.
    """
    from ..pretrain import OFFLINE

    if cfg.pretrained_path is not None and str(cfg.pretrained_path) != OFFLINE:
        check_checkpoint_file(cfg.pretrained_path, name="config pretrained_path",
                              advice="pass an intact file, or pretrained_path=null to train from scratch")
    if resume is None:
        return None
    if str(resume) == "auto":
        resume = run_dir_of(cfg, run_dir) / "last.pth"
        if not resume.is_file():
            return None
    path = Path(resume)
    return check_checkpoint_file(path, name="resume checkpoint", advice=_resume_advice(path))


class CheckpointMixin:
    """Checkpoint state of the :class:`~balancemix_timm.trainer.core.Trainer`.

    Reads and restores the trainer's ``cfg``, ``model``, ``optimizer``, ``scheduler``,
    ``scaler``, ``ema``, ``method``, ``train_sampler``, ``given_labels``, ``best``, ``metrics``
    and ``start_epoch``. The optimiser state covers every trained network (the model and the
    method's extra networks); the method saves their weights in its own state.
    """

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    method: TrainingMethod
    train_sampler: ShardedRandomSampler | None
    given_labels: Tensor
    best: dict[str, Any]
    metrics: list[dict[str, Any]]
    start_epoch: int

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The checkpoint after ``epoch`` (0-based): everything :meth:`load_checkpoint` restores."""
        return dict(
            format=TRAIN_CHECKPOINT_FORMAT,
            epoch=epoch,
            config=self.cfg.to_dict(),
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            method=self.method.state_dict(),
            train_sampler=self.train_sampler.state_dict() if self.train_sampler is not None else None,
            given_labels=self.given_labels,
            best=self.best,
            metrics=self.metrics,
            rng=rng_state(),
        )

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from ``path``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: a damaged or incomplete file, not a training checkpoint, or one of
                another configuration or of other labels (files that moved, the
                :data:`~balancemix_timm.config.LOCATION_KEYS`, only warn).
        """
        path = check_checkpoint_file(path, name="resume checkpoint", advice=_resume_advice(Path(path)))
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except (EOFError, RuntimeError, pickle.UnpicklingError) as err:
            raise ValueError(
                f"resume checkpoint {str(path)!r} is damaged or incomplete ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'it ends early'}): {_resume_advice(path)}"
            ) from err
        check_checkpoint_format(ckpt, TRAIN_CHECKPOINT_FORMAT, path, what="balancemix-train checkpoint")
        diff = config_diff(ckpt["config"], self.cfg.to_dict())
        changed = {k: v for k, v in diff.items() if k not in LOCATION_KEYS}
        if changed:
            pretty = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"checkpoint {path} was written with another configuration: {pretty}")
        if diff:
            # files that moved: the labels they give are checked to be the checkpoint's below
            _logger.warning(
                "resuming %s with data or weights at other locations: %s", path,
                "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items()),
            )
        if not torch.equal(ckpt["given_labels"], self.given_labels):
            raise ValueError(f"checkpoint {path} was trained on different labels (data set or noise seed changed)")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt["ema"] is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.method.load_state_dict(ckpt["method"])
        if self.train_sampler is not None and ckpt["train_sampler"] is not None:
            self.train_sampler.load_state_dict(ckpt["train_sampler"])
        self.best = dict(ckpt["best"])
        self.metrics = list(ckpt["metrics"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        _logger.info("resumed from %s at epoch %d", path, self.start_epoch)
