"""Confidence-based minority sampling (Eq. 2-4 of BalanceMix) and epoch-seeded, shardable samplers.

BalanceMix keeps two samplers over the training set: a *random* sampler (a plain permutation)
and a *minority* sampler that draws instances with probability inversely proportional to their
confidence score (Eq. 3-4). Each minority instance is mixed into a random instance (Eq. 5, see
:mod:`balancemix_timm.mixing`).

The samplers here follow :class:`torch.utils.data.DistributedSampler`: call
``set_epoch(epoch)`` before every epoch; the epoch's indices are drawn by an explicit
:class:`torch.Generator` seeded from ``(sampler kind, seed, epoch)``, so every rank draws the same
global stream, pads it (by wrapping) to a multiple of ``num_replicas`` and keeps the positions
``rank::num_replicas``. This also gives the weighted sampler the distributed support that
:class:`torch.utils.data.WeightedRandomSampler` lacks (pytorch/pytorch#77154).

One concern per module: :mod:`~balancemix_timm.sampling.scores` (Eq. 2-4 probabilities),
:mod:`~balancemix_timm.sampling.sharded` (the epoch-seeded sharded base and the random sampler),
:mod:`~balancemix_timm.sampling.minority` (the minority sampler) and
:mod:`~balancemix_timm.sampling.batch` (pairing and batch samplers). Every name is importable
from ``balancemix_timm.sampling``.
"""

# Names outside ``__all__`` keep importing from this path too.
from balancemix_timm.sampling.batch import (  # noqa: F401
    _T,
    PairedBatchSampler,
    PairedSampler,
    TailMergingBatchSampler,
    _batched,
    num_batches,
)
from balancemix_timm.sampling.minority import (
    MULTINOMIAL_MAX_CATEGORIES,  # noqa: F401
    MinoritySampler,
)
from balancemix_timm.sampling.scores import (  # noqa: F401
    _SCORES,
    _check_probs_labels,
    _check_weights,
    class_confidences,
    instance_scores,
    minority_sampling_probs,
    weight_spread,
)
from balancemix_timm.sampling.sharded import (  # noqa: F401
    ShardedRandomSampler,
    _check_int,
    _derive_seed,
    _EpochShardedSampler,
)

__all__ = [
    "class_confidences",
    "instance_scores",
    "minority_sampling_probs",
    "weight_spread",
    "MinoritySampler",
    "ShardedRandomSampler",
    "PairedSampler",
    "PairedBatchSampler",
    "TailMergingBatchSampler",
    "num_batches",
]
