"""Small training utilities: EMA of weights, atomic checkpoints, seeding, devices."""

from __future__ import annotations

import copy
import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from .textfiles import atomic_write

__all__ = [
    "ModelEma",
    "autocast",
    "autocast_dtype",
    "amp_enabled",
    "atomic_save",
    "seed_everything",
    "epoch_seed",
    "resolve_device",
    "available_devices",
    "rng_state",
    "set_rng_state",
    "seed_worker",
    "view_probabilities",
]

_logger = logging.getLogger(__name__)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision of mixed-precision training on ``device``.

    float16 on CUDA (with a gradient scaler), bfloat16 elsewhere (CPU autocast's type: it keeps
    float32's exponent range, so no scaler is needed; AVX-512 BF16 or AMX runs it natively).
    """
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def amp_enabled(amp: bool | None, device: torch.device) -> bool:
    """Whether a run trains in mixed precision.

    Args:
        amp: the ``amp`` setting: True (on any device), False (off), or None (the default:
            on for CUDA only, so CPU runs stay float32 unless asked).
        device: the run's device.
    """
    return device.type == "cuda" if amp is None else bool(amp)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """The autocast context of a forward on ``device`` in :func:`autocast_dtype`.

    Outputs may be in the reduced type: callers cast logits with ``.float()`` before losses
    and sigmoids.
    """
    return torch.autocast(device_type=device.type, dtype=autocast_dtype(device), enabled=enabled)


@torch.no_grad()
def view_probabilities(model: nn.Module, views: torch.Tensor, device: torch.device, *,
                       amp: bool, count: int | None = None) -> torch.Tensor:
    """Sigmoid probabilities of augmented views, as recorded for Eq. 2, 6 and 9 of BalanceMix.

    The model runs in eval mode (restored afterwards), without gradient, under autocast
    (:func:`autocast`) when ``amp``.

    Args:
        model: the classifier.
        views: ``(V, B, C, H, W)`` views, on any device (moved to ``device``).
        device: where the model runs.
        amp: mixed precision (float16 on CUDA, bfloat16 on CPU).
        count: only the first ``count`` samples of each view (default: all ``B``). The views
            are moved whole and sliced on ``device`` (a strided host slice would be copied to
            pageable memory and moved synchronously; ``docs/performance.md``).

    Returns:
        ``(V, count, K)`` float32 probabilities.
    """
    views = views.to(device, non_blocking=True)
    if count is not None:
        views = views[:, :count]
    v, b = views.shape[:2]
    was_training = model.training
    model.eval()
    try:
        with autocast(device, amp):
            logits = model(views.flatten(0, 1))
    finally:
        model.train(was_training)
    return torch.sigmoid(logits.float()).view(v, b, -1)


class ModelEma(nn.Module):
    """Exponential moving average of a model's parameters and buffers.

    ``ema = decay * ema + (1 - decay) * model`` after every optimiser step (ML-Decoder uses
    decay 0.9997); floating buffers are averaged too and integer buffers copied.

    Args:
        model: The model to track (a deep copy is kept, in eval mode, without gradients).
        decay: Averaging factor in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``."""
        src = model.state_dict()
        for name, value in self.module.state_dict().items():
            new = src[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(self.decay).add_(new.to(value.dtype), alpha=1.0 - self.decay)
            else:
                value.copy_(new)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D401 - nn.Module API
        return self.module(*args, **kwargs)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``
    (:func:`~balancemix_timm.textfiles.atomic_write`).

    A crash while writing leaves the previous checkpoint intact and no temporary file.
    """
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


#: The streams of :func:`epoch_seed`, one rule for every front end: the global generators
#: reseeded at an epoch's start, the training loader's generator (its workers' seeds), and the
#: generator of the epoch pass's loader.
GLOBAL_STREAM, TRAIN_LOADER_STREAM, EPOCH_PASS_STREAM = 0, 1, 2
#: Offsets from the run's seed: the second sampler stream (minority, or a second random one)
#: and the order of the epoch pass.
SECOND_SAMPLER_SEED_OFFSET, EPOCH_PASS_SEED_OFFSET = 1, 7


def epoch_seed(seed: int, epoch: int, stream: int = GLOBAL_STREAM) -> int:
    """A deterministic 63-bit seed for (run seed, epoch, stream) (streams: :data:`GLOBAL_STREAM`,
    :data:`TRAIN_LOADER_STREAM`, :data:`EPOCH_PASS_STREAM`, or a method's own)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(stream) * 104_729 + 12_345) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (used by transforms)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 - DataLoader API
    """DataLoader ``worker_init_fn``: NumPy seeded from the worker's torch seed."""
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict[str, Any]:
    """Global RNG states (Python, NumPy, torch CPU and CUDA)."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: Accelerator types :func:`resolve_device` can check: each is a ``torch.<type>`` module with
#: ``is_available()`` and ``device_count()``.
_ACCELERATOR_TYPES = ("cuda", "xpu", "mps")


def _accelerator_count(kind: str) -> int:
    """Number of usable ``kind`` devices of this machine (0 when the type is unavailable)."""
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        return 0
    return max(int(module.device_count()), 1)


def available_devices() -> list[str]:
    """The device names this machine can train on: ``auto``, ``cpu``, then per available
    accelerator type its bare name and each indexed device (``cuda``, ``cuda:0``, ...)."""
    names = ["auto", "cpu"]
    for kind in _ACCELERATOR_TYPES:
        count = _accelerator_count(kind)
        if count:
            names += [kind, *(f"{kind}:{i}" for i in range(count))]
    return names


def resolve_device(name: str, what: str = "device") -> torch.device:
    """The device ``name`` stands for, checked against this machine.

    ``"auto"`` is CUDA when available, else the CPU. Any other name must be a torch device
    string of the CPU or of an accelerator this machine has (``cuda``, ``cuda:N`` with ``N``
    below the GPU count; likewise ``xpu`` and ``mps``).

    Args:
        name: ``"auto"`` or a torch device string.
        what: How messages name the setting (``"config device"`` in the trainer).

    Returns:
        The ``torch.device``.

    Raises:
        ValueError: ``name`` is not a device string, or names a device this machine lacks; the
            message names ``what`` and lists :func:`available_devices`.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices()
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a device name, got {name!r}; available: {available}")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{what}={name!r} is not a device name; available: {available}") from None
    if device.type == "cpu":
        return device
    if device.type not in _ACCELERATOR_TYPES:
        raise ValueError(f"{what}={name!r}: {device.type} devices are not supported; available: {available}")
    count = _accelerator_count(device.type)
    if count == 0:
        raise ValueError(
            f"{what}={name!r}: this machine has no {device.type} device (torch.{device.type}.is_available() "
            f"is False); available: {available}"
        )
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"{what}={name!r}: this machine has {count} {device.type} device(s), "
            f"{device.type}:0 to {device.type}:{count - 1}; available: {available}"
        )
    return device
