"""Tests of balancemix_timm.models.head: the ML-Decoder head's shapes, training behaviour and a brute-force check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from balancemix_timm.models import (
    MLDecoderClassifier,
    MLDecoderHead,
)
from tests._models import (
    SMALL_HEAD,
    TINY,
    _images,
    _make,
    _randomize,
)

# ------------------------------------------------------------------ shapes and structure


def test_linear_head_output_shape() -> None:
    model = _make(0, TINY, num_classes=7).eval()
    with torch.no_grad():
        out = model(_images())
    assert out.shape == (2, 7)
    assert model.get_classifier().out_features == 7


def test_ml_decoder_output_shape_and_groups_not_dividing_classes() -> None:
    model = _make(
        0, TINY, num_classes=7, head="ml_decoder", ml_decoder_kwargs={"num_groups": 3, **SMALL_HEAD}
    )
    assert isinstance(model, MLDecoderClassifier)
    head = model.head
    assert (head.num_queries, head.group_size) == (3, 3)  # ceil(7 / 3) = 3
    assert head.decoder.duplicate_pooling.shape == (3, 16, 3)
    assert head.decoder.duplicate_pooling_bias.shape == (7,)
    assert head.decoder.query_embed.weight.shape == (3, 16)
    assert head.in_features == 96
    with torch.no_grad():
        assert model.eval()(_images()).shape == (2, 7)


@pytest.mark.parametrize(
    ("num_classes", "num_groups", "queries", "group"),
    [(5, -1, 5, 1), (80, -1, 80, 1), (250, -1, 100, 3), (9000, -1, 100, 90), (10, 4, 4, 3),
     (3, 50, 3, 1)],
)
def test_query_count_and_group_size(num_classes, num_groups, queries, group) -> None:
    head = MLDecoderHead(8, num_classes, num_groups=num_groups, embed_dim=8, num_heads=2,
                         dim_feedforward=8)
    assert (head.num_queries, head.group_size) == (queries, group)
    x = torch.rand(3, 8, 2, 2, generator=torch.Generator().manual_seed(1))
    assert head.eval()(x).shape == (3, num_classes)


def test_default_head_sizes_match_ml_decoder() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = MLDecoderHead(2048, 80)
    layer = head.decoder.layers[0]
    assert len(head.decoder.layers) == 1
    assert head.decoder.embed_standart.weight.shape == (768, 2048)
    assert layer.multihead_attn.num_heads == 8
    assert layer.multihead_attn.in_proj_weight.shape == (3 * 768, 768)
    assert layer.linear1.weight.shape == (2048, 768)
    assert layer.dropout.p == layer.dropout1.p == layer.multihead_attn.dropout == 0.1
    assert (head.num_queries, head.group_size) == (80, 1)
    # xavier-normal on a (Q, D, g) tensor: std = sqrt(2 / (D*g + Q*g)), zero bias
    w = head.decoder.duplicate_pooling
    expected_std = math.sqrt(2.0 / (768 * 1 + 80 * 1))
    assert abs(w.std().item() - expected_std) / expected_std < 0.02
    assert torch.count_nonzero(head.decoder.duplicate_pooling_bias) == 0


def test_parameter_names_follow_ml_decoder_checkpoints() -> None:
    model = _make(0, TINY, num_classes=5, head="ml_decoder", ml_decoder_kwargs=SMALL_HEAD)
    head_keys = {k for k in model.state_dict() if k.startswith("head.")}
    expected = {
        "head.decoder.embed_standart.weight",
        "head.decoder.embed_standart.bias",
        "head.decoder.query_embed.weight",
        "head.decoder.duplicate_pooling",
        "head.decoder.duplicate_pooling_bias",
        "head.decoder.layers.0.multihead_attn.in_proj_weight",
        "head.decoder.layers.0.multihead_attn.in_proj_bias",
        "head.decoder.layers.0.multihead_attn.out_proj.weight",
        "head.decoder.layers.0.multihead_attn.out_proj.bias",
    }
    for name in ("linear1", "linear2", "norm1", "norm2", "norm3"):
        expected |= {f"head.decoder.layers.0.{name}.weight", f"head.decoder.layers.0.{name}.bias"}
    assert head_keys == expected


# ------------------------------------------------------------------ training behaviour


def test_gradients_reach_backbone_and_head_but_not_queries() -> None:
    model = _make(
        0, TINY, num_classes=7, head="ml_decoder", ml_decoder_kwargs={"num_groups": 3, **SMALL_HEAD}
    ).train()
    model(_images()).square().sum().backward()
    head = model.head.decoder
    checked = {
        "backbone stem": model.backbone.conv1[0].weight if isinstance(
            model.backbone.conv1, nn.Sequential) else model.backbone.conv1.weight,
        "embed_standart": head.embed_standart.weight,
        "in_proj": head.layers[0].multihead_attn.in_proj_weight,
        "linear1": head.layers[0].linear1.weight,
        "norm3": head.layers[0].norm3.weight,
        "duplicate_pooling": head.duplicate_pooling,
        "duplicate_pooling_bias": head.duplicate_pooling_bias,
    }
    for name, p in checked.items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    q = head.query_embed.weight
    assert not q.requires_grad and q.grad is None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.decoder.query_embed.weight" not in trainable
    assert "head.decoder.duplicate_pooling" in trainable


def test_query_embedding_unchanged_by_an_optimizer_step() -> None:
    model = _make(1, TINY, num_classes=4, head="ml_decoder", ml_decoder_kwargs=SMALL_HEAD)
    before = model.head.decoder.query_embed.weight.detach().clone()
    w_before = model.head.decoder.duplicate_pooling.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(_images()).sum().backward()
    opt.step()
    assert torch.equal(model.head.decoder.query_embed.weight, before)
    assert not torch.equal(model.head.decoder.duplicate_pooling, w_before)


def test_dropout_active_in_train_mode_only() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = MLDecoderHead(6, 5, embed_dim=8, num_heads=2, dim_feedforward=8, dropout=0.5)
    x = torch.rand(2, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        a, b = head(x), head(x)
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------ brute-force equivalence


def _layer_norm(
    v: list[float], weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> list[float]:
    n = len(v)
    mean = sum(v) / n
    var = sum((x - mean) ** 2 for x in v) / n
    return [(x - mean) / math.sqrt(var + eps) * weight[i].item() + bias[i].item()
            for i, x in enumerate(v)]


def _affine(weight: torch.Tensor, bias: torch.Tensor, v: list[float]) -> list[float]:
    return [sum(weight[o, i].item() * v[i] for i in range(len(v))) + bias[o].item()
            for o in range(weight.shape[0])]


def _brute_force_head(head: MLDecoderHead, x: torch.Tensor) -> torch.Tensor:
    """ML-Decoder's eval-mode forward with Python loops and scalar arithmetic."""
    dec = head.decoder
    layer = dec.layers[0]
    attn = layer.multihead_attn
    D, H = head.embed_dim, attn.num_heads
    dh = D // H
    eps = layer.norm1.eps
    w_in, b_in = attn.in_proj_weight, attn.in_proj_bias
    wq, wk, wv = w_in[:D], w_in[D:2 * D], w_in[2 * D:]
    bq, bk, bv = b_in[:D], b_in[D:2 * D], b_in[2 * D:]
    B, C, Hh, Ww = x.shape
    out = torch.zeros(B, head.num_classes, dtype=torch.float64)
    for b in range(B):
        tokens = []
        for r in range(Hh):  # row-major spatial order, as flatten(2) gives
            for c in range(Ww):
                feat = [x[b, ch, r, c].item() for ch in range(C)]
                tokens.append([max(0.0, v) for v in _affine(dec.embed_standart.weight,
                                                            dec.embed_standart.bias, feat)])
        keys = [_affine(wk, bk, t) for t in tokens]
        values = [_affine(wv, bv, t) for t in tokens]
        decoded = []
        for q in range(head.num_queries):
            query = [dec.query_embed.weight[q, d].item() for d in range(D)]
            # removed self-attention block: tgt + dropout1(tgt) is 2 * tgt in eval mode
            h1 = _layer_norm([2.0 * v for v in query], layer.norm1.weight, layer.norm1.bias, eps)
            qv = _affine(wq, bq, h1)
            concat = []
            for hd in range(H):
                sl = range(hd * dh, (hd + 1) * dh)
                scores = [sum(qv[i] * k[i] for i in sl) / math.sqrt(dh) for k in keys]
                top = max(scores)
                e = [math.exp(s - top) for s in scores]
                z = sum(e)
                concat += [sum(e[n] / z * values[n][i] for n in range(len(tokens))) for i in sl]
            attended = _affine(attn.out_proj.weight, attn.out_proj.bias, concat)
            h2 = _layer_norm([a + t for a, t in zip(h1, attended)], layer.norm2.weight,
                             layer.norm2.bias, eps)
            hidden = [max(0.0, v) for v in _affine(layer.linear1.weight, layer.linear1.bias, h2)]
            ff = _affine(layer.linear2.weight, layer.linear2.bias, hidden)
            decoded.append(_layer_norm([a + f for a, f in zip(h2, ff)], layer.norm3.weight,
                                       layer.norm3.bias, eps))
        g = head.group_size
        for k in range(head.num_classes):
            q, j = divmod(k, g)  # class k is output j of query q
            w = dec.duplicate_pooling[q, :, j]
            out[b, k] = sum(decoded[q][d] * w[d].item() for d in range(D)) \
                + dec.duplicate_pooling_bias[k].item()
    return out


@pytest.mark.parametrize(("num_classes", "num_groups"), [(7, 3), (5, -1), (6, 2)])
def test_head_matches_brute_force(num_classes: int, num_groups: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        head = MLDecoderHead(5, num_classes, num_groups=num_groups, embed_dim=8, num_heads=2,
                             dim_feedforward=12)
    head = head.double().eval()
    _randomize(head, seed=num_classes)
    x = torch.randn(2, 5, 2, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        got = head(x)
    expected = _brute_force_head(head, x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_token_input_equals_spatial_input() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = MLDecoderHead(6, 4, embed_dim=8, num_heads=2, dim_feedforward=8).eval()
    x = torch.randn(2, 6, 3, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(head(x), head(x.flatten(2).transpose(1, 2)))


def test_channels_last_backbone_features_are_flattened() -> None:
    class NHWCBackbone(nn.Module):
        output_fmt = "NHWC"
        num_features = 6

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)

    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = MLDecoderHead(6, 4, embed_dim=8, num_heads=2, dim_feedforward=8).eval()
    model = MLDecoderClassifier(NHWCBackbone(), head).eval()
    x = torch.randn(2, 6, 3, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), head(x))
