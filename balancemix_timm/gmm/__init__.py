"""Clean-label probabilities from per-(class, polarity) Gaussian mixtures (Eq. 6-8 of BalanceMix).

BalanceMix splits the per-label BCE losses of the whole training set into ``2K`` sets, one per
class ``k`` and polarity ``l`` (the given label ``y~_k = l``, Eq. 6), fits a two-component
univariate Gaussian mixture to each set with EM (Eq. 7) and takes the posterior of the
small-mean component as the probability that a label is clean (Eq. 8); ``p_G > 0.5`` marks a
label as clean.

This package fits all ``2K`` mixtures at once with dense tensor operations (no Python loop
over groups) and follows :class:`sklearn.mixture.GaussianMixture` (``n_components=2``, one
feature, ``covariance_type="full"``) step for step, so that from the same initial
responsibilities both give the same posteriors up to rounding:

* each group's losses are min-max normalised (``normalize="minmax"``) or kept as they are
  (``"none"``); a group with fewer than ``min_group_size`` labels or a constant loss is not
  fitted and its labels get the ``fallback`` probability;
* initial responsibilities from a hard assignment (``init="kmeans"``: deterministic 1-D
  two-means, Lloyd's algorithm started from each group's minimum and maximum and run until the
  assignment stops changing; ``init="quantile"``: a split at each group's lower median),
  turned into parameters by one M-step with weights ``n_c / n``;
* then up to ``max_iter`` rounds of E-step, M-step (``nk = sum resp + 10 eps``, weights
  ``nk / sum nk``, means, variances ``+ reg_covar``) and lower bound (mean log-likelihood of the
  group's losses under the parameters of that E-step); a group stops, its parameters frozen, as
  soon as its lower bound changes by less than ``tol``;
* a final E-step with the final parameters gives the posteriors of the component with the
  smaller mean.

Precision (``dtype``): the per-group quantities (parameters, lower bounds, the M-step) are
always float64. The per-label arithmetic runs in ``float32`` (the default for ``tol >= 1e-4``;
about twice as fast, half the memory) or ``float64`` (scikit-learn to rounding: parameters
within 1e-9). In float32, each label's normalised value is a float32 and the sums over a group
are taken over chunks of at most 4096 labels in float32, then added in float64: posteriors
stay within about 1e-4 of float64's and the lower bound within about 1e-6 per label, which is
why ``dtype="auto"`` uses float64 for ``tol < 1e-4``. This holds for groups of any size: the
filler that pads a small minority-polarity group's chunk adds exactly zero to its EM sums. The
lower bound's error grows with the log-odds of the group's labels (about 1e-7 of the largest):
where a component narrows to ``reg_covar``, they reach about 1e3 on min-max normalised losses
(the lower bound then within about 1e-4 per label), more on raw losses that span more than 1.

Modules:

* :mod:`.estimator`: the API, :class:`LabelGMM` and :func:`clean_probability`, and the checks
  of inputs and options;
* :mod:`.layout`: the groups as chunks of one tensor (the dense majority polarity of each
  class in place, the minority polarity packed), their normalisation, where the outputs go;
* :mod:`.chunks`: the storage and every per-label pass over it (moments, splits, histogram,
  EM sums, posteriors);
* :mod:`.init`: the initial hard assignment (two-means bounded by a histogram, in named
  steps; or the median split);
* :mod:`.em`: the M-step, the batched EM loop, the whole fit and Eq. 8 for every label;
* :mod:`.reference`: the same algorithm written as a plain float64 loop over the groups, the
  tests' oracle (slow; not used by the estimator).
"""

from __future__ import annotations

from .estimator import LabelGMM, clean_probability

__all__ = ["LabelGMM", "clean_probability"]
