"""Confidence-based minority sampling (Eq. 2-4 of BalanceMix) and epoch-seeded, shardable samplers.

BalanceMix keeps two samplers over the training set: a *random* sampler (a plain permutation)
and a *minority* sampler that draws instances with probability inversely proportional to their
confidence score (Eq. 3-4). Each minority instance is mixed into a random instance (Eq. 5, see
:mod:`balancemix_timm.mixing`).

The samplers follow :class:`torch.utils.data.DistributedSampler` (``set_epoch``, the same
global stream on every rank, sharded by position); the contract is stated once, in
:mod:`~balancemix_timm.sampling.sharded`.

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
