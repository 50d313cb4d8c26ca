"""Mixing on the main process: :class:`MinorityMixup` mixes already collated random and minority
batches (timm's ``Mixup`` shape).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from balancemix_timm._checks import check_ndim, check_tensor
from balancemix_timm.mixing.interpolate import mix
from balancemix_timm.mixing.lambdas import _check_options, _draw_lam
from balancemix_timm.sampling.sharded import _check_int

__all__ = ["MinorityMixup"]


class MinorityMixup:
    """Mix a random batch with a minority batch (Eq. 5 of BalanceMix), timm ``Mixup``-shaped.

    Args:
        alpha: Beta concentration (paper: 4; 0 disables mixing).
        mode: ``"batch"``: one lambda per call (the paper's reading); ``"elem"``: one per sample.
        prob: Probability of mixing at all (per call in batch mode, per sample in elem mode);
            otherwise lambda = 1 (the random instance unchanged).
        seed: Seed of a private CPU generator (``None`` and no ``generator``: seed 0).
        generator: Use this generator instead (exclusive with ``seed``).

    Attributes:
        last_lam: The coefficient(s) of the last call: a float (batch mode) or a float32
            tensor of shape (B,) (elem mode); ``None`` before the first call.
    """

    def __init__(
        self,
        *,
        alpha: float = 4.0,
        mode: str = "batch",
        prob: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.alpha, self.mode, self.prob = _check_options(alpha, mode, prob)
        if seed is not None and generator is not None:
            raise ValueError("give either seed or generator, not both")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            self.generator = generator
        else:
            self.generator = torch.Generator()
            self.generator.manual_seed(_check_int(0 if seed is None else seed, "seed"))
        self.last_lam: float | Tensor | None = None

    def sample_lam(self, batch_size: int) -> float | Tensor:
        """Draw the coefficient(s) for a batch of ``batch_size`` pairs (records ``last_lam``)."""
        b = _check_int(batch_size, "batch_size", minimum=1)
        self.last_lam = _draw_lam(self.alpha, self.mode, self.prob, b, self.generator)
        return self.last_lam

    def __call__(self, x_r: Tensor, y_r: Tensor, x_m: Tensor, y_m: Tensor) -> tuple[Tensor, Tensor]:
        """Mix ``(x_r, y_r)`` with ``(x_m, y_m)``; see :func:`mix` for shapes.

        Returns:
            ``(x_mix, y_mix)``.
        """
        x_r = check_tensor(x_r, "x_r")
        check_ndim(x_r, "x_r", tuple(range(1, 17)))
        lam = self.sample_lam(x_r.shape[0])
        return mix(x_r, y_r, x_m, y_m, lam)

    def state_dict(self) -> dict[str, Any]:
        """Options and the generator state."""
        return {
            "alpha": self.alpha,
            "mode": self.mode,
            "prob": self.prob,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore options and generator state from :meth:`state_dict`'s output."""
        if "generator_state" not in state_dict:
            raise ValueError("state_dict is missing 'generator_state'")
        self.alpha, self.mode, self.prob = _check_options(
            state_dict.get("alpha", self.alpha),
            state_dict.get("mode", self.mode),
            state_dict.get("prob", self.prob),
        )
        self.generator.set_state(state_dict["generator_state"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, mode={self.mode!r}, prob={self.prob})"
