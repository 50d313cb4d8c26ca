"""Model factory: timm backbones with a linear head or an ML-Decoder head.

The ML-Decoder head (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head",
WACV 2023) is reimplemented here because both the published module and timm's copy
(``timm/layers/ml_decoder.py``) crash on torch >= 2.1: their decoder layer is passed to
``nn.TransformerDecoder``, which on newer torch reads ``layer.self_attn`` and passes
``tgt_is_causal``/``memory_is_causal`` arguments that the layer does not accept (ML-Decoder issue
#82). Our :class:`MLDecoderLayer` is a plain module, called directly, with the same parameters
and the same arithmetic as the published layer, so published checkpoints load into it
(:func:`load_ml_decoder_state_dict`).

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
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balancemix_timm._checks import check_ndim, check_tensor

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
    "read_state_dict",
    "load_pretrained_backbone",
    "load_ml_decoder_state_dict",
]

_logger = logging.getLogger(__name__)

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

# Prefixes under which ML-Decoder checkpoints store the head: ``model.head`` for TResNets,
# ``model.fc`` for ResNet-style backbones (see ``add_ml_decoder_head`` in ML-Decoder).
_ML_DECODER_PREFIXES = ("head.decoder.", "fc.decoder.")
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


@dataclass
class LoadReport:
    """What a checkpoint load did.

    Attributes:
        loaded: Keys of the model (its ``state_dict`` names) that received a tensor.
        missing: Keys of the model that the checkpoint did not provide (left as they were).
        unexpected: Checkpoint keys (after mapping) with no counterpart in the model.
        ignored: Checkpoint keys deliberately skipped (classifier weights, head or backbone keys
            that do not apply to the target module).
        mismatched: Checkpoint keys whose shape differs from the model's, with both shapes
            (only filled when mismatches are skipped instead of raising).
        mapping: Checkpoint key -> model key for every loaded tensor.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line with the counts, for logs."""
        return (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, ignored {len(self.ignored)}, shape-mismatched "
            f"{len(self.mismatched)}"
        )


# --------------------------------------------------------------------------------------------
# The ML-Decoder head
# --------------------------------------------------------------------------------------------


class MLDecoderLayer(nn.Module):
    """ML-Decoder's decoder layer: cross-attention and feed-forward, no query self-attention.

    The published layer (``TransformerDecoderLayerOptimal``) drops the self-attention block of
    a transformer decoder layer and keeps post-norm residual blocks. With ``q`` the queries and
    ``m`` the memory (spatial tokens)::

        q = norm1(q + dropout1(q))
        q = norm2(q + dropout2(MHA(q, m, m)))
        q = norm3(q + dropout3(linear2(dropout(relu(linear1(q))))))

    The first line is what remains of the removed self-attention residual (in eval mode it
    doubles the query before the normalisation). Tensors are batch-first here; the published
    layer is sequence-first, which changes no parameter.

    Args:
        embed_dim: Model width ``D``.
        num_heads: Attention heads (8 in ML-Decoder).
        dim_feedforward: Hidden width of the feed-forward block (2048 in ML-Decoder).
        dropout: Dropout of the residual branches, the feed-forward hidden layer and the
            attention weights (0.1 in ML-Decoder).
        layer_norm_eps: Epsilon of the three layer norms.
    """

    def __init__(
        self,
        embed_dim: int,
        *,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_positive_int(embed_dim, "embed_dim")
        _check_positive_int(num_heads, "num_heads")
        _check_positive_int(dim_feedforward, "dim_feedforward")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim must be divisible by num_heads, got embed_dim={embed_dim}, "
                f"num_heads={num_heads}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.norm1 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.multihead_attn = nn.MultiheadAttention(
            embed_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.linear1 = nn.Linear(embed_dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(embed_dim, eps=layer_norm_eps)

    def forward(self, query: Tensor, memory: Tensor) -> Tensor:
        """Decode.

        Args:
            query: ``(B, Q, D)`` query vectors.
            memory: ``(B, N, D)`` tokens to attend to.

        Returns:
            ``(B, Q, D)`` decoded queries.
        """
        x = self.norm1(query + self.dropout1(query))
        attended = self.multihead_attn(x, memory, memory, need_weights=False)[0]
        x = self.norm2(x + self.dropout2(attended))
        hidden = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout3(hidden))


class _MLDecoderModules(nn.Module):
    """Holds the head's parameters under ML-Decoder's names (``decoder.embed_standart`` ...).

    ML-Decoder attaches these to an ``nn.TransformerDecoder`` named ``decoder``; keeping the same
    attribute names (including the ``embed_standart`` spelling) keeps checkpoints loadable.
    It has no ``forward``: :class:`MLDecoderHead` drives it.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_queries: int,
        group_size: int,
        *,
        embed_dim: int,
        num_layers: int,
        layer_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self.embed_standart = nn.Linear(in_features, embed_dim)
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.query_embed.requires_grad_(False)
        self.layers = nn.ModuleList(
            MLDecoderLayer(embed_dim, **layer_kwargs) for _ in range(num_layers)
        )
        self.duplicate_pooling = nn.Parameter(torch.empty(num_queries, embed_dim, group_size))
        self.duplicate_pooling_bias = nn.Parameter(torch.empty(num_classes))


class MLDecoderHead(nn.Module):
    """ML-Decoder classification head (Ridnik et al. 2023), runnable on torch >= 2.1.

    Computation, for backbone features ``x`` of shape ``(B, C, H, W)`` (or tokens ``(B, N, C)``):

    1. tokens ``t = relu(W_e x + b_e)`` of shape ``(B, HW, D)`` (``decoder.embed_standart``);
    2. ``Q`` fixed queries (``decoder.query_embed``, not trainable, drawn from N(0, 1) at
       construction like ``nn.Embedding``), shared by the batch;
    3. ``num_layers`` :class:`MLDecoderLayer` (cross-attention to ``t`` + feed-forward);
    4. group fully-connected: query ``q``'s output ``h_q`` (size ``D``) times its own ``(D, g)``
       matrix (``decoder.duplicate_pooling[q]``), ``g = ceil(K / Q)``; the ``Q * g`` outputs
       are flattened query-major, cut to the first ``K`` and ``decoder.duplicate_pooling_bias``
       (size ``K``) is added. Class ``k`` is therefore read from query ``k // g``.

    The published module loops over the queries in Python; an einsum does the same at once.
    Zero-shot mode (word-vector queries) is not implemented.

    Args:
        in_features: Channels ``C`` of the backbone features.
        num_classes: Number of classes ``K``.
        num_groups: Number of queries before the cap ``Q = min(num_groups, K)``; ``-1`` means
            100 (ML-Decoder's default), i.e. one query per class up to 100 classes.
        embed_dim: Decoder width ``D`` (768 in ML-Decoder).
        num_heads: Attention heads (8).
        dim_feedforward: Feed-forward hidden width (2048).
        dropout: Decoder dropout (0.1).
        num_layers: Decoder layers (1 in ML-Decoder).
        layer_norm_eps: Layer-norm epsilon (1e-5).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        num_groups: int = -1,
        embed_dim: int = 768,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_layers: int = 1,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_positive_int(in_features, "in_features")
        _check_positive_int(num_classes, "num_classes")
        _check_positive_int(embed_dim, "embed_dim")
        _check_positive_int(num_layers, "num_layers")
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or (
            num_groups != -1 and num_groups < 1
        ):
            raise ValueError(f"num_groups must be -1 or a positive int, got {num_groups!r}")
        requested = 100 if num_groups == -1 else num_groups
        self.in_features = in_features
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_queries = min(requested, num_classes)
        # ceil(K / Q); ML-Decoder writes int(K / Q + 0.999), equal whenever Q <= 1000.
        self.group_size = math.ceil(num_classes / self.num_queries)
        self.decoder = _MLDecoderModules(
            in_features,
            num_classes,
            self.num_queries,
            self.group_size,
            embed_dim=embed_dim,
            num_layers=num_layers,
            layer_kwargs=dict(
                num_heads=num_heads,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                layer_norm_eps=layer_norm_eps,
            ),
        )
        self.reset_group_fc()

    def reset_group_fc(self) -> None:
        """Initialise the group fully-connected layer as ML-Decoder does.

        ``nn.init.xavier_normal_`` on the ``(Q, D, g)`` tensor (so fan-in ``D * g`` and fan-out
        ``Q * g``, torch's rule for 3-D tensors) and a zero bias.
        """
        nn.init.xavier_normal_(self.decoder.duplicate_pooling)
        nn.init.zeros_(self.decoder.duplicate_pooling_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits from backbone features.

        Args:
            x: ``(B, C, H, W)`` feature map, or ``(B, N, C)`` tokens.

        Returns:
            ``(B, K)`` logits.
        """
        check_tensor(x, "x")
        check_ndim(x, "x", (3, 4))
        tokens = x.flatten(2).transpose(1, 2) if x.ndim == 4 else x
        if tokens.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have {self.in_features} channels (dim 1 of a (B, C, H, W) map or the "
                f"last dim of (B, N, C) tokens), got shape {tuple(x.shape)}"
            )
        memory = F.relu(self.decoder.embed_standart(tokens))
        h = self.decoder.query_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        for layer in self.decoder.layers:
            h = layer(h, memory)
        out = torch.einsum("bqd,qdg->bqg", h, self.decoder.duplicate_pooling)
        return out.flatten(1)[:, : self.num_classes] + self.decoder.duplicate_pooling_bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"num_queries={self.num_queries}, group_size={self.group_size}, "
            f"embed_dim={self.embed_dim}"
        )


class MLDecoderClassifier(nn.Module):
    """A timm backbone's spatial features followed by :class:`MLDecoderHead`.

    ``forward(x) = head(backbone.forward_features(x))``. Backbones whose features are
    channels-last (timm's ``output_fmt == "NHWC"``, e.g. Swin) are handled; token backbones
    (ViT) feed all their tokens.

    Attributes:
        backbone: The timm model, created with ``num_classes=0`` and ``global_pool=""``.
        head: The ML-Decoder head.
        num_classes: ``K``.
        num_features: Channels of the backbone features.
        pretrained_cfg: The backbone's timm config, so ``timm.data.resolve_data_config(model=...)``
            works on the whole model.
    """

    def __init__(self, backbone: nn.Module, head: MLDecoderHead) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_features"):
            raise ValueError("backbone must have a forward_features method (a timm model)")
        self.backbone = backbone
        self.head = head
        self.num_classes = head.num_classes
        self.num_features = head.in_features
        self.pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: Tensor) -> Tensor:
        """Backbone features, ``(B, C, H, W)`` or ``(B, N, C)``."""
        features = self.backbone.forward_features(x)
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC" and features.ndim == 4:
            features = features.flatten(1, 2)  # (B, H, W, C) -> (B, HW, C)
        return features

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images -> ``(B, K)`` logits."""
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The head (timm's accessor name)."""
        return self.head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Forward to the backbone's gradient checkpointing switch, if it has one."""
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def checkpoint_safe_globals() -> list[Any]:
    """The non-tensor globals that a weights-only ``torch.load`` of a training checkpoint allows.

    Training scripts of this field pickle plain data next to the weights: timm's ``train.py``
    and torchvision's reference scripts store their ``argparse.Namespace`` under ``"args"``;
    ``balancemix-train`` stores NumPy arrays and scalars (the NumPy RNG state, metrics).
    Every entry here rebuilds data only (no code runs beyond the constructor): NumPy's array
    and scalar reconstructors under both module paths (``numpy.core`` before NumPy 2,
    ``numpy._core`` after), ``numpy.ndarray``, ``numpy.dtype`` and its per-type classes,
    ``argparse.Namespace`` and the concrete ``pathlib`` path classes.

    Returns:
        Objects, or ``(object, "module.name")`` pairs for pickles written under another module
        path, in the form ``torch.serialization.safe_globals`` takes.
    """
    import argparse
    import pathlib

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    scalar = core.multiarray.scalar
    allowed: list[Any] = [
        reconstruct,
        scalar,
        np.ndarray,
        np.dtype,
        argparse.Namespace,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
    ]
    allowed += sorted({type(np.dtype(t)) for t in set(np.sctypeDict.values())}, key=str)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for fn in (reconstruct, scalar):
            name = f"{module}.{fn.__name__}"
            if name != f"{fn.__module__}.{fn.__name__}":
                allowed.append((fn, name))
    return allowed


def _torch_load(file: Path, weights_only: bool) -> Any:
    """``torch.load`` on the CPU; weights-only loads allow :func:`checkpoint_safe_globals`."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if not weights_only or safe_globals is None:
        return torch.load(str(file), map_location="cpu", weights_only=weights_only)
    with safe_globals(checkpoint_safe_globals()):
        return torch.load(str(file), map_location="cpu", weights_only=True)


def read_state_dict(
    path: str | os.PathLike[str], *, weights_only: bool = True, name: str = "path"
) -> dict[str, Tensor]:
    """Read a state dict from a local file.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load`` on the
    CPU. Weights-only loads (the default) allow the plain-data globals of
    :func:`checkpoint_safe_globals`, so checkpoints of timm's ``train.py`` (``"state_dict"``,
    ``"state_dict_ema"``, ``"args"`` Namespace, ``"optimizer"`` ...), torchvision's reference
    scripts (``"model"``, ``"lr_scheduler"``, ``"args"`` ...), ML-Decoder / ASL (plain or under
    ``"model"`` / ``"state_dict"``) and ``balancemix-train`` (``last.pth``, ``best.pth``) load
    without unpickling code. A dict wrapping the weights under ``"state_dict"``, ``"model"``,
    ``"state_dict_ema"`` or ``"model_ema"`` is unwrapped (first match, repeatedly), non-tensor
    entries are dropped and a ``"module."`` prefix (DistributedDataParallel) is stripped.

    Args:
        path: The file.
        weights_only: Passed to ``torch.load``; ``False`` only for trusted files that pickle
            other objects next to the weights.
        name: The caller's name for ``path`` (e.g. ``"pretrained_path"``), used in errors.

    Returns:
        Name -> tensor.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: The file cannot be read as a checkpoint, a weights-only load refuses an
            object it pickles (the message says how to re-save the weights), or it holds no
            tensors.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name}: checkpoint file not found: {str(file)!r}")
    what = f"{name} {str(file)!r}"
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(file), device="cpu")
        except Exception as err:
            raise ValueError(f"{what} is not a readable safetensors file: {err}") from err
    else:
        try:
            obj = _torch_load(file, weights_only)
        except pickle.UnpicklingError as err:
            if not weights_only:
                raise ValueError(f"{what} is not a readable torch checkpoint: {err}") from err
            way_out = (
                "If you trust the file, re-save its weights alone and pass that file instead: "
                f"python -c \"import torch; c = torch.load({str(file)!r}, weights_only=False); "
                "torch.save(c.get('state_dict', c.get('model', c)) if isinstance(c, dict) else "
                "c.state_dict(), 'weights.pth')\"; or, in Python, call "
                "load_pretrained_backbone(model, path, weights_only=False)"
            )
            found = re.search(r"GLOBAL (\S+)", str(err))
            if found:
                raise ValueError(
                    f"{what}: a weights-only torch.load refuses this checkpoint (it pickles "
                    f"{found.group(1)}, which is not plain data). {way_out}"
                ) from err
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            reason = lines[-2] if len(lines) >= 2 else str(err)
            raise ValueError(
                f"{what} is not a readable torch checkpoint, or pickles something a weights-only "
                f"torch.load refuses ({reason}). {way_out}"
            ) from err
        except Exception as err:  # torch.load raises many types on a file that is no checkpoint
            raise ValueError(
                f"{what} is not a readable torch checkpoint ({type(err).__name__}: {err})"
            ) from err
    return _unwrap_state_dict(obj, what)


def _unwrap_state_dict(obj: Any, what: str) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} is not a state dict (got {type(obj).__name__})")
    while True:
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{what} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if classifier is None:
        return ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def _timm_filter_fn(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _is_ml_decoder_key(key: str) -> bool:
    return key.startswith(_ML_DECODER_PREFIXES)


def _load_checked(
    model: nn.Module,
    tensors: Mapping[str, Tensor],
    report: LoadReport,
    *,
    skip_mismatched: bool,
    what: str,
) -> None:
    """Load ``tensors`` (model key -> tensor) into ``model`` non-strictly, filling ``report``."""
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    bad: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, value in tensors.items():
        if key not in own:
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            bad.append((key, tuple(value.shape), tuple(own[key].shape)))
            continue
        usable[key] = value
    if bad and not skip_mismatched:
        listed = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"{what}: {len(bad)} tensors have the wrong shape: {listed}{more}")
    report.mismatched.extend(bad)
    result = model.load_state_dict(usable, strict=False)
    report.loaded.extend(sorted(usable))
    report.missing.extend(result.missing_keys)
    report.unexpected.extend(sorted(k for k in tensors if k not in own))


def load_pretrained_backbone(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    convert: bool = True,
    skip_mismatched: bool = False,
    weights_only: bool = True,
    name: str = "source",
) -> LoadReport:
    """Load backbone weights from a local checkpoint, ignoring classifier keys.

    Steps: read (:func:`read_state_dict`); strip a ``"backbone."`` prefix (checkpoints of
    :class:`MLDecoderClassifier`); if ``convert``, apply the ``checkpoint_filter_fn`` of the
    model's timm module when it has one (e.g. TResNet's converter from the inplace-ABN layout
    of ASL/ML-Decoder checkpoints); drop the classifier keys named by the model's timm config
    (``fc.*`` for ResNets, ``head.fc.*`` for TResNets) and ML-Decoder head keys
    (``head.decoder.*``, ``fc.decoder.*``); load with ``strict=False``. Missing/unexpected
    counts are logged.

    Args:
        model: A timm model (with or without its classifier).
        source: A file path or an already-loaded state dict.
        convert: Apply timm's per-architecture checkpoint converter.
        skip_mismatched: Skip (and report) tensors whose shape differs instead of raising.
        weights_only: Passed to ``torch.load``; the default allows the plain-data objects that
            training scripts pickle next to the weights (:func:`read_state_dict`).
        name: The caller's name for ``source`` (``create_model`` passes
            ``"pretrained_path"``), used in errors and logs.

    Returns:
        The :class:`LoadReport`.

    Raises:
        FileNotFoundError: ``source`` is a path to no file.
        ValueError: The file is unreadable or refused by a weights-only load (with the way
            out), or none of its tensors matches the model.
    """
    if isinstance(source, Mapping):
        tensors = _unwrap_state_dict(source, name)
        what = name
    else:
        tensors = read_state_dict(source, weights_only=weights_only, name=name)
        what = f"{name} {str(source)!r}"
    own_keys = set(model.state_dict())
    if not any(k.startswith("backbone.") for k in own_keys):
        body = [k for k in tensors if not _is_ml_decoder_key(k)]
        if body and all(k.startswith("backbone.") for k in body):
            tensors = {
                (k[len("backbone.") :] if k.startswith("backbone.") else k): v
                for k, v in tensors.items()
            }
    report = LoadReport()
    if convert:
        fn = _timm_filter_fn(model)
        if fn is not None:
            tensors = dict(fn(dict(tensors), model))
    classifier = _classifier_prefixes(model)
    kept: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(classifier) or _is_ml_decoder_key(key):
            report.ignored.append(key)
        else:
            kept[key] = value
    _load_checked(model, kept, report, skip_mismatched=skip_mismatched, what=what)
    report.mapping = {k: k for k in report.loaded}  # names after prefix stripping/conversion
    report.missing = [k for k in report.missing if not k.startswith(classifier)]
    if not report.loaded:
        raise ValueError(
            f"{what}: none of its {len(tensors)} tensors match the model "
            f"({type(model).__name__}); first keys: {list(tensors)[:3]}"
        )
    _logger.info("backbone weights from %s: %s", what, report.summary())
    if report.missing or report.unexpected:
        _logger.warning(
            "backbone load from %s: %d missing (e.g. %s), %d unexpected (e.g. %s)",
            what,
            len(report.missing),
            report.missing[:3],
            len(report.unexpected),
            report.unexpected[:3],
        )
    return report


def load_ml_decoder_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor] | str | os.PathLike[str],
    *,
    load_backbone: bool = True,
    convert: bool = True,
    skip_mismatched: bool = False,
    weights_only: bool = True,
) -> LoadReport:
    """Load a published ML-Decoder checkpoint into our model.

    Key mapping:

    * ``head.decoder.X`` (TResNet checkpoints) and ``fc.decoder.X`` (ResNet-style checkpoints)
      -> ``decoder.X`` of :class:`MLDecoderHead` (``head.decoder.X`` of
      :class:`MLDecoderClassifier`). Our names equal the published ones below ``decoder.``
      (``embed_standart``, ``query_embed``, ``layers.0.multihead_attn``/``linear1``/``linear2``/
      ``norm1..3``, ``duplicate_pooling``, ``duplicate_pooling_bias``); keys already in our
      layout (``decoder.X``, ``head.decoder.X``) pass through.
    * Every other key is a backbone key. For an :class:`MLDecoderClassifier` (and
      ``load_backbone``) it goes to ``backbone.``, after timm's converter for the architecture
      when ``convert`` (ML-Decoder's TResNets use inplace-ABN names, which timm's TResNet
      converter maps: ``conv1.0`` -> ``conv1.conv``, ``conv1.1`` -> ``conv1.bn`` and
      ``|w| + 1e-5`` for the batch-norm weights); classifier keys are ignored. For a bare
      :class:`MLDecoderHead` they are reported as ``ignored``.

    Args:
        model: An :class:`MLDecoderHead` or :class:`MLDecoderClassifier`.
        state_dict: The checkpoint (a mapping, possibly wrapped under ``"model"`` /
            ``"state_dict"``) or a path to it.
        load_backbone: Also load the backbone keys (classifier models only).
        convert: Apply timm's checkpoint converter to the backbone keys.
        skip_mismatched: Skip (and report) tensors of the wrong shape (e.g. a different class
            count) instead of raising ``ValueError``.
        weights_only: Passed to ``torch.load`` when a path is given.

    Returns:
        The :class:`LoadReport`; ``mapping`` gives checkpoint key -> model key (for backbone
        keys, the checkpoint key after timm's conversion).
    """
    if isinstance(model, MLDecoderClassifier):
        head, head_prefix = model.head, "head."
    elif isinstance(model, MLDecoderHead):
        head, head_prefix = model, ""
    else:
        raise ValueError(
            f"model must be an MLDecoderHead or MLDecoderClassifier, got {type(model).__name__}"
        )
    if isinstance(state_dict, Mapping):
        tensors = _unwrap_state_dict(state_dict, "state_dict")
    else:
        tensors = read_state_dict(state_dict, weights_only=weights_only)

    report = LoadReport()
    head_tensors: dict[str, Tensor] = {}
    head_source: dict[str, str] = {}
    body: dict[str, Tensor] = {}
    for key, value in tensors.items():
        local: str | None = None
        for prefix in _ML_DECODER_PREFIXES:
            if key.startswith(prefix):
                local = "decoder." + key[len(prefix) :]
        if local is None and key.startswith("decoder."):
            local = key
        if local is None:
            body[key] = value
            continue
        head_tensors[local] = value
        head_source[local] = key

    _load_checked(head, head_tensors, report, skip_mismatched=skip_mismatched, what="state_dict")
    report.mapping.update({head_source[k]: head_prefix + k for k in report.loaded})
    report.loaded = [head_prefix + k for k in report.loaded]
    report.missing = [head_prefix + k for k in report.missing]
    report.unexpected = [head_source[k] for k in report.unexpected]

    if isinstance(model, MLDecoderClassifier) and load_backbone and body:
        backbone = model.backbone
        if all(k.startswith("backbone.") for k in body):
            body = {k[len("backbone.") :]: v for k, v in body.items()}
        if convert:
            fn = _timm_filter_fn(backbone)
            if fn is not None:
                body = dict(fn(dict(body), backbone))
        classifier = _classifier_prefixes(backbone)
        kept = {}
        for key, value in body.items():
            if key.startswith(classifier):
                report.ignored.append(key)
            else:
                kept[key] = value
        sub = LoadReport()
        _load_checked(backbone, kept, sub, skip_mismatched=skip_mismatched, what="state_dict")
        report.loaded += ["backbone." + k for k in sub.loaded]
        report.mapping.update({k: "backbone." + k for k in sub.loaded})
        report.missing += ["backbone." + k for k in sub.missing]
        report.unexpected += sub.unexpected
        report.mismatched += sub.mismatched
    else:
        report.ignored += sorted(body)
    if not report.loaded:
        raise ValueError(
            f"state_dict: none of its {len(tensors)} tensors match the model; ML-Decoder keys "
            f"start with {_ML_DECODER_PREFIXES}, first keys: {list(tensors)[:3]}"
        )
    _logger.info("ML-Decoder checkpoint: %s", report.summary())
    if report.missing or report.unexpected:
        _logger.warning(
            "ML-Decoder checkpoint: %d missing (e.g. %s), %d unexpected (e.g. %s)",
            len(report.missing),
            report.missing[:3],
            len(report.unexpected),
            report.unexpected[:3],
        )
    return report


def _check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
