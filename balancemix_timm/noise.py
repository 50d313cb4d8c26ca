"""Synthetic label noise for multi-label data: the three protocols of BalanceMix.

The paper ("Imbalanced and Noisy Labels" in the experiments of BalanceMix) contaminates clean
multi-hot labels in three ways:

* **mislabeling** (:func:`mislabel`, Eq. 11 of BalanceMix): the presence of class ``i`` is
  moved to another class ``j`` with probability ``rho_{i->j} = tau * N_j / (N - N_i)``, the
  class-dependent long-tail protocol of Wei et al. (2021);
* **random flipping** (:func:`random_flip`): every positive and negative label is flipped
  independently with probability ``tau``;
* **missing labels** (:func:`single_positive`): the single-positive setup of Kim et al. (2022),
  one positive label is kept per image and the others are dropped.

Every function takes an ``(N, K)`` binary tensor (float, integer or bool), returns a NEW
tensor of the same dtype and device, never modifies its input, and draws its randomness from
the explicit ``generator`` (``None`` falls back to PyTorch's default generator, like
``torch.rand``). The same generator state gives the same result.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from balancemix_timm._checks import (
    check_binary,
    check_ndim,
    check_same_shape,
    check_tensor,
    check_unit_interval,
)

__all__ = [
    "NOISE_KINDS",
    "mislabel",
    "random_flip",
    "single_positive",
    "apply_noise",
    "noise_rate_report",
]

_logger = logging.getLogger(__name__)

NOISE_KINDS = ("clean", "mislabel", "random_flip", "single_positive")
_DESTINATIONS = ("negative", "any")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_labels(labels: Tensor, name: str = "labels") -> Tensor:
    """Validate an ``(N, K)`` binary label tensor and return it as a CPU bool tensor."""
    labels = check_tensor(labels, name)
    check_ndim(labels, name, 2)
    if labels.is_complex():
        raise ValueError(f"{name} must be real-valued, got {labels.dtype}")
    labels = check_binary(labels, name)
    return labels.detach().to(device="cpu", dtype=torch.bool)


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) draws (float64, CPU) from ``generator`` (on the generator's device)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).cpu()


def _randperm(n: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=device).cpu()


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Standard Gumbel draws (float64, CPU)."""
    u = _rand(shape, generator).clamp_(min=torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(u))


def _row_ranks(keys: Tensor) -> Tensor:
    """Rank (0 = largest key) of every entry within its row, ``(N, K)`` int64."""
    order = torch.argsort(keys, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    arange = torch.arange(keys.shape[1]).expand_as(order)
    ranks.scatter_(1, order, arange)
    return ranks


def _restore(noisy: Tensor, like: Tensor) -> Tensor:
    """Return the bool tensor ``noisy`` with ``like``'s dtype and device."""
    return noisy.to(dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# mislabeling (Eq. 11)
# --------------------------------------------------------------------------------------------
def mislabel(
    labels: Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    *,
    exact: bool = False,
    destination: str = "negative",
) -> Tensor:
    """Class-dependent mislabeling of multi-hot labels (Eq. 11 of BalanceMix).

    Eq. 11 of BalanceMix (after Wei et al. 2021) moves the presence of class ``i`` to class
    ``j != i`` with probability::

        rho_{i->j} = p(y~_i = 0, y~_j = 1 | y_i = 1) = tau * N_j / (N - N_i),

    where ``N_i`` is the number of positive labels of class ``i`` in ``labels`` (the clean
    labels) and ``N = sum_i N_i`` the total number of positive labels. Since
    ``sum_{j != i} N_j = N - N_i``, every positive label is moved with probability ``tau``
    and its destination is drawn in proportion to ``N_j``: the frequent classes absorb most of
    the mislabeled positives, as in a long-tailed noisy-label setup.

    The paper states Eq. 11 for one label per instance; its multi-label form is our choice
    (docs/design.md, decision 7):

    * **Which positives move.** By default (``exact=False``) every positive ``(n, i)`` moves
      independently with probability ``tau`` (Bernoulli). With ``exact=True`` exactly
      ``round(tau * #positives)`` positives, a uniformly random subset of all positive labels,
      are chosen to move.
    * **Where they go** (``destination``). ``"negative"`` (default): a destination is a class
      that is negative in that image, in the clean labels and not taken by an earlier move in
      the same image, so every move is a true mislabel ``y~_i = 0, y~_j = 1`` with
      ``y_i = 1, y_j = 0``. The moves of an image are made one after another in random order,
      each destination drawn among the remaining such classes with probability proportional
      to ``N_j`` (Eq. 11 renormalised over them; implemented as a Gumbel-top-k draw, which has
      exactly this sequential law). An image with only one positive therefore gets Eq. 11
      exactly. If an image has more movers than available destinations, a uniformly random
      subset of its movers (as many as there are destinations) moves and the others keep their
      label; the number of positives of an image is preserved. Classes with ``N_j = 0`` are
      never destinations. ``"any"``: the destination is drawn independently for each mover
      among all ``j != i`` with probability ``N_j / (N - N_i)``, exactly Eq. 11 marginally;
      the moves of an image are applied at once (``y~ = (y and not moved) or destination``),
      so a destination that is already positive merges and the image loses a positive.

    Args:
        labels: ``(N, K)`` clean binary labels (float, integer or bool).
        tau: noise rate in ``[0, 1]``.
        generator: source of randomness; ``None`` uses PyTorch's default generator.
        exact: move exactly ``round(tau * #positives)`` chosen positives instead of an
            independent Bernoulli(``tau``) per positive.
        destination: ``"negative"`` or ``"any"``, see above.

    Returns:
        ``(N, K)`` noisy labels with the dtype and device of ``labels``.

    Raises:
        ValueError: if ``labels`` is not a 2-D binary tensor, ``tau`` is outside ``[0, 1]``
            or ``destination`` is unknown.
    """
    clean = _check_labels(labels)
    tau = check_unit_interval(tau, "tau")
    _check_generator(generator)
    if destination not in _DESTINATIONS:
        raise ValueError(f"destination must be one of {_DESTINATIONS}, got {destination!r}")
    n, k = clean.shape
    counts = clean.sum(dim=0, dtype=torch.float64)  # N_j, (K,)
    total = float(counts.sum())

    # 1. which positives move
    if exact:
        pos_index = clean.flatten().nonzero().squeeze(1)
        n_move = int(math.floor(tau * pos_index.numel() + 0.5))
        movers = torch.zeros(n * k, dtype=torch.bool)
        if n_move > 0:
            movers[pos_index[_randperm(pos_index.numel(), generator)[:n_move]]] = True
        movers = movers.view(n, k)
    else:
        movers = clean & (_rand((n, k), generator) < tau)
    if tau == 0.0 or total == 0.0 or not bool(movers.any()):
        return labels.clone()

    if destination == "any":
        rows, src = movers.nonzero(as_tuple=True)
        weights = counts.expand(k, k).clone()
        weights.fill_diagonal_(0.0)  # j != i
        weights = weights[src]  # (M, K), row sum N - N_i
        has_dest = weights.sum(dim=1) > 0
        rows, src, weights = rows[has_dest], src[has_dest], weights[has_dest]
        noisy = clean.clone()
        if rows.numel():
            # inverse-CDF draw of one destination per mover
            cdf = weights.cumsum(dim=1)
            u = _rand((rows.numel(), 1), generator) * cdf[:, -1:]
            dst = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=k - 1)
            noisy[rows, src] = False
            noisy[rows, dst] = True
        return _restore(noisy, labels)

    # 2. destinations: Gumbel-top-k over clean negatives with N_j > 0 (sequential draw
    #    without replacement, proportional to N_j)
    available = (~clean) & (counts > 0)
    n_movers = movers.sum(dim=1)
    n_avail = available.sum(dim=1)
    n_moves = torch.minimum(n_movers, n_avail)  # moves that actually happen per image
    log_w = torch.log(counts.clamp(min=1e-300)).expand(n, k)
    keys = torch.where(available, log_w + _gumbel((n, k), generator), -math.inf)
    dest = (_row_ranks(keys) < n_moves.unsqueeze(1)) & available

    # 3. images with more movers than destinations: a uniform subset of movers moves
    short = n_movers > n_avail
    if bool(short.any()):
        mkeys = torch.where(movers, _rand((n, k), generator), -1.0)
        keep = _row_ranks(mkeys) < n_moves.unsqueeze(1)
        movers = torch.where(short.unsqueeze(1), movers & keep, movers)
    noisy = (clean & ~movers) | dest
    return _restore(noisy, labels)


# --------------------------------------------------------------------------------------------
# random flipping and single positive
# --------------------------------------------------------------------------------------------
def random_flip(labels: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """Flip every positive and negative label independently with probability ``tau``.

    The "random flipping" protocol of BalanceMix ("Imbalanced and Noisy Labels").

    Args:
        labels: ``(N, K)`` clean binary labels (float, integer or bool).
        tau: flip probability in ``[0, 1]``.
        generator: source of randomness; ``None`` uses PyTorch's default generator.

    Returns:
        ``(N, K)`` noisy labels with the dtype and device of ``labels``.
    """
    clean = _check_labels(labels)
    tau = check_unit_interval(tau, "tau")
    _check_generator(generator)
    flips = _rand(tuple(clean.shape), generator) < tau
    return _restore(clean ^ flips, labels)


def single_positive(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep one positive label per image, chosen uniformly at random; drop the others.

    The "missing labels" protocol of BalanceMix, i.e. the single-positive setup of Kim et al.
    (2022). Images without a positive label are returned unchanged (all zeros).

    Args:
        labels: ``(N, K)`` clean binary labels (float, integer or bool).
        generator: source of randomness; ``None`` uses PyTorch's default generator.

    Returns:
        ``(N, K)`` labels with at most one positive per row, dtype and device of ``labels``.
    """
    clean = _check_labels(labels)
    _check_generator(generator)
    n, k = clean.shape
    if k == 0 or n == 0:
        return labels.clone()
    keys = torch.where(clean, _rand((n, k), generator), -1.0)
    choice = keys.argmax(dim=1, keepdim=True)
    noisy = torch.zeros_like(clean)
    noisy.scatter_(1, choice, True)
    noisy &= clean  # rows without positives stay empty
    return _restore(noisy, labels)


# --------------------------------------------------------------------------------------------
# dispatcher and report
# --------------------------------------------------------------------------------------------
def apply_noise(
    labels: Tensor,
    kind: str,
    tau: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    exact: bool = False,
    destination: str = "negative",
) -> Tensor:
    """Apply one of the noise protocols of BalanceMix by name.

    Args:
        labels: ``(N, K)`` clean binary labels.
        kind: ``"clean"`` (a copy), ``"mislabel"`` (:func:`mislabel`, Eq. 11),
            ``"random_flip"`` (:func:`random_flip`) or ``"single_positive"``
            (:func:`single_positive`; ``tau`` is ignored).
        tau: noise rate in ``[0, 1]`` (validated for every kind).
        generator: source of randomness.
        exact: forwarded to :func:`mislabel`.
        destination: forwarded to :func:`mislabel`.

    Returns:
        ``(N, K)`` labels with the dtype and device of ``labels``.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    tau = check_unit_interval(tau, "tau")
    if kind == "clean":
        _check_labels(labels)
        noisy = labels.clone()
    elif kind == "mislabel":
        noisy = mislabel(labels, tau, generator, exact=exact, destination=destination)
    elif kind == "random_flip":
        noisy = random_flip(labels, tau, generator)
    else:
        noisy = single_positive(labels, generator)
    if _logger.isEnabledFor(logging.INFO):
        _logger.info("label noise %s (tau=%g): %s", kind, tau, noise_rate_report(noisy, labels))
    return noisy


def noise_rate_report(noisy: Tensor, clean: Tensor) -> dict[str, float]:
    """Summarise how much ``noisy`` differs from ``clean``.

    Args:
        noisy: ``(N, K)`` binary labels after noise.
        clean: ``(N, K)`` binary clean labels.

    Returns:
        A dict with the counts ``num_labels``, ``clean_positives``, ``noisy_positives``,
        ``changed``, ``positives_removed`` (clean 1 -> noisy 0), ``positives_added``
        (clean 0 -> noisy 1) and the fractions ``changed_fraction`` (of all labels),
        ``removed_fraction`` (of clean positives), ``added_fraction`` (of clean negatives) and
        ``images_changed_fraction`` (images with at least one changed label). Fractions with
        an empty denominator are NaN.
    """
    y = _check_labels(clean, "clean")
    y_noisy = _check_labels(noisy, "noisy")
    check_same_shape(noisy, "noisy", clean, "clean")
    removed = int((y & ~y_noisy).sum())
    added = int((~y & y_noisy).sum())
    num = y.numel()
    pos = int(y.sum())
    neg = num - pos
    n_img = y.shape[0]
    changed_img = int((y != y_noisy).any(dim=1).sum()) if n_img else 0

    def frac(a: int, b: int) -> float:
        return a / b if b else math.nan

    return {
        "num_labels": float(num),
        "clean_positives": float(pos),
        "noisy_positives": float(int(y_noisy.sum())),
        "changed": float(removed + added),
        "positives_removed": float(removed),
        "positives_added": float(added),
        "changed_fraction": frac(removed + added, num),
        "removed_fraction": frac(removed, pos),
        "added_fraction": frac(added, neg),
        "images_changed_fraction": frac(changed_img, n_img),
    }
