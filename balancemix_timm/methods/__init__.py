"""Training methods of ``balancemix-train`` (``method=``): BCE, Mixup, BalanceMix, baselines.

Baselines of the BalanceMix paper (Tables 1-4): ``asl``, ``coteaching``, ``llr``, ``llct``,
``testimator``; and the missing-label losses ``hill`` and ``splc`` of Zhang et al. (2021). All on
Mixup batches of two random streams, as the paper trains its baselines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .asl import ASLMethod
from .base import MixupMethod, TrainingMethod
from .coteaching import CoTeachingMethod
from .hill import HillMethod
from .large_loss import LLCtMethod, LLRMethod
from .splc import SPLCMethod
from .standard import BalanceMixMethod, BCEMethod, MixupBCEMethod
from .testimator import TEstimatorMethod

if TYPE_CHECKING:  # pragma: no cover
    from ..train import Trainer

__all__ = ["METHODS", "register_method", "build_method", "TrainingMethod", "MixupMethod"]

#: ``method=`` name -> class.
METHODS: dict[str, type[TrainingMethod]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


_BUILT_IN = (
    BCEMethod, MixupBCEMethod, BalanceMixMethod,
    ASLMethod, CoTeachingMethod, LLRMethod, LLCtMethod, TEstimatorMethod, HillMethod, SPLCMethod,
)
for _cls in _BUILT_IN:
    register_method(_cls)


def build_method(name: str, trainer: "Trainer") -> TrainingMethod:
    """Instantiate the method called ``name`` for ``trainer``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name](trainer)
