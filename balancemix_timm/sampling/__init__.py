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
:mod:`~balancemix_timm.sampling.batch` (pairing and batch samplers). The public names
(``__all__``) are importable from ``balancemix_timm.sampling``.
"""

# Names outside ``__all__`` keep importing from this path too.
from balancemix_timm.sampling.batch import PairedBatchSampler, PairedSampler, TailMergingBatchSampler, num_batches
from balancemix_timm.sampling.minority import MinoritySampler
from balancemix_timm.sampling.scores import class_confidences, instance_scores, minority_sampling_probs, weight_spread
from balancemix_timm.sampling.sharded import ShardedRandomSampler

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
