"""The estimator API: :class:`LabelGMM`, :func:`clean_probability` and their checks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from balancemix_timm._checks import (
    check_binary,
    check_finite,
    check_ndim,
    check_same_shape,
    check_tensor,
    check_unit_interval,
)

from .em import _coefficients, _fit

__all__ = ["LabelGMM", "clean_probability"]

_NORMALIZE = ("minmax", "none")
_INIT = ("kmeans", "quantile")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DTYPE_OPTIONS = ("auto", *_DTYPES)
# With dtype="auto", tolerances below this use float64: float32 sums resolve the mean
# log-likelihood of a group to about 1e-6, too coarse to decide convergence at such a tol.
_FLOAT32_MIN_TOL = 1e-4


def _check_inputs(losses: Tensor, labels: Tensor, *, values: bool = True) -> None:
    """Types and shapes; with ``values``, also binary labels and finite losses (``_layout``
    checks both on the way, for the fit, without extra passes)."""
    losses = check_tensor(losses, "losses")
    labels = check_tensor(labels, "labels")
    check_ndim(losses, "losses", 2)
    check_ndim(labels, "labels", 2)
    check_same_shape(losses, "losses", labels, "labels")
    if not losses.is_floating_point():
        raise ValueError(f"losses must be a floating-point tensor, got {losses.dtype}")
    if values:
        labels = check_binary(labels, "labels")
        check_finite(losses, "losses")


def _check_options(
    normalize: str, max_iter: int, tol: float, reg_covar: float, init: str, init_max_iter: int,
    min_group_size: int, fallback: float, dtype: str = "auto",
) -> None:
    if dtype not in _DTYPE_OPTIONS:
        raise ValueError(f"dtype must be one of {_DTYPE_OPTIONS}, got {dtype!r}")
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    if init not in _INIT:
        raise ValueError(f"init must be one of {_INIT}, got {init!r}")
    for name, value, low in (
        ("max_iter", max_iter, 0), ("init_max_iter", init_max_iter, 1),
        ("min_group_size", min_group_size, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("tol", tol), ("reg_covar", reg_covar)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    check_unit_interval(fallback, "fallback")



class LabelGMM:
    """The ``2K`` two-component Gaussian mixtures of Eq. 7 of BalanceMix, fitted at once.

    One univariate two-component GMM per class ``k`` and polarity ``l`` is fitted by EM to the
    losses of the labels with ``labels[:, k] == l`` (Eq. 6); :meth:`predict_clean_probability` returns
    the posterior of the small-mean ("clean") component (Eq. 8). The EM follows
    ``sklearn.mixture.GaussianMixture(n_components=2, covariance_type="full")`` (see the
    package docstring); the defaults are the small-loss practice of DivideMix
    (min-max normalised losses, ``max_iter=10``, ``tol=1e-2``, ``reg_covar=5e-4``).

    Args:
        normalize: ``"minmax"`` maps each group's losses to [0, 1] before fitting (default,
            as in DivideMix); ``"none"`` fits the raw losses.
        max_iter: maximum EM rounds per group (``0``: posteriors from the initialisation).
        tol: a group has converged when its lower bound (mean log-likelihood per label)
            changes by less than ``tol``; its parameters are then frozen.
        reg_covar: added to every variance.
        init: initial hard assignment, ``"kmeans"`` (1-D two-means from each group's
            minimum / maximum, like scikit-learn's default k-means up to its random start) or
            ``"quantile"`` (split at each group's lower median).
        init_max_iter: cap on the exact Lloyd iterations of ``init="kmeans"``, counted from
            where the histogram bounds resume Lloyd (see :mod:`balancemix_timm.gmm.init`):
            Lloyd reaches its fixed point unless the cap stops it, and a cap that does stops
            it further along than that many plain Lloyd steps.
        min_group_size: groups with fewer labels are not fitted (default 8: with fewer points
            the two components' means and variances are mostly noise; scikit-learn needs 2).
        fallback: clean probability given to the labels of groups that are not fitted (too
            small, or all losses equal). Default 1.0 treats them as clean, i.e. trains on them
            as given: a constant-loss group carries no evidence of noise, and in a tiny group
            (typically the positives of a rare class) marking labels noisy would send the
            scarcest labels to re-labelling or down-weighting, which is what BalanceMix tries
            to avoid for minority classes.
        dtype: per-label arithmetic, ``"float32"``, ``"float64"`` or ``"auto"`` (default:
            float32, or float64 when ``tol < 1e-4``); see the package docstring. Per-group
            quantities and the fitted attributes are float64 in every case.
        device: where to compute; default the device of ``losses`` (not saved in
            :meth:`state_dict`).

    Groups that are not fitted (non-empty ones are named in a ``logging`` warning) keep
    finite placeholder parameters and ``fallback_ = True``; empty groups are flagged too,
    silently. :meth:`predict_clean_probability` on new losses evaluates the fitted Gaussians as they
    are, tails included (as scikit-learn's ``predict_proba`` does): a loss far above a group's
    range goes to whichever component has the wider tail.

    Attributes (after :meth:`fit`; CPU tensors, index ``[l, k]`` = polarity ``l`` of class
    ``k``, last index = component, clean (smaller mean) first):
        means_: ``(2, K, 2)`` float64, in normalised-loss units ``(loss - shift_) / scale_``.
        variances_: ``(2, K, 2)`` float64, same units (``reg_covar`` included).
        weights_: ``(2, K, 2)`` float64 mixing weights.
        shift_, scale_: ``(2, K)`` float64 normalisation (min and range for ``"minmax"``;
            0 and 1 for ``"none"``).
        n_samples_: ``(2, K)`` int64 group sizes.
        lower_bound_: ``(2, K)`` float64 last lower bound (``-inf`` if not fitted).
        n_iter_: ``(2, K)`` int64 EM rounds run.
        converged_: ``(2, K)`` bool.
        fallback_: ``(2, K)`` bool, True for groups given ``fallback`` instead of a fit.
    """

    _FITTED = (
        "means_", "variances_", "weights_", "shift_", "scale_", "n_samples_", "lower_bound_",
        "n_iter_", "converged_", "fallback_",
    )
    _OPTIONS = (
        "normalize", "max_iter", "tol", "reg_covar", "init", "init_max_iter", "min_group_size",
        "fallback", "dtype",
    )

    def __init__(
        self, *, normalize: str = "minmax", max_iter: int = 10, tol: float = 1e-2,
        reg_covar: float = 5e-4, init: str = "kmeans", init_max_iter: int = 300,
        min_group_size: int = 8, fallback: float = 1.0, dtype: str = "auto",
        device: str | torch.device | None = None,
    ) -> None:
        _check_options(normalize, max_iter, tol, reg_covar, init, init_max_iter,
                       min_group_size, fallback, dtype)
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = float(tol)
        self.reg_covar = float(reg_covar)
        self.init = init
        self.init_max_iter = init_max_iter
        self.min_group_size = min_group_size
        self.fallback = float(fallback)
        self.dtype = dtype
        self.device = device

    @property
    def working_dtype(self) -> torch.dtype:
        """The dtype of the per-label arithmetic: ``dtype``, or for ``"auto"`` float32 unless
        ``tol < 1e-4`` (then float64)."""
        if self.dtype == "auto":
            return torch.float64 if self.tol < _FLOAT32_MIN_TOL else torch.float32
        return _DTYPES[self.dtype]

    # ------------------------------------------------------------------ fitting
    def _run(self, losses: Tensor, labels: Tensor, *, predict: bool) -> Tensor | None:
        _check_inputs(losses, labels, values=False)
        losses, labels = losses.detach(), labels.detach()
        device = torch.device(self.device) if self.device is not None else losses.device
        res = _fit(
            losses, labels, normalize=self.normalize, max_iter=self.max_iter, tol=self.tol,
            reg_covar=self.reg_covar, init=self.init, init_max_iter=self.init_max_iter,
            min_group_size=self.min_group_size, fallback=self.fallback,
            dtype=self.working_dtype, device=device, predict=predict,
        )
        k = losses.shape[1]
        # Internal group g = side * K + k (side 0: majority polarity). Public [l, k].
        maj = res.majority.long()
        cls = torch.arange(k, device=maj.device)
        index = torch.stack([(maj != 0).long() * k + cls, (maj != 1).long() * k + cls])
        index = index.cpu()

        def pub(t: Tensor) -> Tensor:
            return t.cpu()[index]

        offset, scale = pub(res.offset), pub(res.scale)
        if self.normalize == "minmax":
            shift = offset
            means = pub(res.means)
        else:
            shift = torch.zeros_like(offset)
            means = pub(res.means) + offset.unsqueeze(-1)
        fallback = pub(res.fallback)
        self.means_ = means
        self.variances_ = pub(res.variances)
        self.weights_ = pub(res.weights)
        self.shift_ = shift
        self.scale_ = scale
        self.n_samples_ = pub(res.n).round().long()
        self.lower_bound_ = pub(res.lower_bound)
        self.n_iter_ = pub(res.n_iter)
        self.converged_ = pub(res.converged)
        self.fallback_ = fallback
        if res.clean_prob is None:
            return None
        return res.clean_prob.to(losses.device)

    def fit(self, losses: Tensor, labels: Tensor) -> LabelGMM:
        """Fit the ``2K`` mixtures (Eq. 6-7 of BalanceMix).

        Args:
            losses: ``(N, K)`` finite per-label losses (e.g. BCE).
            labels: ``(N, K)`` given labels in {0, 1} (float, int or bool).

        Returns:
            ``self``.
        """
        self._run(losses, labels, predict=False)
        return self

    def fit_predict_clean_probability(self, losses: Tensor, labels: Tensor) -> Tensor:
        """:meth:`fit` then :meth:`predict_clean_probability` on the same data, in one pass.

        Returns:
            ``(N, K)`` float32 clean probabilities on ``losses``' device.
        """
        out = self._run(losses, labels, predict=True)
        assert out is not None
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise RuntimeError("this LabelGMM is not fitted yet; call fit() first")

    def predict_clean_probability(self, losses: Tensor, labels: Tensor) -> Tensor:
        """Posterior of the clean (small-mean) component, Eq. 8 of BalanceMix.

        Each loss is normalised with its group's fitted ``shift_`` / ``scale_`` and evaluated
        under its group's fitted mixture; labels of ``fallback_`` groups get ``fallback``.

        Args:
            losses: ``(N, K)`` finite per-label losses.
            labels: ``(N, K)`` given labels in {0, 1}.

        Returns:
            ``(N, K)`` float32 probabilities on ``losses``' device.
        """
        self._check_fitted()
        _check_inputs(losses, labels)
        k = self.means_.shape[1]
        if losses.shape[1] != k:
            raise ValueError(
                f"losses must have {k} columns (the fitted classes), got {losses.shape[1]}"
            )
        device = torch.device(self.device) if self.device is not None else losses.device
        x = losses.detach().to(device=device, dtype=torch.float64)
        pos = labels.to(device=device).bool()
        w = self.weights_.to(device)
        mu = self.means_.to(device)
        var = self.variances_.to(device)
        a, b, c = _coefficients(w.reshape(-1, 2), mu.reshape(-1, 2), var.reshape(-1, 2))
        a, b, c = (t.view(2, k) for t in (a, b, c))
        shift, scale = self.shift_.to(device), self.scale_.to(device)

        def pick(t: Tensor) -> Tensor:
            return torch.where(pos, t[1], t[0])

        z = (x - pick(shift)) / pick(scale)
        p = torch.sigmoid(pick(a) + z * (pick(b) + z * pick(c)))
        p = torch.where(pick(self.fallback_.to(device)), torch.full_like(p, self.fallback), p)
        return p.to(dtype=torch.float32, device=losses.device)

    def decision_thresholds(self) -> Tensor:
        """Where each group's clean probability crosses 0.5, in normalised-loss units.

        The log-odds of the two components are a quadratic ``a + b z + c z^2`` of the
        normalised loss ``z = (loss - shift_) / scale_`` (the space the mixture is fitted in;
        ``[0, 1]`` with ``normalize="minmax"``). Its root between the two means is the
        decision threshold (labels below it are clean); without one, the real root nearest to
        the means' midpoint. A raw-loss threshold is ``shift_ + scale_ * z``.

        Returns:
            ``(2, K)`` float64 CPU tensor, index ``[l, k]`` = polarity ``l`` of class ``k``;
            NaN for ``fallback_`` groups and where the posterior never crosses 0.5.
        """
        self._check_fitted()
        k = self.means_.shape[1]
        mu = self.means_.reshape(-1, 2)
        a, b, c = _coefficients(self.weights_.reshape(-1, 2), mu, self.variances_.reshape(-1, 2))
        nan = torch.full_like(a, math.nan)
        lin = c.abs() <= 1e-12 * b.abs().clamp(min=1e-300)  # (near-)equal variances: a + b z = 0
        z_lin = torch.where(lin & (b != 0), -a / b.where(b != 0, torch.ones_like(b)), nan)
        disc = b * b - 4.0 * a * c
        sq = disc.clamp(min=0.0).sqrt()
        c_safe = c.where(c != 0, torch.ones_like(c))
        r1 = torch.where(disc >= 0, (-b - sq) / (2.0 * c_safe), nan)
        r2 = torch.where(disc >= 0, (-b + sq) / (2.0 * c_safe), nan)
        lo, hi = mu.min(1).values, mu.max(1).values
        mid = 0.5 * (lo + hi)

        def score(r: Tensor) -> Tensor:  # 0 inside [lo, hi], else the distance to the midpoint
            inside = (r >= lo) & (r <= hi)
            return torch.where(inside, torch.zeros_like(r), (r - mid).abs()).nan_to_num(math.inf)

        z = torch.where(score(r1) <= score(r2), r1, r2)
        z = torch.where(lin, z_lin, z)
        z = torch.where(self.fallback_.reshape(-1), nan, z)
        return z.view(2, k)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Options and fitted attributes (CPU tensors)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._OPTIONS}
        if hasattr(self, "means_"):
            for name in self._FITTED:
                state[name] = getattr(self, name).clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore options and (if present) fitted attributes from :meth:`state_dict`."""
        options = {name: state.get(name, getattr(self, name)) for name in self._OPTIONS}
        _check_options(**options)
        for name, value in options.items():
            setattr(self, name, value)
        present = [name for name in self._FITTED if name in state]
        if present and len(present) != len(self._FITTED):
            missing = sorted(set(self._FITTED) - set(present))
            raise ValueError(f"state is missing fitted attributes {missing}")
        if present:
            k = state["means_"].shape[1]
            for name in self._FITTED:
                value = state[name]
                if not isinstance(value, Tensor) or tuple(value.shape[:2]) != (2, k):
                    raise ValueError(f"state[{name!r}] must be a tensor of shape (2, {k}, ...)")
                setattr(self, name, value.detach().cpu().clone())


def clean_probability(
    losses: Tensor, labels: Tensor, *, normalize: str = "minmax", max_iter: int = 10,
    tol: float = 1e-2, reg_covar: float = 5e-4, init: str = "kmeans", init_max_iter: int = 300,
    min_group_size: int = 8, fallback: float = 1.0, dtype: str = "auto",
    device: str | torch.device | None = None,
) -> Tensor:
    """Clean-label probability of every label, Eq. 6-8 of BalanceMix.

    Fits one two-component 1-D Gaussian mixture per class and polarity to the losses of the
    labels of that polarity (Eq. 6-7), all ``2K`` at once, and returns for each label the
    posterior of its group's small-mean component (Eq. 8); ``> 0.5`` marks the label clean.
    See :class:`LabelGMM` for the options; groups with fewer than ``min_group_size`` labels or
    a constant loss get ``fallback`` (1.0: treated as clean) and a ``logging`` warning naming
    them.

    Example:
        >>> losses = torch.rand(100, 3) ** 4
        >>> labels = (torch.rand(100, 3) < 0.3).float()
        >>> p = clean_probability(losses, labels)  # (100, 3), p > 0.5: clean

    Args:
        losses: ``(N, K)`` finite per-label losses (e.g. BCE of the given labels).
        labels: ``(N, K)`` given labels in {0, 1} (float, int or bool).

    Returns:
        ``(N, K)`` float32 probabilities in [0, 1] on ``losses``' device.

    Raises:
        ValueError: if an input or option is invalid.
    """
    gmm = LabelGMM(
        normalize=normalize, max_iter=max_iter, tol=tol, reg_covar=reg_covar, init=init,
        init_max_iter=init_max_iter, min_group_size=min_group_size, fallback=fallback,
        dtype=dtype, device=device,
    )
    return gmm.fit_predict_clean_probability(losses, labels)
