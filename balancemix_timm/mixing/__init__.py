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

One concern per module: :mod:`~balancemix_timm.mixing.lambdas` (drawing ``lambda``),
:mod:`~balancemix_timm.mixing.interpolate` (Eq. 5 on images and targets),
:mod:`~balancemix_timm.mixing.minority_mixup` (mixing on the main process) and
:mod:`~balancemix_timm.mixing.collate` (mixing in the DataLoader workers). The public names
(``__all__``) are importable from ``balancemix_timm.mixing``.
"""

# Private names keep importing from this path too.
from balancemix_timm.mixing.collate import MixedBatch, MixupCollate, PairedDataset
from balancemix_timm.mixing.interpolate import mix, mix_targets
from balancemix_timm.mixing.lambdas import sample_beta, sample_lambda, sample_lambdas
from balancemix_timm.mixing.minority_mixup import MinorityMixup

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
