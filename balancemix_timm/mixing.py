"""Minority-augmented Mixup (Eq. 5 of BalanceMix), driven only by explicit generators.

An instance from the random sampler ``(x_R, y_R)`` and one from the minority sampler
``(x_M, y_M)`` are interpolated with ``lambda = max(lambda', 1 - lambda') >= 0.5``,
``lambda' ~ Beta(alpha, alpha)``, so the random instance always dominates.

``torch.distributions.Beta`` and ``torch._standard_gamma`` cannot take a
:class:`torch.Generator`, so Beta draws here are built from Gamma draws produced by the
Marsaglia-Tsang method (with the ``alpha < 1`` boost) on top of generator-driven
``torch.randn`` / ``torch.rand``: the global RNG is never touched when a generator is given.

Two ways to mix:

* on the main process, :class:`MinorityMixup` mixes images and labels of already collated batches
  (timm's ``Mixup`` shape);
* in the DataLoader workers, :class:`PairedDataset` + :class:`MixupCollate` mix the images and
  return the unmixed targets and ``lam`` so that the engine can mix the *refined* labels later
  with :func:`mix_targets`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from balancemix_timm._checks import check_finite, check_ndim, check_real, check_tensor
from balancemix_timm.sampling import _check_int, _derive_seed

__all__ = [
    "sample_beta",
    "sample_lambdas",
    "sample_lambda",
    "mix",
    "mix_targets",
    "MinorityMixup",
    "PairedDataset",
    "MixedBatch",
    "MixupCollate",
]

_logger = logging.getLogger(__name__)

_MODES = ("batch", "elem")


# --------------------------------------------------------------------------------------------
# Generator-driven Gamma / Beta draws
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Eq. 5: interpolation
# --------------------------------------------------------------------------------------------
def _float_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _check_lam(lam: float | Tensor, batch_size: int) -> float | Tensor:
    if isinstance(lam, Tensor) and lam.ndim == 0:
        lam = float(lam)
    if isinstance(lam, Tensor):
        if lam.ndim != 1 or lam.shape[0] != batch_size:
            raise ValueError(
                f"lam must be a number or a tensor of shape ({batch_size},) (one per sample), "
                f"got shape {tuple(lam.shape)}"
            )
        if lam.dtype == torch.bool or lam.is_complex():
            raise ValueError(f"lam must be real-valued, got {lam.dtype}")
        check_finite(lam, "lam")
        if lam.numel() and (bool((lam < 0).any()) or bool((lam > 1).any())):
            raise ValueError(
                f"lam must lie in [0, 1]; found values in [{float(lam.min()):.4g}, {float(lam.max()):.4g}]"
            )
        return lam
    if isinstance(lam, bool):
        raise ValueError(f"lam must be a number or a tensor, got {lam!r}")
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a number or a tensor, got {type(lam).__name__}") from None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    return value


def _interpolate(a: Tensor, b: Tensor, lam: float | Tensor) -> Tensor:
    """``lam * a + (1 - lam) * b`` in a floating dtype; per-sample ``lam`` broadcast over dims 1..."""
    dtype = _float_dtype(a, b)
    a = a.to(dtype)
    b = b.to(dtype)
    if isinstance(lam, Tensor):
        w = lam.to(device=a.device, dtype=dtype).reshape((-1,) + (1,) * (a.ndim - 1))
        return w * a + (1.0 - w) * b
    return lam * a + (1.0 - lam) * b


def _check_pair(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    check_tensor(a, a_name)
    check_tensor(b, b_name)
    check_ndim(a, a_name, tuple(range(1, 17)))
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    for t, name in ((a, a_name), (b, b_name)):
        check_real(t, name)  # bool, integer or floating (the package's label dtype rule)


def mix_targets(y_r: Tensor, y_m: Tensor, lam: float | Tensor) -> Tensor:
    """Mix two label batches: ``y_mix = lam * y_R + (1 - lam) * y_M`` (Eq. 5 of BalanceMix).

    Also usable for any pair of same-shape batches (e.g. images).

    Args:
        y_r: Labels of the random-sampler instances, shape (B, ...) (multi-hot or soft): bool,
            integer or floating, as everywhere in the package.
        y_m: Labels of the minority-sampler instances, same shape.
        lam: A float in [0, 1] or a tensor of shape (B,) (one coefficient per sample,
            broadcast over the trailing dims).

    Returns:
        New tensor of shape (B, ...); floating inputs keep their (promoted) dtype, bool or
        integer inputs give the default float dtype. Inputs are not modified.

    Raises:
        ValueError: complex or non-finite inputs, mismatched shapes, or ``lam`` outside [0, 1].
    """
    _check_pair(y_r, "y_r", y_m, "y_m")
    return _interpolate(y_r, y_m, _check_lam(lam, y_r.shape[0]))


def mix(
    x_r: Tensor, y_r: Tensor, x_m: Tensor, y_m: Tensor, lam: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Minority-augmented Mixup of two batches (Eq. 5 of BalanceMix).

    ``x_mix = lam * x_R + (1 - lam) * x_M`` and ``y_mix = lam * y_R + (1 - lam) * y_M``.

    Args:
        x_r: Random-sampler inputs, shape (B, ...), e.g. (B, C, H, W).
        y_r: Random-sampler labels, shape (B, K) (multi-hot or soft; bool, integer or floating).
        x_m: Minority-sampler inputs, same shape as ``x_r``.
        y_m: Minority-sampler labels, same shape as ``y_r``.
        lam: A float in [0, 1] or a tensor of shape (B,) broadcast over trailing dims.

    Returns:
        ``(x_mix, y_mix)``, new floating tensors shaped like ``x_r`` and ``y_r``. Bool and
        integer inputs (e.g. bool labels, uint8 images) are mixed and returned in the default
        float dtype, not rounded.
    """
    _check_pair(x_r, "x_r", x_m, "x_m")
    _check_pair(y_r, "y_r", y_m, "y_m")
    if x_r.shape[0] != y_r.shape[0]:
        raise ValueError(
            f"x_r and y_r must have the same batch size, got {x_r.shape[0]} and {y_r.shape[0]}"
        )
    lam = _check_lam(lam, x_r.shape[0])
    return _interpolate(x_r, x_m, lam), _interpolate(y_r, y_m, lam)


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
        check_tensor(x_r, "x_r")
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


# --------------------------------------------------------------------------------------------
# Mixing inside DataLoader workers
# --------------------------------------------------------------------------------------------
class PairedDataset(Dataset):
    """Index a dataset with ``(random_idx, minority_idx)`` pairs and return both items.

    Args:
        dataset: A map-style dataset whose items are ``(image, target, index)``; items of the
            form ``(image, target)`` get the requested index appended. ``image`` may be a tensor
            or a tuple of views (first = training view).
        minority_dataset: Where the minority items are read from (default: ``dataset``), same
            length and sample order. With views (for Eq. 9), the same data set with the plain
            training transform saves building the minority items' views, which
            :class:`MixupCollate` drops (a third of the augmentation work with two views), with
            no measured effect on accuracy (docs/performance.md, target 4). The ML-Decoder
            plugin uses it; the trainer keeps its published setting (minority items read
            through the views).
    """

    def __init__(self, dataset: Dataset, minority_dataset: Dataset | None = None) -> None:
        for name, ds in (("dataset", dataset), ("minority_dataset", minority_dataset)):
            if ds is not None and (not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__")):
                raise ValueError(f"{name} must be a sized map-style dataset, got {type(ds).__name__}")
        if minority_dataset is not None and len(minority_dataset) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"minority_dataset has {len(minority_dataset)} items, dataset {len(dataset)}"  # type: ignore[arg-type]
            )
        self.dataset = dataset
        self.minority_dataset = dataset if minority_dataset is None else minority_dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _item(self, index: int, dataset: Dataset) -> tuple[Any, Any, Any]:
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            length = f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
            raise ValueError(
                "dataset items must be (image, target) or (image, target, index) tuples, got "
                f"{type(item).__name__}{length}"
            )
        return (item[0], item[1], index) if len(item) == 2 else tuple(item)  # type: ignore[return-value]

    def __getitem__(self, pair: Sequence[int]) -> tuple[tuple[Any, Any, Any], tuple[Any, Any, Any]]:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"index must be a (random_idx, minority_idx) pair, got {pair!r}")
        r = _check_int(pair[0], "random_idx")
        m = _check_int(pair[1], "minority_idx")
        return self._item(r, self.dataset), self._item(m, self.minority_dataset)


class MixedBatch(NamedTuple):
    """A batch mixed in the DataLoader workers by :class:`MixupCollate`.

    Attributes:
        input: Mixed training views ``lam * x_R + (1 - lam) * x_M``, shape (B, C, H, W).
        target_r: The random items' given targets, collated (e.g. (B, K)), unmixed.
        target_m: The minority items' given targets, collated, unmixed.
        index_r: Dataset indices of the random items, LongTensor (B,).
        index_m: Dataset indices of the minority items, LongTensor (B,).
        lam: Float32 tensor (B,); the same value repeated in batch mode.
        view_r: The random items' extra views stacked to (V - 1, B, C, H, W) when the dataset
            returns a tuple of V >= 2 images; ``None`` otherwise.
    """

    input: Tensor
    target_r: Any
    target_m: Any
    index_r: Tensor
    index_m: Tensor
    lam: Tensor
    view_r: Tensor | None = None


def _split_views(items: list[tuple[Any, Any, Any]], name: str) -> tuple[Tensor, Tensor | None]:
    images = [it[0] for it in items]
    if all(isinstance(im, Tensor) for im in images):
        return torch.stack(images), None
    if not all(isinstance(im, (tuple, list)) and len(im) >= 1 for im in images):
        raise ValueError(f"{name} images must all be tensors or all be non-empty tuples of tensors")
    n_views = len(images[0])
    if any(len(im) != n_views for im in images):
        raise ValueError(f"{name} items must all have the same number of views ({n_views})")
    first = torch.stack([im[0] for im in images])
    if n_views == 1:
        return first, None
    extra = torch.stack([torch.stack([im[v] for im in images]) for v in range(1, n_views)])
    return first, extra


class MixupCollate:
    """``collate_fn`` that mixes the images of :class:`PairedDataset` batches in the workers.

    Each batch is a list of ``((image_r, target_r, index_r), (image_m, target_m, index_m))``.
    The training views are mixed with ``lam`` (Eq. 5 of BalanceMix); the targets are returned
    unmixed so that the engine mixes the refined labels with :func:`mix_targets`.

    Reproducibility: ``lam`` of a batch is drawn from a fresh CPU generator seeded by a hash of
    ``(seed, epoch, the batch's (index_r, index_m) pairs)``, so it does not depend on which worker
    collates the batch nor on ``num_workers``. Since the samplers draw new indices every epoch,
    lambdas differ across epochs even without :meth:`set_epoch`; if you call it, do not use
    ``persistent_workers=True`` (the workers keep the collate object they were started with).

    Args:
        alpha: Beta concentration (paper: 4; 0 disables mixing).
        mode: ``"batch"`` (one lambda per batch) or ``"elem"`` (one per pair).
        prob: Probability of mixing (per batch / per pair); otherwise lambda = 1.
        seed: Base seed.
    """

    _salt = 0x4D495855  # "MIXU"

    def __init__(
        self, *, alpha: float = 4.0, mode: str = "batch", prob: float = 1.0, seed: int = 0
    ) -> None:
        self.alpha, self.mode, self.prob = _check_options(alpha, mode, prob)
        self.seed = _check_int(seed, "seed")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Mix the epoch into the per-batch seeds (see the class note on persistent workers)."""
        self.epoch = _check_int(epoch, "epoch")

    def batch_generator(self, index_r: Sequence[int], index_m: Sequence[int]) -> torch.Generator:
        """The generator that draws ``lam`` for the batch with these index pairs."""
        parts: list[int] = [self._salt, self.seed, self.epoch, len(index_r)]
        for r, m in zip(index_r, index_m):
            parts.append(int(r))
            parts.append(int(m))
        g = torch.Generator()
        g.manual_seed(_derive_seed(*parts))
        return g

    def __call__(self, batch: Sequence[Any]) -> MixedBatch:
        if not isinstance(batch, (list, tuple)) or len(batch) == 0:
            raise ValueError("batch must be a non-empty list of (random_item, minority_item) pairs")
        for pair in batch:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError("batch must hold (random_item, minority_item) pairs from PairedDataset")
            for it in pair:
                if not isinstance(it, (tuple, list)) or len(it) != 3:
                    raise ValueError("items must be (image, target, index) tuples (use PairedDataset)")
        items_r = [p[0] for p in batch]
        items_m = [p[1] for p in batch]
        x_r, view_r = _split_views(items_r, "random")
        x_m, _ = _split_views(items_m, "minority")  # the minority items' extra views are dropped
        if x_r.shape != x_m.shape:
            raise ValueError(
                f"random and minority images must have the same shape, got {tuple(x_r.shape[1:])} "
                f"and {tuple(x_m.shape[1:])}"
            )
        index_r = torch.tensor([int(it[2]) for it in items_r], dtype=torch.long)
        index_m = torch.tensor([int(it[2]) for it in items_m], dtype=torch.long)
        b = len(batch)
        g = self.batch_generator(index_r.tolist(), index_m.tolist())
        lam = _draw_lam(self.alpha, self.mode, self.prob, b, g)
        if not isinstance(lam, Tensor):
            lam = torch.full((b,), lam, dtype=torch.float32)
        x_mix = _interpolate(x_r, x_m, lam)
        return MixedBatch(
            input=x_mix,
            target_r=default_collate([it[1] for it in items_r]),
            target_m=default_collate([it[1] for it in items_m]),
            index_r=index_r,
            index_m=index_m,
            lam=lam,
            view_r=view_r,
        )

    def state_dict(self) -> dict[str, Any]:
        """Options, seed and epoch."""
        return {
            "alpha": self.alpha,
            "mode": self.mode,
            "prob": self.prob,
            "seed": self.seed,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`'s output."""
        self.alpha, self.mode, self.prob = _check_options(
            state_dict.get("alpha", self.alpha),
            state_dict.get("mode", self.mode),
            state_dict.get("prob", self.prob),
        )
        self.seed = _check_int(state_dict.get("seed", self.seed), "seed")
        self.epoch = _check_int(state_dict.get("epoch", self.epoch), "epoch")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alpha={self.alpha}, mode={self.mode!r}, prob={self.prob}, "
            f"seed={self.seed})"
        )
