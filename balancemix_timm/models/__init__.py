"""Models: timm backbones with a linear head or an ML-Decoder head, and checkpoint loading.

One concern per module:

* :mod:`~balancemix_timm.models.head`: the ML-Decoder head (:class:`MLDecoderLayer`,
  :class:`MLDecoderHead`, :class:`MLDecoderClassifier`), runnable on torch >= 2.1;
* :mod:`~balancemix_timm.models.checkpoints`: reading state dicts and loading backbone weights
  and published ML-Decoder checkpoints (:class:`LoadReport`);
* :mod:`~balancemix_timm.models.factory`: :func:`create_model`, the name aliases of
  :data:`MODEL_ALIASES` and :func:`model_default_normalization`.

Every name is importable from ``balancemix_timm.models``. Nothing here downloads.
"""

# Private names keep importing from this path too.
from balancemix_timm.models.checkpoints import (  # noqa: F401
    _ML_DECODER_PREFIXES,
    _WRAPPER_KEYS,
    LoadReport,
    _classifier_prefixes,
    _is_ml_decoder_key,
    _load_checked,
    _timm_filter_fn,
    _torch_load,
    _unwrap_state_dict,
    check_checkpoint_file,
    checkpoint_safe_globals,
    load_ml_decoder_state_dict,
    load_pretrained_backbone,
    read_state_dict,
)
from balancemix_timm.models.factory import (
    _HEADS,  # noqa: F401
    MODEL_ALIASES,
    create_model,
    model_default_normalization,
    resolve_model_name,
)
from balancemix_timm.models.head import (  # noqa: F401
    MLDecoderClassifier,
    MLDecoderHead,
    MLDecoderLayer,
    _check_positive_int,
    _MLDecoderModules,
)

__all__ = [
    "MODEL_ALIASES",
    "LoadReport",
    "MLDecoderLayer",
    "MLDecoderHead",
    "MLDecoderClassifier",
    "create_model",
    "resolve_model_name",
    "model_default_normalization",
    "checkpoint_safe_globals",
    "check_checkpoint_file",
    "read_state_dict",
    "load_pretrained_backbone",
    "load_ml_decoder_state_dict",
]
