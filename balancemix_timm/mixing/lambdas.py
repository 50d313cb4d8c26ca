"""The mixing coefficient: generator-driven Beta draws of ``lambda = max(lambda', 1 - lambda')``,
one per batch or one per element, and the checks of the mixing options.

``torch.distributions.Beta`` and ``torch._standard_gamma`` cannot take a
:class:`torch.Generator`, so Beta draws here are built from Gamma draws produced by the
Marsaglia-Tsang method (with the ``alpha < 1`` boost) on top of generator-driven
``torch.randn`` / ``torch.rand``: the global RNG is never touched when a generator is given.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from balancemix_timm.sampling.sharded import _check_int

__all__ = ["sample_beta", "sample_lambdas", "sample_lambda"]


_MODES = ("batch", "elem")


def _check_alpha(alpha: float, *, allow_zero: bool) -> float:
    if isinstance(alpha, bool):
        raise ValueError(f"alpha must be a number, got {alpha!r}")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number, got {alpha!r}") from None
    if not math.isfinite(a) or a < 0 or (a == 0 and not allow_zero):
        want = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"alpha must be a finite number {want}, got {alpha!r}")
    return a


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _log_standard_gamma(alpha: float, size: int, generator: torch.Generator | None) -> Tensor:
    """``log G`` with ``G ~ Gamma(alpha, 1)``, shape (size,), float64 (Marsaglia & Tsang, 2000).

    For ``alpha >= 1``: ``d = alpha - 1/3``, ``c = 1/sqrt(9 d)``; draw ``x ~ N(0, 1)``,
    ``u ~ U(0, 1)``, ``v = (1 + c x)^3``; accept ``d v`` if ``v > 0`` and
    (``u < 1 - 0.0331 x^4`` or ``log u < x^2/2 + d (1 - v + log v)``). For ``alpha < 1``:
    ``G(alpha) = G(alpha + 1) U^(1/alpha)``, computed in log space so that tiny alphas do not
    underflow to 0.
    """
    device = _device_of(generator)
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(size, dtype=torch.float64, device=device)
    todo = torch.arange(size, device=device)
    while todo.numel() > 0:
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
        squeeze = u < 1.0 - 0.0331 * x**4
        full = torch.log(u) < 0.5 * x * x + d * (1.0 - v + log_v)
        accept = positive & (squeeze | full)
        out[todo[accept]] = math.log(d) + log_v[accept]
        todo = todo[~accept]
    if boost:
        u = torch.rand(size, generator=generator, dtype=torch.float64, device=device)
        out = out + torch.log1p(-u) / alpha  # log(1 - u), 1 - u in (0, 1]
    return out


def sample_beta(alpha: float, size: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``lambda' ~ Beta(alpha, alpha)`` as ``G1 / (G1 + G2)`` with Gamma(alpha) draws.

    Args:
        alpha: Concentration, finite and > 0.
        size: Number of draws (>= 0).
        generator: Source of randomness; ``None`` uses torch's default generator (as
            ``torch.rand`` does). Draws are made on the generator's device.

    Returns:
        Float64 tensor of shape (size,), values in [0, 1].
    """
    a = _check_alpha(alpha, allow_zero=False)
    n = _check_int(size, "size", minimum=0)
    log_g1 = _log_standard_gamma(a, n, generator)
    log_g2 = _log_standard_gamma(a, n, generator)
    return torch.sigmoid(log_g1 - log_g2)  # G1 / (G1 + G2), stable in log space


def sample_lambdas(alpha: float, size: int, *, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``size`` mixing coefficients ``lambda = max(lambda', 1 - lambda')`` (Eq. 5 of BalanceMix).

    Args:
        alpha: Beta concentration, finite and >= 0; ``alpha = 0`` means no mixing (all 1.0,
            no random draw).
        size: Number of coefficients (>= 0).
        generator: Source of randomness (``None``: torch's default generator).

    Returns:
        Float64 tensor of shape (size,), values in [0.5, 1].
    """
    a = _check_alpha(alpha, allow_zero=True)
    n = _check_int(size, "size", minimum=0)
    if a == 0.0:
        return torch.ones(n, dtype=torch.float64, device=_device_of(generator))
    b = sample_beta(a, n, generator=generator)
    return torch.maximum(b, 1.0 - b)


def sample_lambda(alpha: float, generator: torch.Generator | None = None) -> float:
    """Draw one mixing coefficient ``lambda = max(lambda', 1 - lambda')``, ``lambda' ~ Beta(alpha, alpha)``.

    Eq. 5 of BalanceMix. Driven only by ``generator`` (``None``: torch's default generator).

    Args:
        alpha: Beta concentration, finite and >= 0 (the paper uses 4); 0 returns exactly 1.0.
        generator: Source of randomness.

    Returns:
        A Python float in [0.5, 1].
    """
    return float(sample_lambdas(alpha, 1, generator=generator)[0])


def _draw_lam(
    alpha: float, mode: str, prob: float, batch_size: int, generator: torch.Generator
) -> float | Tensor:
    """One coefficient (batch mode, float) or ``batch_size`` of them (elem mode, float32 tensor).

    Stream use is fixed: with ``0 < prob < 1`` the apply-draw(s) come first, then the lambda(s),
    whether or not mixing is applied; ``prob == 1`` skips the apply-draw; ``prob == 0`` or
    ``alpha == 0`` draws nothing.
    """
    if mode == "batch":
        if alpha == 0.0 or prob == 0.0:
            return 1.0
        apply = True
        if prob < 1.0:
            apply = bool(torch.rand(1, generator=generator, device=_device_of(generator))[0] < prob)
        lam = sample_lambda(alpha, generator)
        return lam if apply else 1.0
    device = _device_of(generator)
    if alpha == 0.0 or prob == 0.0:
        return torch.ones(batch_size, dtype=torch.float32, device=device)
    apply_mask = None
    if prob < 1.0:
        apply_mask = torch.rand(batch_size, generator=generator, device=device) < prob
    lam = sample_lambdas(alpha, batch_size, generator=generator).to(torch.float32)
    if apply_mask is not None:
        lam = torch.where(apply_mask, lam, torch.ones_like(lam))
    return lam


def _check_options(alpha: float, mode: str, prob: float) -> tuple[float, str, float]:
    a = _check_alpha(alpha, allow_zero=True)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    try:
        p = float(prob)
    except (TypeError, ValueError):
        raise ValueError(f"prob must be a number in [0, 1], got {prob!r}") from None
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"prob must be in [0, 1], got {prob!r}")
    return a, mode, p
