"""Tests that balancemix_timm.gmm matches the package's plain per-group reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from balancemix_timm.gmm import LabelGMM
from balancemix_timm.gmm.reference import reference_fit
from tests._gmm import (
    DTYPES,
    make_data,
)


# ----------------------------------------------------------------- against the plain reference
def mixed_groups(n: int, k: int, *, seed: int, modes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and losses whose groups cover the layout's cases: both polarities as the dense
    group, a constant group, groups just below and at ``min_group_size`` (8), an empty group."""
    rates = np.random.default_rng(seed).uniform(0.05, 0.95, k)
    losses, labels = make_data(n, list(rates), seed=seed, modes=modes)
    if k >= 4 and n >= 40:
        labels[:, 0] = 0.0
        labels[: n // 3, 0] = 1.0
        losses[n // 3:, 0] = 0.7  # class 0: constant negatives
        labels[:, 1] = 0.0
        labels[:7, 1] = 1.0  # class 1: 7 positives (fallback)
        labels[:, 2] = 1.0
        labels[:8, 2] = 0.0  # class 2: 8 negatives (fitted), positives the dense group
        labels[:, 3] = 1.0  # class 3: no negative label
    return losses, labels


REFERENCE_CASES = {  # n, k, modes, seed
    "mixed": (600, 5, 2, 30),
    "multimodal": (2500, 6, 7, 31),
    "small": (40, 4, 2, 32),
    "several-chunks": (9000, 2, 9, 33),
}


@DTYPES
@pytest.mark.parametrize("normalize", ["minmax", "none"])
@pytest.mark.parametrize("init", ["kmeans", "quantile"])
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_the_plain_reference(case, init, normalize, dtype):
    """The batched fit against the plain float64 loop over the groups: same fallback groups,
    EM rounds and convergence; float64 agrees to rounding, float32 to its per-label rounding
    (its lower bound to about 1e-7 of the log-odds, which grow large for narrow components)."""
    n, k, modes, seed = REFERENCE_CASES[case]
    losses, labels = mixed_groups(n, k, seed=seed, modes=modes)
    if case == "multimodal":  # other input dtypes (cast by the fit)
        losses, labels = losses.double(), labels.bool()
    options = {"init": init, "normalize": normalize, "fallback": 0.25, "max_iter": 20, "tol": 1e-3}
    model = LabelGMM(dtype=dtype, **options)
    p = model.fit_predict_clean_probability(losses, labels)
    ref = reference_fit(losses, labels, **options)

    assert torch.equal(model.fallback_, ref.fallback)
    assert torch.equal(model.n_samples_, ref.n_samples)
    on_fallback = ref.fallback[labels.long(), torch.arange(k)]  # (N, K) per label
    assert (p[on_fallback] == 0.25).all()
    p_tol, par_tol, lb_tol = {"float64": (1e-7, 1e-9, 1e-9), "float32": (2e-4, 5e-5, 2e-3)}[dtype]
    torch.testing.assert_close(p.double(), ref.clean_prob, atol=p_tol, rtol=0)
    fitted = ~ref.fallback
    assert torch.equal(model.n_iter_, ref.n_iter)
    assert torch.equal(model.converged_, ref.converged)
    for name in ("means", "variances", "weights"):
        torch.testing.assert_close(getattr(model, name + "_")[fitted], getattr(ref, name)[fitted],
                                   atol=par_tol, rtol=0)
    torch.testing.assert_close(model.lower_bound_, ref.lower_bound, atol=lb_tol, rtol=0)
    exact = dtype == "float64" or losses.dtype == torch.float32  # shift from the given values
    torch.testing.assert_close(model.shift_, ref.shift, atol=0, rtol=0 if exact else 1e-7)
    torch.testing.assert_close(model.scale_, ref.scale, atol=0, rtol=0 if exact else 1e-6)
