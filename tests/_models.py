"""The tiny timm backbone and the helpers shared by the test_models_* modules."""

from __future__ import annotations

import torch
from torch import nn

from balancemix_timm.models import (
    create_model,
)

TINY = "test_resnet"  # timm's 0.37M-parameter ResNet, 96 feature channels at stride 32
SMALL_HEAD = {"embed_dim": 16, "num_heads": 2, "dim_feedforward": 24}


def _make(seed: int, *args, **kwargs) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_model(*args, **kwargs)


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g)


def _randomize(module: nn.Module, seed: int) -> None:
    """Give every parameter (layer norms and biases included) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
