"""Tests of balancemix_timm.models.checkpoints: loading backbone and ML-Decoder weights from checkpoint files."""

from __future__ import annotations

import logging
import re

import pytest
import timm
import torch

from balancemix_timm.models import (
    MLDecoderHead,
    create_model,
    load_ml_decoder_state_dict,
    load_pretrained_backbone,
    read_state_dict,
)
from tests._models import (
    SMALL_HEAD,
    TINY,
    _images,
    _make,
)

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


@pytest.mark.parametrize("kind", ["truncated", "empty"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_damaged_pretrained_file_is_named_as_damaged_or_incomplete(tmp_path, kind, suffix) -> None:
    from safetensors.torch import save_file

    path = tmp_path / f"backbone{suffix}"
    sd = _backbone_ckpt(seed=3)
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        save_file(sd, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"")
    with pytest.raises(ValueError, match=rf"^pretrained_path '{re.escape(str(path))}' is damaged or incomplete"):
        create_model(TINY, num_classes=3, pretrained_path=path)
