"""ML-Decoder integration: model creation (--bm-model, ML-Decoder's factory) and the published head and ASL."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest
import torch
from torch import nn

from balancemix_timm.integrations import ml_decoder as bm
from balancemix_timm.integrations import ml_decoder_models
from tests._ml_decoder import (
    K,
    _checkout,
    needs_checkout,
    parse,
)


# ============================================================================ models
def test_create_model_with_bm_model(tmp_path):
    args = parse(["--bm-model", "resnet10t", "--model-path", "", "--num-classes", "20", "--decoder-embedding", "32"])
    model = bm.create_model(args)
    assert model.head.embed_dim == 32 and model.head.num_classes == 20
    assert model.balancemix_normalization is not None  # ResNet: ImageNet statistics inside the model
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model.eval()
    with torch.no_grad():
        hooked = model(x)
        model._forward_pre_hooks.clear()
        torch.testing.assert_close(hooked, model((x - mean) / std))
    # Weights from --model-path: an ML-Decoder-style checkpoint (head.decoder.* keys) loads whole.
    path = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, path)
    other = bm.create_model(parse(["--bm-model", "resnet10t", "--model-path", str(path), "--num-classes", "20",
                                   "--decoder-embedding", "32", "--bm-normalize", "none"]))
    assert not hasattr(other, "balancemix_normalization")
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="not a local file"):
        bm.create_model(parse(["--bm-model", "resnet10t", "--model-name", "resnet10t"]))
    assert bm.ML_DECODER_TRESNETS["tresnet_l"] == "tresnet_l_mldecoder"


def _src_files_modules() -> list[str]:
    return [m for m in sys.modules if m == "src_files" or m.startswith("src_files.")]


@pytest.fixture()
def fresh_src_files():
    """Forget any imported ``src_files`` package (ML-Decoder's or a fake) before and after."""
    saved = {m: sys.modules.pop(m) for m in _src_files_modules()}
    yield
    for m in _src_files_modules():
        del sys.modules[m]
    sys.modules.update(saved)


def test_missing_inplace_abn_gives_a_falsy_factory(tmp_path, monkeypatch, fresh_src_files):
    pkg = tmp_path / "src_files" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "src_files" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("import inplace_abn\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = bm.import_ml_decoder_factory()
    assert not factory
    with pytest.raises(ImportError, match="--bm-model"):
        factory(parse([]))
    with pytest.raises(ImportError, match="--bm-model"):  # not a TResNet: no fallback
        bm.create_model(parse(["--model-name", "resnet101"]), factory)
    (pkg / "__init__.py").write_text("import some_other_missing_module\n")
    for m in _src_files_modules():
        del sys.modules[m]
    with pytest.raises(ModuleNotFoundError):
        bm.import_ml_decoder_factory()


# ============================================================================ with a checkout


@needs_checkout
@pytest.mark.filterwarnings("ignore::FutureWarning")  # ML-Decoder's torch.jit.script class
def test_checkout_decoder_head_and_asl_match_ours(monkeypatch, train_set, fresh_src_files):
    monkeypatch.syspath_prepend(str(_checkout()))
    ml_decoder = importlib.import_module("src_files.ml_decoder.ml_decoder")
    losses = importlib.import_module("src_files.loss_functions.losses")
    torch.manual_seed(0)
    head = ml_decoder.MLDecoder(num_classes=K, initial_num_features=64, decoder_embedding=32)
    holder = nn.Module()
    holder.head = head
    holder.eval()
    feats = torch.randn(3, 64, 4, 4)
    if ml_decoder_models._torch_at_least(2, 1):
        # fails on torch >= 2.1 (nn.TransformerDecoder reads layers[0].self_attn, which the published layer lacks):
        # https://github.com/Alibaba-MIIL/ML_Decoder/issues/82
        with pytest.raises(AttributeError, match="self_attn"):
            head(feats)
    # The published arithmetic, with its own modules, bypassing nn.TransformerDecoder.
    dec = head.decoder
    with torch.no_grad():
        mem = torch.relu(dec.embed_standart(feats.flatten(2).transpose(1, 2))).transpose(0, 1)
        tgt = dec.query_embed.weight.unsqueeze(1).expand(-1, 3, -1)
        h = dec.layers[0](tgt, mem).transpose(0, 1)
        ref = torch.einsum("bqd,qdg->bqg", h, dec.duplicate_pooling).flatten(1)[:, :K] + dec.duplicate_pooling_bias
    assert bm.replace_ml_decoder_heads(holder) == 1
    assert isinstance(holder.head, importlib.import_module("balancemix_timm.models").MLDecoderHead)
    with torch.no_grad():
        torch.testing.assert_close(holder.head(feats), ref, rtol=1e-5, atol=1e-5)
    # ML-Decoder's ASL equals our criterion with --bm-base-loss asl --bm-reduction sum (no mixing).
    plugin = bm.setup(parse(["--balancemix", "--bm-base-loss", "asl", "--bm-alpha", "0"]), train_set)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    _, y = plugin.mix(x, target.max(dim=1)[0])
    logits = torch.randn(16, K, generator=torch.Generator().manual_seed(1)) * 3
    theirs = losses.AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05, disable_torch_grad_focal_loss=True)(logits, y)
    torch.testing.assert_close(plugin.criterion(logits, y), theirs, rtol=1e-5, atol=1e-4)
