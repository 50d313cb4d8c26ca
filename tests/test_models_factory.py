"""Tests of balancemix_timm.models.factory: create_model's arguments, name aliases and the paper's backbones."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from balancemix_timm.models import (
    MODEL_ALIASES,
    MLDecoderHead,
    create_model,
    load_ml_decoder_state_dict,
    model_default_normalization,
    resolve_model_name,
)
from tests._models import (
    TINY,
    _images,
    _make,
)


def test_drop_rate_reaches_timm_classifier() -> None:
    model = _make(0, TINY, num_classes=3, drop_rate=0.25)
    assert model.drop_rate == 0.25


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
