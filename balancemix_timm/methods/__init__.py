"""Training methods of ``balancemix-train`` (``method=``): BCE, Mixup, BalanceMix, baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MixupMethod, TrainingMethod
from .standard import BalanceMixMethod, BCEMethod, MixupBCEMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..train import Trainer

__all__ = ["METHODS", "register_method", "build_method", "TrainingMethod", "MixupMethod"]

#: ``method=`` name -> class.
METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


for _cls in (BCEMethod, MixupBCEMethod, BalanceMixMethod):
    register_method(_cls)


def build_method(name: str, trainer: "Trainer") -> TrainingMethod:
    """Instantiate the method called ``name`` for ``trainer``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name](trainer)
