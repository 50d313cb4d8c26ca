"""balancemix-timm: BalanceMix (AAAI 2024) for imbalanced and noisy multi-label training.

The public API: the paper's components as typed functions and small stateful classes, the
engine that a training loop drives, and the noise protocols and metrics of its evaluation.

- Minority-augmented mixing: :func:`minority_sampling_probs` (Eq. 2-4), :class:`MinoritySampler`,
  :func:`sample_lambda` and :func:`mix` (Eq. 5), :class:`MinorityMixup`, :class:`MixupCollate`.
- Label-wise management: :func:`clean_probability` (Eq. 6-8), :func:`refine_labels` (Eq. 9),
  :func:`balancemix_loss` (Eq. 10).
- :class:`BalanceMixEngine`: the per-sample state and the epoch-end refresh hook;
  :class:`BalanceMixOptions` declares every option once and :class:`BalanceMixRecipe` is the
  glue a training loop calls (engine, recorded views, epoch end).
- Label issues (which given labels are wrong, cleanlab-shaped): :func:`find_label_issues`,
  :func:`label_quality_scores`, :func:`describe_label_issues`, :func:`load_label_state`.
- :mod:`balancemix_timm.noise` (Eq. 11) and :mod:`balancemix_timm.metrics` (mAP, Eq. 12-13).
"""

from . import metrics, noise
from .engine import ABLATIONS, BalanceMixEngine, RefreshReport
from .gmm import LabelGMM, clean_probability
from .label_issues import (
    LabelIssueState,
    describe_label_issues,
    find_label_issues,
    label_quality_scores,
    load_label_state,
)
from .loss import BalanceMixLoss, asl_elementwise, balancemix_loss, bce_elementwise, label_weights
from .metrics import average_precision, mean_average_precision
from .mixing import MinorityMixup, MixedBatch, MixupCollate, PairedDataset, mix, mix_targets, sample_lambda
from .noise import mislabel, random_flip, single_positive
from .options import PRESETS, BalanceMixOptions, engine_preset
from .recipe import BalanceMixRecipe
from .refine import LabelState, clean_if_agrees, refine_labels, view_average
from .sampling import (
    MinoritySampler,
    PairedBatchSampler,
    PairedSampler,
    ShardedRandomSampler,
    minority_sampling_probs,
    weight_spread,
)

__version__ = "0.1.0"


__all__ = [
    "PRESETS",
    "engine_preset",
    "clean_if_agrees",
    "ABLATIONS",
    "BalanceMixEngine",
    "BalanceMixOptions",
    "BalanceMixRecipe",
    "BalanceMixLoss",
    "LabelGMM",
    "LabelIssueState",
    "LabelState",
    "MinorityMixup",
    "MinoritySampler",
    "MixedBatch",
    "MixupCollate",
    "PairedBatchSampler",
    "PairedDataset",
    "PairedSampler",
    "RefreshReport",
    "ShardedRandomSampler",
    "asl_elementwise",
    "average_precision",
    "balancemix_loss",
    "bce_elementwise",
    "clean_probability",
    "describe_label_issues",
    "find_label_issues",
    "label_quality_scores",
    "label_weights",
    "load_label_state",
    "mean_average_precision",
    "metrics",
    "minority_sampling_probs",
    "mislabel",
    "mix",
    "mix_targets",
    "noise",
    "random_flip",
    "refine_labels",
    "sample_lambda",
    "single_positive",
    "view_average",
    "weight_spread",
]
