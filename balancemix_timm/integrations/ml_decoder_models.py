"""Models for ML-Decoder's ``train.py``: its factory, our ML-Decoder head, weight loading.

:func:`create_model` builds ``--bm-model`` (or, when ML-Decoder's TResNet cannot be imported
because inplace-abn is absent, the timm TResNet with the same layout) with
:func:`balancemix_timm.models.create_model`, whose ML-Decoder head runs on torch >= 2.1; a
model from ML-Decoder's own factory gets its decoder heads replaced by ours with the same
weights on torch >= 2.1, where the published head crashes (https://github.com/Alibaba-MIIL/ML_Decoder/issues/82).
ResNets are fed ImageNet-normalised inputs (ML-Decoder's transforms stop at ``ToTensor``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["ML_DECODER_TRESNETS", "create_model", "import_ml_decoder_factory", "replace_ml_decoder_heads"]

_logger = logging.getLogger("balancemix_timm.integrations.ml_decoder")

#: ML-Decoder's ``--model-name`` values and our aliases for the same architectures (timm's
#: ``tresnet_m``, ``tresnet_v2_l`` and ``tresnet_v2_l`` with TResNet-XL's layers).
ML_DECODER_TRESNETS: dict[str, str] = {
    "tresnet_m": "tresnet_m_mldecoder",
    "tresnet_l": "tresnet_l_mldecoder",
    "tresnet_xl": "tresnet_xl_mldecoder",
}

class _MissingFactory:
    """Stands for ML-Decoder's ``create_model`` when its TResNet cannot be imported."""

    def __init__(self, error: ImportError) -> None:
        self.error = error

    def __call__(self, args: Any, *rest: Any, **kwargs: Any) -> nn.Module:
        raise ImportError(
            f"ML-Decoder's models cannot be imported ({self.error}); install inplace-abn (needs a "
            "CUDA toolchain) or build the model with --bm-model"
        ) from self.error

    def __bool__(self) -> bool:
        return False


def import_ml_decoder_factory() -> Callable[..., nn.Module]:
    """ML-Decoder's ``src_files.models.create_model``, or a stand-in without inplace-abn.

    ML-Decoder's TResNet imports ``inplace_abn`` (a CUDA extension) unconditionally; when that
    package is missing the returned stand-in is falsy and raises a clear ``ImportError`` if
    called, and :func:`create_model` builds the timm TResNet instead. Other import errors
    propagate.
    """
    try:
        module = importlib.import_module("src_files.models")
    except ModuleNotFoundError as err:
        if err.name != "inplace_abn":
            raise
        return _MissingFactory(err)
    return module.create_model


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def _published_decoder_heads(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            dec = getattr(child, "decoder", None)
            if type(child).__name__ == "MLDecoder" and isinstance(dec, nn.TransformerDecoder):
                found.append((parent, name, child))
    return found


def replace_ml_decoder_heads(model: nn.Module) -> int:
    """Swap every published ``MLDecoder`` head in ``model`` for our equivalent, same weights.

    The published head hands its layer to ``nn.TransformerDecoder``, which on torch >= 2.1
    reads ``layer.self_attn`` and passes ``tgt_is_causal`` (https://github.com/Alibaba-MIIL/ML_Decoder/issues/82):
    :class:`~balancemix_timm.models.MLDecoderHead` computes the same function with the same
    parameter names and calls its layers directly. Zero-shot heads (``zsl``) are left alone.

    Returns:
        The number of heads replaced.
    """
    from balancemix_timm.models import MLDecoderHead, load_ml_decoder_state_dict

    count = 0
    for parent, name, old in _published_decoder_heads(model):
        if getattr(old, "zsl", 0):
            _logger.warning("zero-shot ML-Decoder head %s left as published (not supported)", name)
            continue
        dec = old.decoder
        layer = dec.layers[0]
        new = MLDecoderHead(
            dec.embed_standart.in_features,
            int(dec.num_classes),
            num_groups=dec.query_embed.num_embeddings,
            embed_dim=dec.embed_standart.out_features,
            num_heads=layer.multihead_attn.num_heads,
            dim_feedforward=layer.linear1.out_features,
            dropout=float(layer.dropout.p),
            num_layers=len(dec.layers),
            layer_norm_eps=float(layer.norm1.eps),
        )
        load_ml_decoder_state_dict(new, old.state_dict())
        ref = next(old.parameters())
        new.to(device=ref.device, dtype=ref.dtype).train(old.training)
        setattr(parent, name, new)
        count += 1
    return count


class _InputNormalization:
    """Forward pre-hook: ``(x - mean) / std`` per channel (ResNets need ImageNet statistics)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0]
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return ((x - mean) / std, *inputs[1:])


def _model_path(args: argparse.Namespace) -> str | None:
    path = getattr(args, "model_path", None) or None
    if path is None or os.path.isfile(path):
        return path
    if str(getattr(args, "model_name", "")).lower() == "tresnet_l" and os.path.isfile("./tresnet_l.pth"):
        return "./tresnet_l.pth"  # ML-Decoder's factory looks there too
    raise ValueError(
        f"--model-path {path!r} is not a local file; --bm-model downloads nothing: fetch it "
        "(e.g. with wget) and pass its path, or pass --model-path '' to start from random weights"
    )


def _load_weights(model: nn.Module, path: str) -> None:
    from balancemix_timm.models import (
        MLDecoderClassifier,
        load_ml_decoder_state_dict,
        load_pretrained_backbone,
        read_state_dict,
    )

    try:
        tensors = read_state_dict(path)
    except Exception as err:  # ML-Decoder's checkpoints may pickle more than tensors
        _logger.warning("weights-only load of %s failed (%s); loading it fully", path, err)
        tensors = read_state_dict(path, weights_only=False)
    has_head = any(k.startswith(("head.decoder.", "fc.decoder.")) for k in tensors)
    if has_head and isinstance(model, MLDecoderClassifier):
        report = load_ml_decoder_state_dict(model, tensors, skip_mismatched=True)
    else:
        target = model.backbone if isinstance(model, MLDecoderClassifier) else model
        report = load_pretrained_backbone(target, tensors, skip_mismatched=True)
    _logger.info("weights from %s: %s", path, report.summary())


def create_model(args: argparse.Namespace, factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The model of the patched script.

    * Without ``--bm-model`` and with ML-Decoder's factory importable: ``factory(args)``, with
      its decoder heads replaced by ours on torch >= 2.1 (where the published one crashes;
      below 2.1 the model is returned untouched).
    * With ``--bm-model NAME`` (or when the factory is missing because inplace-abn is absent
      and ``--model-name`` is a TResNet): :func:`balancemix_timm.models.create_model` with an
      ML-Decoder head (``--use-ml-decoder``, ``--num-of-groups``, ``--decoder-embedding``),
      weights from ``--model-path`` (an ML-Decoder checkpoint, head included, or backbone
      weights), and ImageNet normalisation inside the model for ResNets (``--bm-normalize``).

    Args:
        args: Parsed arguments of the patched script.
        factory: ML-Decoder's ``create_model`` (from :func:`import_ml_decoder_factory`).

    Returns:
        The model, on the CPU.
    """
    name = getattr(args, "bm_model", None)
    model_name = str(getattr(args, "model_name", "")).lower()
    if name is None:
        if factory:
            model = factory(args)
            if _torch_at_least(2, 1):
                n = replace_ml_decoder_heads(model)
                if n:
                    _logger.warning("replaced %d ML-Decoder head(s) by balancemix_timm's (same weights): "
                                    "the published one fails on torch >= 2.1 "
                                    "(nn.TransformerDecoder reads layer.self_attn)", n)
            return model
        if model_name not in ML_DECODER_TRESNETS:
            if factory is None:
                raise ValueError("factory is None and --bm-model is not set")
            return factory(args)  # raises the import error with its explanation
        name = "auto"
        _logger.warning("ML-Decoder's TResNet needs inplace-abn, which is missing: building %s as "
                        "timm's %s through balancemix_timm", model_name, ML_DECODER_TRESNETS[model_name])
    if name == "auto":
        name = ML_DECODER_TRESNETS.get(model_name, model_name)
    from balancemix_timm.models import create_model as bm_create_model
    from balancemix_timm.models import model_default_normalization

    if int(getattr(args, "zsl", 0) or 0):
        raise ValueError("--zsl is not supported with --bm-model")
    use_decoder = bool(int(getattr(args, "use_ml_decoder", 1)))
    kwargs: dict[str, Any] = {}
    if use_decoder:
        kwargs["ml_decoder_kwargs"] = dict(
            num_groups=int(getattr(args, "num_of_groups", -1)),
            embed_dim=768 if int(getattr(args, "decoder_embedding", 768)) < 0 else int(args.decoder_embedding),
        )
    model = bm_create_model(
        name, num_classes=int(args.num_classes), head="ml_decoder" if use_decoder else "linear", **kwargs
    )
    path = _model_path(args)
    if path:
        _load_weights(model, path)
    mode = getattr(args, "bm_normalize", "auto")
    if mode == "auto":
        stats = model_default_normalization(name)
    elif mode == "imagenet":
        from balancemix_timm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        stats = (IMAGENET_MEAN, IMAGENET_STD)
    elif mode == "none":
        stats = None
    else:
        raise ValueError(f"--bm-normalize must be auto, imagenet or none, got {mode!r}")
    if stats is not None:
        model.register_forward_pre_hook(_InputNormalization(*stats))
        model.balancemix_normalization = stats  # type: ignore[assignment]
    _logger.info("model %s (%s head, %d classes) from balancemix_timm; input normalisation: %s",
                 name, "ML-Decoder" if use_decoder else "linear", int(args.num_classes),
                 "none" if stats is None else f"mean {stats[0]} std {stats[1]}")
    return model
