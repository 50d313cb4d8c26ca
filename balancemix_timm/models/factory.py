"""Model factory: timm backbones with a linear head or an ML-Decoder head, name aliases and
each family's input normalisation.

Backbone names. ML-Decoder's TResNet-L (layers ``[3, 4, 23, 3]``, bottleneck blocks in every
stage, width 1.0) is timm's ``tresnet_v2_l``; timm's ``tresnet_l`` (``[4, 5, 18, 3]``, width 1.2)
is the older ASL TResNet-L. :data:`MODEL_ALIASES` names ML-Decoder's variants explicitly
(``"tresnet_l_mldecoder"`` -> ``tresnet_v2_l`` ...). TResNets are trained on un-normalised
``[0, 1]`` images (ML-Decoder's transforms stop at ``ToTensor``); ResNets on ImageNet
mean/std: :func:`model_default_normalization` says which.

Nothing here downloads: timm models are always created with ``pretrained=False`` and weights
come from a local file (``pretrained_path``).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from balancemix_timm.models.checkpoints import load_pretrained_backbone
from balancemix_timm.models.head import MLDecoderClassifier, MLDecoderHead, _check_positive_int

__all__ = ["MODEL_ALIASES", "create_model", "resolve_model_name", "model_default_normalization"]

# The package's one logger: log filters name ``balancemix_timm.models``.
_logger = logging.getLogger("balancemix_timm.models")


#: Names for ML-Decoder's backbones, mapped to the timm model (and keyword arguments) with the
#: same architecture and parameter layout. ML-Decoder's TResNet-M ``[3, 4, 11, 3]`` with basic
#: blocks is timm's ``tresnet_m``; its TResNet-L ``[3, 4, 23, 3]`` with bottlenecks throughout is
#: timm's ``tresnet_v2_l``; its TResNet-XL ``[3, 8, 34, 5]`` (bottlenecks, width 1.0) has no
#: registered timm name and is built as ``tresnet_v2_l`` with ``layers=[3, 8, 34, 5]``
#: (timm's own ``tresnet_xl`` is ASL's ``[4, 5, 24, 3]`` at width 1.3).
MODEL_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "tresnet_m_mldecoder": ("tresnet_m", {}),
    "tresnet_l_mldecoder": ("tresnet_v2_l", {}),
    "tresnet_xl_mldecoder": ("tresnet_v2_l", {"layers": [3, 8, 34, 5]}),
}


def resolve_model_name(name: str) -> tuple[str, dict[str, Any]]:
    """Map an alias of :data:`MODEL_ALIASES` to its timm name and extra arguments.

    Args:
        name: A timm model name (optionally with a ``.tag``) or an alias.

    Returns:
        ``(timm_name, extra_kwargs)``; other names are returned unchanged with ``{}``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in MODEL_ALIASES:
        timm_name, extra = MODEL_ALIASES[name]
        return timm_name, dict(extra)
    return name, {}


def model_default_normalization(
    name: str,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input normalisation the model family is trained with, from timm's config.

    ResNets -> ImageNet ``(mean, std)``; TResNets -> ``None``: ML-Decoder (and timm's TResNet
    config, mean 0 / std 1) feed un-normalised ``[0, 1]`` images.

    Args:
        name: timm model name (optionally with a ``.tag``) or an alias of :data:`MODEL_ALIASES`.

    Returns:
        ``(mean, std)`` per channel, or ``None`` when no normalisation is applied.
    """
    timm_name, _ = resolve_model_name(name)
    if not timm.is_model(timm_name):
        raise ValueError(f"name: unknown timm model {name!r}")
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        raise ValueError(f"name: timm has no default config for {name!r}")
    mean = tuple(float(v) for v in cfg.mean)
    std = tuple(float(v) for v in cfg.std)
    if all(v == 0.0 for v in mean) and all(v == 1.0 for v in std):
        return None
    return mean, std


_HEADS = ("linear", "ml_decoder")


def create_model(
    name: str,
    *,
    num_classes: int,
    head: str = "linear",
    pretrained_path: str | os.PathLike[str] | None = None,
    ml_decoder_kwargs: Mapping[str, Any] | None = None,
    drop_rate: float = 0.0,
    **timm_kwargs: Any,
) -> nn.Module:
    """Create a timm backbone with a multi-label head. Never downloads.

    Args:
        name: Any ``timm.create_model`` name, or an alias of :data:`MODEL_ALIASES`
            (``"tresnet_l_mldecoder"`` is ML-Decoder's TResNet-L, timm's ``tresnet_v2_l``).
        num_classes: Number of classes ``K``.
        head: ``"linear"`` (timm's own classifier with ``K`` outputs) or ``"ml_decoder"``
            (:class:`MLDecoderClassifier`: spatial features + :class:`MLDecoderHead`).
        pretrained_path: Local ``.pth``/``.pt``/``.safetensors`` file with backbone weights
            (possibly wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``: checkpoints of
            timm's ``train.py``, torchvision's references, ML-Decoder / ASL and
            ``balancemix-train``'s ``last.pth`` / ``best.pth``), loaded weights-only with
            :func:`load_pretrained_backbone`: classifier keys ignored, not strict. A file it
            cannot read raises ``ValueError`` naming ``pretrained_path`` and the way out.
        ml_decoder_kwargs: Keyword arguments of :class:`MLDecoderHead` (``num_groups``,
            ``embed_dim``, ``num_heads``, ``dim_feedforward``, ``dropout``, ``num_layers``,
            ``layer_norm_eps``); only with ``head="ml_decoder"``.
        drop_rate: timm's dropout before the classifier. It acts in timm's ``forward_head``,
            which the ML-Decoder path does not call, so with ``head="ml_decoder"`` it only
            matters for backbones that use it inside ``forward_features``; the decoder's own
            dropout is ``ml_decoder_kwargs["dropout"]``.
        **timm_kwargs: Passed to ``timm.create_model`` (``drop_path_rate``, ``in_chans`` ...).

    Returns:
        A module mapping ``(B, 3, H, W)`` images to ``(B, K)`` logits.
    """
    _check_positive_int(num_classes, "num_classes")
    if head not in _HEADS:
        raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
    if ml_decoder_kwargs is not None and head != "ml_decoder":
        raise ValueError("ml_decoder_kwargs is only valid with head='ml_decoder'")
    if timm_kwargs.pop("pretrained", False):
        raise ValueError(
            "pretrained=True is not supported (nothing is downloaded): pass pretrained_path"
        )
    for key in ("num_classes", "global_pool") if head == "ml_decoder" else ("num_classes",):
        if key in timm_kwargs:
            raise ValueError(f"{key} is set by create_model and cannot be passed in timm_kwargs")
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    timm_name, extra = resolve_model_name(name)
    if not timm.is_model(timm_name):
        raise ValueError(f"name: unknown timm model {name!r}")
    kwargs = {**extra, **timm_kwargs}

    model: nn.Module
    if head == "linear":
        model = timm.create_model(
            timm_name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, **kwargs
        )
        target = model
    else:
        if drop_rate > 0:
            _logger.warning(
                "drop_rate=%s acts in timm's forward_head, which the ML-Decoder path does not "
                "call; set the decoder dropout with ml_decoder_kwargs['dropout']",
                drop_rate,
            )
        head_kwargs = dict(ml_decoder_kwargs or {})
        allowed = set(inspect.signature(MLDecoderHead.__init__).parameters) - {
            "self",
            "in_features",
            "num_classes",
        }
        unknown = sorted(set(head_kwargs) - allowed)
        if unknown:
            raise ValueError(
                f"ml_decoder_kwargs has unknown keys {unknown}; allowed: {sorted(allowed)}"
            )
        backbone = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            global_pool="",
            drop_rate=drop_rate,
            **kwargs,
        )
        decoder = MLDecoderHead(int(backbone.num_features), num_classes, **head_kwargs)
        model = MLDecoderClassifier(backbone, decoder)
        target = backbone
    if pretrained_path is not None:
        load_pretrained_backbone(target, pretrained_path, name="pretrained_path")
    return model
