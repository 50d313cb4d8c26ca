"""The ML-Decoder head: its decoder layer, the head and the backbone-plus-head classifier.

The ML-Decoder head (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head",
WACV 2023) is reimplemented here because both the published module and timm's copy
(``timm/layers/ml_decoder.py``) crash on torch >= 2.1: their decoder layer is passed to
``nn.TransformerDecoder``, which on newer torch reads ``layer.self_attn`` and passes
``tgt_is_causal``/``memory_is_causal`` arguments that the layer does not accept (ML-Decoder issue
#82). Our :class:`MLDecoderLayer` is a plain module, called directly, with the same parameters
and the same arithmetic as the published layer, so published checkpoints load into it
(:func:`~balancemix_timm.models.checkpoints.load_ml_decoder_state_dict`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balancemix_timm._checks import check_ndim, check_tensor

__all__ = ["MLDecoderLayer", "MLDecoderHead", "MLDecoderClassifier"]


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
        x = check_tensor(x, "x")
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


def _check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
