"""Training methods of ``balancemix-train`` (``method=``): BCE, Mixup, BalanceMix, baselines.

Baselines of the BalanceMix paper (Tables 1-4): ``asl``, ``coteaching``, ``llr``, ``llct``,
``testimator``; and the missing-label losses ``hill`` and ``splc`` of Zhang et al. (2021). All on
Mixup batches of two random streams, as the paper trains its baselines.
"""

from __future__ import annotations

from .asl import ASLMethod
from .base import MixupMethod, TrainingMethod
from .context import MethodContext
from .coteaching import CoTeachingMethod
from .hill import HillMethod
from .large_loss import LLCtMethod, LLRMethod
from .splc import SPLCMethod
from .standard import BalanceMixMethod, BCEMethod, MixupBCEMethod
from .testimator import TEstimatorMethod

__all__ = ["METHODS", "register_method", "build_method", "TrainingMethod", "MixupMethod", "MethodContext"]

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


def build_method(name: str, ctx: MethodContext) -> TrainingMethod:
    """Instantiate the method called ``name`` from ``ctx``.

    Raises:
        ValueError: ``name`` is not in :data:`METHODS`, or the method rejects ``ctx``
            (e.g. unknown ``method_options``).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name](ctx)
