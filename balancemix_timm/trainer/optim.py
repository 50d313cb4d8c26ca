"""Optimiser, learning-rate schedule and step count of a run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..config import TrainConfig
from ..sampling import num_batches

__all__ = ["steps_per_epoch", "build_optimizer"]


def steps_per_epoch(cfg: TrainConfig, num_items: int, world_size: int) -> int:
    """Training steps per epoch and rank: the batches of a one-sample tail merged away.

    Every rank has the same share ``ceil(num_items / world_size)``, so every rank takes the
    same number of steps; ``cfg.max_steps_per_epoch`` caps it.

    Raises:
        ValueError: a rank would train on one sample per epoch (a batch of one).
    """
    per_rank = math.ceil(num_items / world_size)
    if per_rank < 2:
        raise ValueError(
            f"the training set of {num_items} images gives {per_rank} image per rank and epoch on "
            f"{world_size} rank(s): a training batch of one sample (batch_size="
            f"{cfg.batch_size}) breaks BatchNorm; use more images or fewer ranks"
        )
    # A one-sample tail joins the batch before it (TailMergingBatchSampler).
    steps = num_batches(per_rank, cfg.batch_size, merge_single_tail=True)
    if cfg.max_steps_per_epoch:
        steps = min(steps, int(cfg.max_steps_per_epoch))
    return steps


def build_optimizer(
    cfg: TrainConfig, modules: Sequence[nn.Module], total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """One optimiser over the trainable parameters of ``modules`` and its per-step schedule.

    Two parameter groups: weight decay ``cfg.weight_decay`` on parameters of 2 or more
    dimensions, none on 1-D ones (biases, norms); within each, the modules' parameters in
    order. Every update rule here is per parameter, so one optimiser over several networks
    steps each exactly as an optimiser of its own with the same recipe would.

    Args:
        cfg: ``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``scheduler``,
            ``onecycle_pct_start``.
        modules: The networks to train.
        total_steps: Steps of the whole run (the schedule's span; at least 1 is used).

    Returns:
        ``(optimizer, scheduler)``; the scheduler is None for a constant learning rate and is
        stepped once per optimiser step.
    """
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    total = max(1, int(total_steps))
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if cfg.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
    elif cfg.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                    pct_start=cfg.onecycle_pct_start)
    return opt, sched
