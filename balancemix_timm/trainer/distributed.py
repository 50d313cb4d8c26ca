"""torch.distributed plumbing of a run: rank and world size, initialisation under torchrun, and
the all-reduce that assembles per-rank rows."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..config import TrainConfig
from ..utils import resolve_device

__all__ = ["dist_info", "init_distributed", "gather_rows"]


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(cfg: TrainConfig) -> None:
    """Initialise torch.distributed under torchrun (NCCL on GPUs, gloo on CPU).

    A no-op outside torchrun (no ``RANK`` / ``WORLD_SIZE``), for one process, or when a process
    group exists already. On CUDA each process takes the GPU ``LOCAL_RANK`` and ``cfg.device``
    is set to it.
    """
    import torch.distributed as dist

    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return
    if int(os.environ["WORLD_SIZE"]) <= 1:
        return
    use_cuda = resolve_device(cfg.device).type == "cuda"
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        cfg.device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def gather_rows(s: Tensor, t: Tensor, positions: Tensor, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """All-reduce per-rank rows into full tables.

    Args:
        s, t: ``(M, K)`` rows of this rank (scores and targets).
        positions: ``(M,)`` their row indices among ``n``; every row belongs to exactly one rank.
        n: Number of rows in all.
        device: The training device (NCCL reduces there; gloo on the host).

    Returns:
        ``(n, K)`` float32 scores and targets on the host.
    """
    import torch.distributed as dist

    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    k = s.shape[1]
    full = torch.zeros(2, n, k, dtype=torch.float64, device=comm)
    full[0, positions.to(comm)] = s.double().to(comm)
    full[1, positions.to(comm)] = t.double().to(comm)
    dist.all_reduce(full)
    return full[0].float().cpu(), full[1].float().cpu()
