"""The minority sampler of BalanceMix: draws instances with the Eq. 4 weights, DDP-aware."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from balancemix_timm.sampling.scores import _check_weights, weight_spread
from balancemix_timm.sampling.sharded import _EpochShardedSampler

__all__ = ["MULTINOMIAL_MAX_CATEGORIES", "MinoritySampler"]

# The package's one logger: log filters name ``balancemix_timm.sampling``.
_logger = logging.getLogger("balancemix_timm.sampling")


#: Largest number of categories :func:`torch.multinomial` accepts.
MULTINOMIAL_MAX_CATEGORIES = 2**24


class MinoritySampler(_EpochShardedSampler):
    """Weighted sampler for the minority instances of BalanceMix (Eq. 4), DDP-aware.

    Weights are uniform until :meth:`update` is called (docs/design.md, decision 4: uniform until the first refresh).
    Each epoch draws ``num_samples`` indices from the weights with :func:`torch.multinomial`
    and a generator seeded from ``(seed, epoch)`` -- identical on every rank -- pads the stream by
    wrapping to a multiple of ``num_replicas`` and yields positions ``rank::num_replicas``.
    Updated weights take effect at the next ``__iter__``. Resuming restores whole epochs: the
    stream is a function of (seed, epoch, weights) only.

    Args:
        data_size: Number of instances N (at most 2^24, the limit of ``torch.multinomial``).
        num_samples: Indices drawn per epoch over all ranks (default N).
        seed: Base seed; the same on every rank.
        num_replicas: World size.
        rank: This process's rank in ``[0, num_replicas)``.
        replacement: Draw with replacement (default, as the paper oversamples); without
            replacement ``num_samples`` must not exceed the number of positive weights.
    """

    _salt = 0x4D494E4F  # "MINO"

    def __init__(
        self,
        data_size: int,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        replacement: bool = True,
    ) -> None:
        super().__init__(data_size, num_samples, seed=seed, num_replicas=num_replicas, rank=rank)
        if self.data_size > MULTINOMIAL_MAX_CATEGORIES:
            raise ValueError(
                f"data_size must be at most 2^24 = {MULTINOMIAL_MAX_CATEGORIES} (the number of "
                f"categories torch.multinomial supports), got {self.data_size}"
            )
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement must be a bool, got {replacement!r}")
        self.replacement = replacement
        if not replacement and self.num_samples > self.data_size:
            raise ValueError(
                f"num_samples ({self.num_samples}) must not exceed data_size ({self.data_size}) "
                "when replacement=False"
            )
        self._weights = torch.ones(self.data_size, dtype=torch.float64)

    @property
    def weights(self) -> Tensor:
        """Current (unnormalised) sampling weights, float64 of shape (N,), on CPU (a copy)."""
        return self._weights.clone()

    def update(self, weights: Tensor) -> None:
        """Replace the sampling weights, e.g. with :func:`minority_sampling_probs`.

        Args:
            weights: Shape (N,), finite, non-negative, positive sum; need not be normalised.
        """
        w = _check_weights(weights, "weights", self.data_size)
        w = w.detach().to(device="cpu", dtype=torch.float64).clone()
        if not self.replacement:
            n_pos = int((w > 0).sum())
            if n_pos < self.num_samples:
                raise ValueError(
                    f"weights has only {n_pos} positive entries, fewer than num_samples "
                    f"({self.num_samples}) required when replacement=False"
                )
        self._weights = w
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("minority sampler weights updated: %s", weight_spread(w))

    def _draw(self, generator: torch.Generator) -> Tensor:
        return torch.multinomial(
            self._weights, self.num_samples, self.replacement, generator=generator
        )

    def state_dict(self) -> dict[str, Any]:
        """Sampler state: weights, seed, epoch, sizes, replacement and world layout."""
        state = self._base_state()
        state["replacement"] = self.replacement
        state["weights"] = self._weights.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore weights, seed and epoch; sizes and ``replacement`` must match.

        The world layout (``num_replicas``, ``rank``) is kept as constructed, so a run may resume
        with another world size; the global stream does not depend on it.
        """
        if "weights" not in state_dict:
            raise ValueError("state_dict is missing 'weights'")
        if bool(state_dict.get("replacement", self.replacement)) != self.replacement:
            raise ValueError(
                f"state_dict['replacement'] = {state_dict['replacement']} does not match this "
                f"sampler's replacement = {self.replacement}"
            )
        self._load_base_state(state_dict)
        self.update(state_dict["weights"])
