"""The patched ML-Decoder script's checkpoint: its model, EMA, optimiser, schedule, scaler and
the plugin's state in one atomic ``balancemix-last.pth``."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.checkpoints import ML_DECODER_CHECKPOINT_FORMAT, check_checkpoint_file, check_checkpoint_format
from ..utils import atomic_save

__all__ = ["Attached", "ScriptCheckpoint", "CHECKPOINT_NAME", "check_resume_file"]

_logger = logging.getLogger("balancemix_timm.integrations.ml_decoder")

CHECKPOINT_NAME = "balancemix-last.pth"


class Attached:
    """The training objects of the script that the plugin saves and restores."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.ema: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None



#: What to do about a damaged ``--bm-resume`` file.
RESUME_ADVICE = (
    "the run cannot continue from it; delete it and start the run afresh without --bm-resume, or pass "
    "ML-Decoder's own best model file as the pre-trained weights of a new run"
)


def check_resume_file(path: str | os.PathLike[str]) -> Path:
    """``path`` after checking that it is a complete checkpoint file (cheap: its directory only).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is empty or cut short; the message names it and says what to do.
    """
    return check_checkpoint_file(path, name="--bm-resume", advice=RESUME_ADVICE)


def _damaged(path: Path, err: BaseException) -> ValueError:
    reason = str(err).splitlines()[0] if str(err) else "it ends early"
    return ValueError(f"--bm-resume {str(path)!r} is damaged or incomplete ({type(err).__name__}: {reason}): "
                      f"{RESUME_ADVICE}")


class ScriptCheckpoint:
    """Checkpoint methods of :class:`~balancemix_timm.integrations.ml_decoder_plugin.BalanceMixPlugin`.

    Uses the plugin's ``_attached`` (:class:`Attached`), ``checkpoint_dir``, ``state_dict`` and
    ``load_state_dict``.
    """

    _attached: Attached
    checkpoint_dir: Path | None
    _warned_dir: bool

    def state_dict(self) -> dict[str, Any]:  # pragma: no cover - provided by the plugin
        raise NotImplementedError

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def checkpoint(self, epoch: int, highest_map: float | None = None) -> dict[str, Any]:
        """Everything needed to resume after ``epoch``: attached objects and our state."""
        a = self._attached
        out: dict[str, Any] = dict(
            format=ML_DECODER_CHECKPOINT_FORMAT,
            epoch=int(epoch) + 1,
            highest_mAP=None if highest_map is None else float(highest_map),  # ML-Decoder's is numpy
            balancemix=self.state_dict(),
        )
        for name in ("model", "ema", "optimizer", "scheduler", "scaler"):
            obj = getattr(a, name)
            if obj is not None:
                out[name] = obj.state_dict()
        return out

    def save_checkpoint(
        self, epoch: int, highest_map: float | None = None, path: str | os.PathLike[str] | None = None
    ) -> Path | None:
        """Write :meth:`checkpoint` atomically to ``path`` or ``<checkpoint_dir>/balancemix-last.pth``.

        Returns:
            The path written, or ``None`` when no checkpoint folder is set or it does not exist
            (ML-Decoder's own saves are skipped silently then; this logs one warning).
        """
        if path is None:
            if self.checkpoint_dir is None:
                return None
            if not self.checkpoint_dir.is_dir():
                if not self._warned_dir:
                    _logger.warning("checkpoint folder %s does not exist: no BalanceMix checkpoint is "
                                    "written (create it, or set --bm-checkpoint-dir)", self.checkpoint_dir)
                    self._warned_dir = True
                return None
            path = self.checkpoint_dir / CHECKPOINT_NAME
        atomic_save(self.checkpoint(epoch, highest_map), path)
        return Path(path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> tuple[int, float]:
        """Restore a :meth:`save_checkpoint` file into the attached objects and this plugin.

        Returns:
            ``(start_epoch, highest_mAP)``.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: a damaged or incomplete file (:func:`check_resume_file`), or not a
                checkpoint of the patched script.
        """
        path = check_resume_file(path)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # older schedulers pickle functions
            _logger.warning("weights-only load of %s failed (%s); loading it fully", path, err)
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
            except (EOFError, RuntimeError, pickle.UnpicklingError) as full_err:
                raise _damaged(path, full_err) from full_err
        except (EOFError, RuntimeError) as err:
            raise _damaged(path, err) from err
        check_checkpoint_format(ckpt, ML_DECODER_CHECKPOINT_FORMAT, path,
                                what="BalanceMix checkpoint of the patched ML-Decoder script")
        a = self._attached
        for name in ("model", "ema", "optimizer", "scheduler", "scaler"):
            obj = getattr(a, name)
            if obj is None:
                continue
            if name not in ckpt:
                raise ValueError(f"{path} holds no {name} state")
            obj.load_state_dict(ckpt[name])
        self.load_state_dict(ckpt["balancemix"])
        start = int(ckpt["epoch"])
        best = ckpt.get("highest_mAP")
        _logger.info("resumed from %s: next epoch %d", path, start)
        return start, (0 if best is None else best)
