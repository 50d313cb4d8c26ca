"""Multi-label image data sets that also return each sample's index.

BalanceMix keeps per-instance state across epochs (the minority sampler's weights, Eq. 2-4;
the per-label clean probabilities, Eq. 6-8; the refined labels, Eq. 9), so every sample has to
carry its position in the training set. The data sets here return ``(image, target, index)``:

* :class:`CocoMultiLabel` reads a COCO ``instances_*.json`` file (as ML-Decoder trains on COCO
  2014: images without annotations are dropped, 82,081 train / 40,137 val images).
* :class:`VocMultiLabel` reads the Pascal-VOC directory layout.
* :class:`IndexedDataset` wraps any data set that returns ``(image, target)`` (for instance
  ML-Decoder's own ``CocoDetection``) so that it returns ``(image, target, index)``.

Labels are kept as an ``(N, K)`` ``torch.uint8`` multi-hot matrix (``labels``): a quarter of the
memory of float32 (82,081 x 80 COCO labels take 6.6 MB) and exact. ``__getitem__`` returns the
row as a float32 ``(K,)`` target, ready for BCE. The labels read from the annotation files stay
available as ``annotation_labels`` when the training labels are replaced (noise injection),
so label precision / recall (Eq. 12-13 of BalanceMix) can be measured against them.

One concern per module: :mod:`~balancemix_timm.data.datasets.base` (the shared data set: label
storage, image reading), :mod:`~balancemix_timm.data.datasets.coco`,
:mod:`~balancemix_timm.data.datasets.voc`, :mod:`~balancemix_timm.data.datasets.indexed`,
:mod:`~balancemix_timm.data.datasets.checks` (:func:`check_same_classes`) and
:mod:`~balancemix_timm.data.datasets.factory` (:func:`build_dataset`). Every name is importable
from ``balancemix_timm.data.datasets``.
"""

# Private names keep importing from this path too.
from balancemix_timm.data.datasets.base import (  # noqa: F401
    _MAX_LISTED_MISSING,
    _WIDE_MODES,
    _as_label_matrix,
    _load_rgb,
    _MultiLabelImageDataset,
    _to_rgb,
)
from balancemix_timm.data.datasets.checks import check_same_classes
from balancemix_timm.data.datasets.coco import (
    CocoMultiLabel,
    _require_keys,  # noqa: F401
)
from balancemix_timm.data.datasets.factory import build_dataset
from balancemix_timm.data.datasets.indexed import IndexedDataset
from balancemix_timm.data.datasets.voc import (
    _DIFFICULT_TEXTS,  # noqa: F401
    VOC_CLASSES,
    VocMultiLabel,
    parse_difficult,
)

__all__ = [
    "VOC_CLASSES",
    "CocoMultiLabel",
    "VocMultiLabel",
    "IndexedDataset",
    "build_dataset",
    "check_same_classes",
    "parse_difficult",
]
