"""Tests of balancemix_timm.models: the ML-Decoder head and the timm model factory.

The head is checked against a brute-force re-computation written with explicit loops over
samples, queries, heads and tokens (no nn.MultiheadAttention, no einsum), using the module's
own weights. Checkpoint tests write their files to pytest's tmp_path.
"""

from __future__ import annotations

import logging
import math

import pytest
import timm
import torch
from torch import nn

from balancemix_timm.models import (
    MODEL_ALIASES,
    MLDecoderClassifier,
    MLDecoderHead,
    create_model,
    load_ml_decoder_state_dict,
    load_pretrained_backbone,
    model_default_normalization,
    read_state_dict,
    resolve_model_name,
)

TINY = "test_resnet"  # timm's 0.37M-parameter ResNet, 96 feature channels at stride 32
SMALL_HEAD = {"embed_dim": 16, "num_heads": 2, "dim_feedforward": 24}


def _make(seed: int, *args, **kwargs) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_model(*args, **kwargs)


def _images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g)


def _randomize(module: nn.Module, seed: int) -> None:
    """Give every parameter (layer norms and biases included) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


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


# ------------------------------------------------------------------ loading weights


def _backbone_ckpt(seed: int, num_classes: int = 10) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        src = timm.create_model(TINY, pretrained=False, num_classes=num_classes)
    return {k: v.clone() for k, v in src.state_dict().items()}


@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_pretrained_path_loads_backbone_into_ml_decoder_model(tmp_path, wrapper) -> None:
    sd = _backbone_ckpt(seed=123)
    path = tmp_path / "backbone.pth"
    torch.save({wrapper: sd, "epoch": 3} if wrapper else sd, path)
    kwargs = dict(num_classes=7, head="ml_decoder", ml_decoder_kwargs=SMALL_HEAD)
    fresh = _make(0, TINY, **kwargs)
    loaded = _make(0, TINY, pretrained_path=path, **kwargs)
    own = loaded.backbone.state_dict()
    changed = 0
    for k, v in sd.items():
        if k.startswith("fc."):
            assert k not in own  # classifier is gone from an ml_decoder backbone
            continue
        assert torch.equal(own[k], v), k
        changed += not torch.equal(fresh.backbone.state_dict()[k], v)
    assert changed > 10  # the weights really changed
    # the head is untouched by a backbone checkpoint
    for k, v in fresh.head.state_dict().items():
        assert torch.equal(loaded.head.state_dict()[k], v)


def test_pretrained_path_ignores_classifier_of_linear_model(tmp_path) -> None:
    sd = _backbone_ckpt(seed=5, num_classes=7)  # same class count: fc would load if not ignored
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    fresh = _make(0, TINY, num_classes=7)
    loaded = _make(0, TINY, num_classes=7, pretrained_path=path)
    assert torch.equal(loaded.fc.weight, fresh.fc.weight)
    assert torch.equal(loaded.fc.bias, fresh.fc.bias)
    assert not torch.equal(loaded.fc.weight, sd["fc.weight"])
    assert torch.equal(loaded.conv1[0].weight, sd["conv1.0.weight"])
    assert not torch.equal(fresh.conv1[0].weight, sd["conv1.0.weight"])


def test_pretrained_path_accepts_our_own_ml_decoder_checkpoint(tmp_path) -> None:
    kwargs = dict(num_classes=4, head="ml_decoder", ml_decoder_kwargs=SMALL_HEAD)
    trained = _make(3, TINY, **kwargs)
    path = tmp_path / "ours.pth"
    torch.save({"model": trained.state_dict()}, path)  # keys: backbone.*, head.decoder.*
    fresh = _make(0, TINY, **kwargs)
    loaded = _make(0, TINY, pretrained_path=path, **kwargs)
    for key, value in trained.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    # only the backbone is loaded by pretrained_path
    assert torch.equal(loaded.head.decoder.duplicate_pooling, fresh.head.decoder.duplicate_pooling)


def test_drop_rate_reaches_timm_classifier() -> None:
    model = _make(0, TINY, num_classes=3, drop_rate=0.25)
    assert model.drop_rate == 0.25


def test_pretrained_path_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    sd = _backbone_ckpt(seed=7)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = _make(0, TINY, num_classes=3, head="ml_decoder", ml_decoder_kwargs=SMALL_HEAD,
                  pretrained_path=str(path))
    assert torch.equal(model.backbone.layer4[0].conv1.weight, sd["layer4.0.conv1.weight"])


def test_load_report_counts_and_logging(tmp_path, caplog) -> None:
    sd = _backbone_ckpt(seed=8)
    sd["extra.weight"] = torch.zeros(3)
    del sd["layer1.0.conv1.weight"]
    backbone = timm.create_model(TINY, pretrained=False, num_classes=0, global_pool="")
    path = tmp_path / "c.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.INFO, logger="balancemix_timm.models"):
        report = load_pretrained_backbone(backbone, path)
    assert report.unexpected == ["extra.weight"]
    assert report.missing == ["layer1.0.conv1.weight"]
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(backbone.state_dict()) - 1
    assert "1 missing" in caplog.text and "1 unexpected" in caplog.text


def test_missing_pretrained_path_names_the_file(tmp_path) -> None:
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        create_model(TINY, num_classes=3, head="ml_decoder", pretrained_path=path)
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        read_state_dict(path)


def _timm_train_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    """The dict timm's train.py (CheckpointSaver) writes: args is an argparse.Namespace."""
    import argparse

    import numpy as np

    model = timm.create_model(TINY, pretrained=False, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(_images(2)).sum().backward()
    opt.step()
    args = argparse.Namespace(model=TINY, lr=0.1, mean=(0.485, 0.456, 0.406), std=None,
                              aa="rand-m9-mstd0.5", epochs=300, device="cuda:0", amp_dtype="float16")
    return {
        "epoch": 12, "arch": TINY, "state_dict": sd, "optimizer": opt.state_dict(), "version": 2,
        "args": args, "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "state_dict_ema": {k: torch.zeros_like(v) for k, v in sd.items()},
        "metric": float(np.float64(71.5)),
    }


def _torchvision_reference_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    """The dict torchvision's references/classification/train.py writes."""
    import argparse

    model = timm.create_model(TINY, pretrained=False, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2)
    main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[2])
    args = argparse.Namespace(model="resnet50", lr=0.5, lr_warmup_method="linear", weights=None,
                              output_dir=".", device="cuda", distributed=True, interpolation="bilinear")
    ema = {"module." + k: torch.zeros_like(v) for k, v in sd.items()}
    ema["n_averaged"] = torch.tensor(7)
    return {"model": {"module." + k: v for k, v in sd.items()}, "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": 99, "args": args, "model_ema": ema,
            "scaler": {"scale": 1024.0}}


def _balancemix_run_checkpoint(sd: dict[str, torch.Tensor]) -> dict:
    """The shape of balancemix-train's last.pth: NumPy RNG state, NumPy scalars in metrics."""
    import random

    import numpy as np

    rng = np.random.RandomState(0)
    return {"format": "balancemix-timm/1", "epoch": 1, "config": {"model": TINY, "lr": 0.05},
            "model": sd, "ema": None, "given_labels": torch.zeros(4, 3),
            "best": {"mAP": np.float64(41.5), "epoch": np.int64(1)},
            "metrics": [{"mAP": np.float32(41.5), "ap": np.arange(3, dtype=np.float64)}],
            "rng": {"python": random.Random(0).getstate(), "numpy": rng.get_state(),
                    "torch": torch.get_rng_state()}}


@pytest.mark.parametrize(
    "shape",
    ["timm_train", "torchvision_reference", "ml_decoder_plain", "asl_model_module", "balancemix_run",
     "numpy1_balancemix_run"],
)
def test_pretrained_path_loads_checkpoints_of_the_usual_training_scripts(tmp_path, shape) -> None:
    sd = _backbone_ckpt(seed=11)
    if shape == "timm_train":
        ckpt = _timm_train_checkpoint(sd)
    elif shape == "torchvision_reference":
        ckpt = _torchvision_reference_checkpoint(sd)
    elif shape == "ml_decoder_plain":
        ckpt = sd
    elif shape == "asl_model_module":
        ckpt = {"model": {"module." + k: v for k, v in sd.items()}, "epoch": 40}
    elif shape == "balancemix_run":
        ckpt = _balancemix_run_checkpoint(sd)
    else:
        ckpt = None
    path = tmp_path / f"{shape}.pth"
    if shape == "numpy1_balancemix_run":
        # Written under NumPy 1, whose pickles name numpy.core.multiarray (NumPy 2: numpy._core).
        import io

        buf = io.BytesIO()
        torch.save(_balancemix_run_checkpoint(sd), buf, _use_new_zipfile_serialization=False)
        raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray" in raw
        path.write_bytes(raw)
    else:
        torch.save(ckpt, path)
    model = _make(0, TINY, num_classes=3, pretrained_path=path)
    for key, value in sd.items():
        if not key.startswith("fc."):
            assert torch.equal(model.state_dict()[key], value), key


class _NotPlainData:
    """A class no weights-only load allows."""


def test_pretrained_path_refused_or_unreadable_file_raises_value_error(tmp_path) -> None:
    sd = _backbone_ckpt(seed=2)
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": sd, "extra": _NotPlainData()}, path)
    with pytest.raises(ValueError, match=r"pretrained_path .*_NotPlainData.*re-save its weights"):
        create_model(TINY, num_classes=3, pretrained_path=path)
    # the way out the message gives: a trusted file loads with weights_only=False
    report = load_pretrained_backbone(timm.create_model(TINY, num_classes=3), path, weights_only=False)
    assert report.loaded
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="pretrained_path .*garbage.pth.* not a readable torch checkpoint"):
        create_model(TINY, num_classes=3, pretrained_path=garbage)


def test_checkpoint_of_another_architecture_fails_loudly(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(2), "b.bias": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="none of its 2 tensors"):
        create_model(TINY, num_classes=3, pretrained_path=path)
    sd = _backbone_ckpt(seed=1)
    sd["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match="conv1.0.weight"):
        create_model(TINY, num_classes=3, pretrained_path=path)


def _published_style_state_dict(prefix: str, *, C: int, D: int, F: int, Q: int, g: int, K: int,
                                seed: int) -> dict[str, torch.Tensor]:
    """Key names as in ML-Decoder checkpoints (``{prefix}decoder.*``), random values."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "decoder.embed_standart.weight": (D, C),
        "decoder.embed_standart.bias": (D,),
        "decoder.query_embed.weight": (Q, D),
        "decoder.layers.0.norm1.weight": (D,),
        "decoder.layers.0.norm1.bias": (D,),
        "decoder.layers.0.multihead_attn.in_proj_weight": (3 * D, D),
        "decoder.layers.0.multihead_attn.in_proj_bias": (3 * D,),
        "decoder.layers.0.multihead_attn.out_proj.weight": (D, D),
        "decoder.layers.0.multihead_attn.out_proj.bias": (D,),
        "decoder.layers.0.linear1.weight": (F, D),
        "decoder.layers.0.linear1.bias": (F,),
        "decoder.layers.0.linear2.weight": (D, F),
        "decoder.layers.0.linear2.bias": (D,),
        "decoder.layers.0.norm2.weight": (D,),
        "decoder.layers.0.norm2.bias": (D,),
        "decoder.layers.0.norm3.weight": (D,),
        "decoder.layers.0.norm3.bias": (D,),
        "decoder.duplicate_pooling": (Q, D, g),
        "decoder.duplicate_pooling_bias": (K,),
    }
    return {prefix + k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_load_ml_decoder_state_dict_resnet_style_keys() -> None:
    model = _make(0, TINY, num_classes=7, head="ml_decoder",
                  ml_decoder_kwargs={"num_groups": 3, **SMALL_HEAD})
    published = _published_style_state_dict("fc.", C=96, D=16, F=24, Q=3, g=3, K=7, seed=0)
    backbone = _backbone_ckpt(seed=99, num_classes=0)
    ckpt = {"model": {**backbone, **published, "fc.decoder.not_ours": torch.zeros(1)}}
    report = load_ml_decoder_state_dict(model, ckpt)
    own = model.state_dict()
    for key, value in published.items():
        target = "head." + key[len("fc."):]
        assert report.mapping[key] == target
        assert torch.equal(own[target], value), key
    for key, value in backbone.items():
        assert torch.equal(own["backbone." + key], value), key
    assert report.missing == []
    assert report.unexpected == ["fc.decoder.not_ours"]
    assert len(report.loaded) == len(own)


def test_load_ml_decoder_state_dict_into_bare_head_tresnet_style() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = MLDecoderHead(32, 10, num_groups=4, embed_dim=8, num_heads=2, dim_feedforward=12)
    published = _published_style_state_dict("head.", C=32, D=8, F=12, Q=4, g=3, K=10, seed=1)
    ckpt = {**published, "body.conv1.0.weight": torch.zeros(8, 48, 3, 3)}
    report = load_ml_decoder_state_dict(head, ckpt)
    for key, value in published.items():
        assert torch.equal(head.state_dict()[key[len("head."):]], value), key
    assert report.ignored == ["body.conv1.0.weight"]
    assert report.missing == [] and report.unexpected == []
    x = torch.rand(1, 32, 2, 2, generator=torch.Generator().manual_seed(0))
    assert head.eval()(x).shape == (1, 10)


def test_load_ml_decoder_state_dict_shape_mismatch(tmp_path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        head = MLDecoderHead(32, 12, num_groups=4, embed_dim=8, num_heads=2, dim_feedforward=12)
    published = _published_style_state_dict("head.", C=32, D=8, F=12, Q=4, g=3, K=10, seed=1)
    with pytest.raises(ValueError, match="duplicate_pooling_bias"):
        load_ml_decoder_state_dict(head, published)
    path = tmp_path / "mld.pth"
    torch.save({"state_dict": published}, path)
    before = head.decoder.duplicate_pooling_bias.detach().clone()
    report = load_ml_decoder_state_dict(head, path, skip_mismatched=True)
    assert [m[0] for m in report.mismatched] == ["decoder.duplicate_pooling_bias"]
    assert report.mismatched[0][1:] == ((10,), (12,))
    assert torch.equal(head.decoder.duplicate_pooling_bias, before)
    assert torch.equal(head.decoder.duplicate_pooling, published["head.decoder.duplicate_pooling"])


def test_tresnet_inplace_abn_checkpoint_is_converted() -> None:
    """ML-Decoder's TResNet checkpoints use inplace-ABN names; timm's converter maps them."""
    kwargs = dict(num_classes=3, head="ml_decoder", ml_decoder_kwargs=SMALL_HEAD,
                  layers=[1, 1, 1, 1])
    model = _make(0, "tresnet_m", **kwargs)
    src = _make(1, "tresnet_m", **kwargs).backbone.state_dict()
    renamed = {}
    for key, value in src.items():  # timm name -> inplace-ABN name for the stem
        key = key.replace("body.conv1.conv.", "body.conv1.0.").replace("body.conv1.bn.",
                                                                        "body.conv1.1.")
        renamed[key] = value
    assert "body.conv1.conv.weight" not in renamed
    report = load_ml_decoder_state_dict(model, {"model": renamed})
    own = model.backbone.state_dict()
    assert torch.equal(own["body.conv1.conv.weight"], src["body.conv1.conv.weight"])
    # inplace-ABN stores signed weights and uses |w| + eps: batch-norm weights become |w| + 1e-5
    for key in ("body.conv1.bn.weight", "body.layer2.0.conv1.bn.weight"):
        torch.testing.assert_close(own[key], src[key].abs() + 1e-5)
    assert report.missing == [k for k in model.state_dict() if k.startswith("head.")]


# ------------------------------------------------------------------ names and normalisation


def test_aliases_and_normalization() -> None:
    assert resolve_model_name("tresnet_l_mldecoder") == ("tresnet_v2_l", {})
    assert resolve_model_name("resnet101") == ("resnet101", {})
    assert set(MODEL_ALIASES) >= {"tresnet_l_mldecoder", "tresnet_m_mldecoder"}
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert model_default_normalization("resnet101") == imagenet
    assert model_default_normalization("resnet101.tv_in1k") == imagenet
    assert model_default_normalization("tresnet_v2_l") is None
    assert model_default_normalization("tresnet_l_mldecoder") is None
    with pytest.raises(ValueError, match="name"):
        model_default_normalization("no_such_model_xyz")


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="head"):
        create_model(TINY, num_classes=3, head="mlp")
    with pytest.raises(ValueError, match="ml_decoder_kwargs"):
        create_model(TINY, num_classes=3, ml_decoder_kwargs={"num_groups": 2})
    with pytest.raises(ValueError, match="ml_decoder_kwargs"):
        create_model(TINY, num_classes=3, head="ml_decoder", ml_decoder_kwargs={"groups": 2})
    with pytest.raises(ValueError, match="pretrained"):
        create_model(TINY, num_classes=3, pretrained=True)
    with pytest.raises(ValueError, match="num_classes"):
        create_model(TINY, num_classes=0)
    with pytest.raises(ValueError, match="name"):
        create_model("no_such_model_xyz", num_classes=3)
    with pytest.raises(ValueError, match="num_groups"):
        MLDecoderHead(8, 3, num_groups=0)
    with pytest.raises(ValueError, match="num_heads"):
        MLDecoderHead(8, 3, embed_dim=10, num_heads=4)
    head = MLDecoderHead(8, 3, embed_dim=8, num_heads=2, dim_feedforward=8)
    with pytest.raises(ValueError, match="channels"):
        head(torch.zeros(1, 7, 2, 2))
    with pytest.raises(ValueError, match="x must have 3 or 4 dimensions"):
        head(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="model must be"):
        load_ml_decoder_state_dict(nn.Linear(2, 2), {})


# ------------------------------------------------------------------ the paper's backbones


def test_ml_decoder_tresnet_l_is_tresnet_v2_l() -> None:
    """ML-Decoder's TResNet-L is timm's tresnet_v2_l ([3, 4, 23, 3]), not tresnet_l."""
    model = _make(0, "tresnet_l_mldecoder", num_classes=80, head="ml_decoder").eval()
    body = model.backbone.body
    assert [len(body.layer1), len(body.layer2), len(body.layer3), len(body.layer4)] == [3, 4, 23, 3]
    assert model.head.in_features == 2048
    assert (model.head.num_queries, model.head.group_size) == (80, 1)
    with torch.no_grad():
        assert model(_images(1, 64)).shape == (1, 80)
    asl = timm.create_model("tresnet_l", pretrained=False, num_classes=0)
    assert len(asl.body.layer3) == 18


def test_resnet101_with_ml_decoder_head() -> None:
    model = _make(0, "resnet101", num_classes=80, head="ml_decoder").eval()
    assert model.head.in_features == 2048
    with torch.no_grad():
        assert model(_images(1, 64)).shape == (1, 80)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tresnet_l_mldecoder", "resnet101"])
def test_paper_backbones_448_forward_backward(name: str) -> None:
    model = _make(0, name, num_classes=80, head="ml_decoder").train()
    out = model(_images(2, 448))
    assert out.shape == (2, 80)
    out.sum().backward()
    assert model.head.decoder.duplicate_pooling.grad is not None
