"""Validation of a run: sigmoid scores of a data set (rows gathered under DDP) and the mAP
figures of all classes and of each class group."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..metrics import group_mean_average_precision
from ..utils import autocast
from .distributed import gather_rows

__all__ = ["predict", "MapFigures"]

#: The run's log channel (one name for the whole trainer: log filters use it).
_logger = logging.getLogger("balancemix_timm.trainer")


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, *, num_classes: int, device: torch.device, batch_size: int,
    workers: int = 0, amp: bool = False, rank: int = 0, world_size: int = 1,
) -> tuple[Tensor, Tensor]:
    """Sigmoid scores and targets of ``dataset``, in order.

    The model is put in eval mode (and left there). Under DDP each rank scores every
    ``world_size``-th item and the rows are all-reduced, so every rank returns all of them.

    Args:
        model: The classifier.
        dataset: Items ``(image, target, index)``.
        num_classes: ``K`` (the width of empty results).
        device: Where the model runs.
        batch_size, workers: Of the DataLoader.
        amp: mixed precision (:func:`~balancemix_timm.utils.autocast`).
        rank, world_size: This process's DDP rank and the number of ranks.

    Returns:
        ``(scores, targets)``, both ``(len(dataset), K)`` float32 on the host.
    """
    model.eval()
    n = len(dataset)
    positions = torch.arange(rank, n, world_size)
    part = Subset(dataset, positions.tolist()) if world_size > 1 else dataset
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers)
    scores, targets = [], []
    for x, y, _ in loader:
        with autocast(device, amp):
            logits = model(x.to(device, non_blocking=True))
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(y.float())
    s = torch.cat(scores) if scores else torch.empty(0, num_classes)
    t = torch.cat(targets) if targets else torch.empty(0, num_classes)
    if world_size > 1:
        s, t = gather_rows(s, t, positions, n, device)
    return s, t


class MapFigures:
    """mAP (x100) of all classes and of each class group that can be scored.

    A group is left out when it holds no class (``group_absent``) or when none of its classes
    has a positive validation label; the reason is logged once per key.

    Args:
        groups: Group name -> ``(G,)`` class indices.
        group_absent: Group name -> why it has no class (groups left out of every row).
        ignore: ``(N_val, K)`` bool mask of validation labels left out of every AP (VOC's
            difficult-only labels), or None.
    """

    def __init__(self, groups: Mapping[str, Tensor], group_absent: Mapping[str, str],
                 ignore: Tensor | None = None) -> None:
        self.groups = groups
        self.group_absent = group_absent
        self.ignore = ignore
        self._absent_logged: set[str] = set()

    def __call__(self, scores: Tensor, targets: Tensor, prefix: str = "") -> dict[str, float]:
        """Figures ``{prefix}mAP`` and ``{prefix}mAP_<group>`` of ``(N_val, K)`` scores and targets."""
        figures = group_mean_average_precision(scores, targets, self.groups, self.ignore)
        out = {f"{prefix}mAP": figures.pop("all")}
        for name, value in figures.items():
            idx = self.groups[name]
            key = f"{prefix}mAP_{name}"
            if math.isnan(value):
                if key not in self._absent_logged:
                    self._absent_logged.add(key)
                    reason = self.group_absent.get(name) or (
                        f"absent: none of its {len(idx)} classes has a positive validation label"
                    )
                    _logger.info("%s %s", key, reason)
                continue
            out[key] = value
        return out
