"""ML-Decoder integration: flags, plugin calls in a stand-in of ML-Decoder's loop, the patch.

In CI (no ML-Decoder checkout) the plugin drives a stand-in training loop written here with
the same statement order as the patched ``train.py`` (CPU, timm ``resnet10t`` with an
ML-Decoder head at 32 px, a tiny COCO-format demo set read by a stand-in of ML-Decoder's
``CocoDetection``), and the patch applier is checked against :mod:`difflib`.

With ``ML_DECODER_DIR`` pointing at a checkout of Alibaba-MIIL/ML_Decoder (8a9e984), the real
``train.py`` is copied, patched through the command, compiled, its ``--help`` is checked for the
flags, a non-matching file is refused and left unchanged, the patched script trains two epochs
on CPU (with ``--balancemix`` and without), and the published decoder head and ASL are compared
with ours. Those tests are skipped otherwise::

    ML_DECODER_DIR=/path/to/ML_Decoder python -m pytest tests/test_ml_decoder_integration.py -q
"""

from __future__ import annotations

import argparse
import configparser
import difflib
import hashlib
import importlib
import importlib.util
import math
import os
import py_compile
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from balancemix_timm.data.datasets import CocoMultiLabel
from balancemix_timm.data.demo import make_demo_dataset
from balancemix_timm.integrations import ml_decoder as bm
from balancemix_timm.integrations import ml_decoder_models
from balancemix_timm.integrations import patch_ml_decoder as pm
from balancemix_timm.models import create_model as bm_create_model
from balancemix_timm.utils import ModelEma

REPO = Path(__file__).resolve().parents[1]
ML_DECODER_DIR = os.environ.get("ML_DECODER_DIR")
needs_checkout = pytest.mark.skipif(
    not ML_DECODER_DIR, reason="set ML_DECODER_DIR to an ML-Decoder checkout (8a9e984) to run"
)

K = 20
N_TRAIN = 48

# A stand-in of pycocotools' COCO index: the attributes ML-Decoder's CocoDetection uses.
STUB_COCO = textwrap.dedent('''
    import json
    from collections import defaultdict

    class COCO:
        def __init__(self, annotation_file):
            with open(annotation_file) as fh:
                data = json.load(fh)
            self.anns = {a["id"]: a for a in data["annotations"]}
            self.imgs = {i["id"]: i for i in data["images"]}
            self.cats = {c["id"]: c for c in data["categories"]}
            self.imgToAnns = defaultdict(list)
            for a in data["annotations"]:
                self.imgToAnns[a["image_id"]].append(a)

        def getAnnIds(self, imgIds):
            return [a["id"] for a in self.imgToAnns[imgIds]]

        def loadAnns(self, ids):
            return [self.anns[i] for i in ids]

        def loadImgs(self, ids):
            return [self.imgs[ids]]
''')
_ns: dict = {}
exec(STUB_COCO, _ns)  # noqa: S102 - test stand-in
StubCOCO = _ns["COCO"]


class MLDecoderStyleCoco(Dataset):
    """Stand-in of ML-Decoder's ``CocoDetection``: ``ids`` in ``imgToAnns`` order, ``cat2cat``,
    ``transform``, and a (3, K) target binned by box area (small / medium / large)."""

    def __init__(self, root: str, ann_file: str, transform, width: int = K) -> None:
        self.root, self.coco, self.transform, self.width = root, StubCOCO(ann_file), transform, width
        self.ids = list(self.coco.imgToAnns.keys())
        self.cat2cat = {cat: i for i, cat in enumerate(self.coco.cats.keys())}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        img_id = self.ids[index]
        target = torch.zeros((3, self.width), dtype=torch.long)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id)):
            group = 0 if ann["area"] < 32 * 32 else (1 if ann["area"] < 96 * 96 else 2)
            target[group][self.cat2cat[ann["category_id"]]] = 1
        path = self.coco.loadImgs(img_id)[0]["file_name"]
        img = Image.open(os.path.join(self.root, path)).convert("RGB")
        return self.transform(img), target


TF = T.Compose([T.Resize((32, 32)), T.ToTensor()])  # deterministic: views equal the image


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mld_demo")
    return make_demo_dataset(root, num_train=N_TRAIN, num_val=16, num_classes=K, image_size=32)


@pytest.fixture()
def train_set(demo):
    return MLDecoderStyleCoco(str(demo.train_images), str(demo.train_annotations), TF)


@pytest.fixture()
def val_set(demo):
    return MLDecoderStyleCoco(str(demo.val_images), str(demo.val_annotations), TF)


def ml_decoder_parser() -> argparse.ArgumentParser:
    """The flags of ML-Decoder's train.py that the integration reads (a stand-in parser)."""
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="/x")
    p.add_argument("--lr", default=1e-4, type=float)
    p.add_argument("--model-name", default="tresnet_l")
    p.add_argument("--model-path", default="https://example.invalid/tresnet_l.pth")
    p.add_argument("--num-classes", default=80)
    p.add_argument("-j", "--workers", default=8, type=int)
    p.add_argument("--image-size", default=448, type=int)
    p.add_argument("--batch-size", default=56, type=int)
    p.add_argument("--use-ml-decoder", default=1, type=int)
    p.add_argument("--num-of-groups", default=-1, type=int)
    p.add_argument("--decoder-embedding", default=768, type=int)
    p.add_argument("--zsl", default=0, type=int)
    return p


def parse(argv):
    """ML-Decoder's flags plus ours; ``--num-classes`` defaults to the demo set's K here."""
    p = ml_decoder_parser()
    bm.add_args(p)
    return p.parse_args(["--num-classes", str(K)] + list(argv))


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return bm_create_model(
        "resnet10t", num_classes=K, head="ml_decoder",
        ml_decoder_kwargs=dict(embed_dim=32, dim_feedforward=64, dropout=0.0),
    )


def asl_sum_reference(logits, y, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8):
    """ASL (Ben-Baruch et al. 2021) for binary targets, summed, written out in float64."""
    x, y = logits.double(), y.double()
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0)
    pos = y * torch.log(p.clamp(min=eps)) * (1 - p) ** gamma_pos
    neg = (1 - y) * torch.log((1 - p_m).clamp(min=eps)) * p_m ** gamma_neg
    return -(pos + neg).sum()


def mean_ap(scores: torch.Tensor, targets: torch.Tensor) -> float:
    aps = []
    for k in range(targets.shape[1]):
        t, s = targets[:, k].numpy(), scores[:, k].numpy()
        if t.sum() == 0:
            continue
        order = np.argsort(-s)
        hits = t[order] == 1
        prec = np.cumsum(hits) / np.arange(1, len(t) + 1)
        aps.append(float((prec * hits).sum() / hits.sum()))
    return 100 * float(np.mean(aps))


def standin_train(model, train_loader, val_loader, lr, plugin=None, *, epochs, stop_after=None):
    """A stand-in of ML-Decoder's train_multi_label_coco, patched, on the CPU (no AMP)."""
    ema = ModelEma(model, 0.9997)
    criterion = lambda out, tgt: asl_sum_reference(out, tgt).float()  # noqa: E731
    if plugin is not None:
        criterion = plugin.criterion
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and not n.endswith(".bias")]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))]
    optimizer = torch.optim.Adam([dict(params=no_decay, weight_decay=0.0), dict(params=decay, weight_decay=1e-4)],
                                 lr=lr)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, steps_per_epoch=steps_per_epoch,
                                                    epochs=epochs, pct_start=0.2)
    highest_map, losses, batches = 0, [], []
    start_epoch = 0
    if plugin is not None:
        start_epoch, highest_map = plugin.attach(model, ema, optimizer, scheduler, None)
    for epoch in range(start_epoch, epochs):
        if plugin is not None:
            plugin.set_epoch(epoch)
        for input_data, target in train_loader:
            target = target.max(dim=1)[0]
            if plugin is not None:
                input_data, target = plugin.mix(input_data, target)
            output = model(input_data).float()
            loss = criterion(output, target)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update(model)
            if plugin is not None:
                plugin.record()
            losses.append(float(loss.detach()))
            batches.append(len(input_data))
        if plugin is not None:
            plugin.end_epoch(epoch)
        model.eval()
        with torch.no_grad():
            scores, targets = zip(*[(torch.sigmoid(model(x)), t.max(dim=1)[0]) for x, t in val_loader])
        model.train()
        highest_map = max(highest_map, mean_ap(torch.cat(scores), torch.cat(targets)))
        if plugin is not None:
            plugin.save_checkpoint(epoch, highest_map)
        if stop_after is not None and epoch + 1 >= stop_after:
            break
    return dict(losses=losses, batches=batches, steps_per_epoch=steps_per_epoch, highest=highest_map)


# ============================================================================ flags
def test_add_args_keeps_ml_decoder_flags_and_adds_ours():
    base = vars(ml_decoder_parser().parse_args(["--batch-size", "8", "--model-name", "tresnet_m"]))
    with_ours = ml_decoder_parser()
    bm.add_args(with_ours)
    ours = vars(with_ours.parse_args(["--batch-size", "8", "--model-name", "tresnet_m"]))
    assert {k: ours[k] for k in base} == base
    new = set(ours) - set(base)
    assert all(k == "balancemix" or k.startswith("bm_") for k in new)
    assert ours["balancemix"] is False and ours["bm_minority_sampler"] is True
    a = parse(["--balancemix", "--no-bm-minority-sampler", "--bm-label-management", "clean", "--bm-alpha", "0",
               "--bm-base-loss", "asl", "--bm-reduction", "mean", "--bm-label-source", "epoch_pass", "--bm-seed", "3"])
    assert (a.balancemix, a.bm_minority_sampler, a.bm_label_management, a.bm_alpha) == (True, False, "clean", 0.0)
    assert (a.bm_base_loss, a.bm_reduction, a.bm_label_source, a.bm_seed) == ("asl", "mean", "epoch_pass", 3)
    with pytest.raises(SystemExit):
        parse(["--bm-label-management", "most"])
    p = ml_decoder_parser()
    bm.add_args(p)
    text = p.format_help()
    for flag in ("--balancemix", "--bm-alpha", "--bm-eps", "--bm-warmup-epochs", "--bm-minority-sampler",
                 "--no-bm-minority-sampler", "--bm-label-management", "--bm-base-loss", "--bm-reduction",
                 "--bm-gmm-max-iter", "--bm-label-source", "--bm-seed", "--bm-model", "--bm-resume"):
        assert flag in text


def test_setup_is_none_without_balancemix(train_set, caplog):
    assert bm.setup(parse([]), train_set) is None
    with caplog.at_level("WARNING", logger="balancemix_timm"):
        assert bm.setup(parse(["--bm-alpha", "2"]), train_set) is None
    assert "--bm-alpha" in caplog.text


# ============================================================================ labels
def test_labels_from_dataset_match_an_independent_reading(demo, train_set):
    ours = bm.labels_from_dataset(train_set)
    coco = CocoMultiLabel(demo.train_images, demo.train_annotations, image_order="annotations")
    assert torch.equal(ours, coco.labels)
    # By hand: every item's (3, K) target collapsed by max over the size groups.
    by_hand = torch.stack([train_set[i][1].max(dim=0).values for i in range(len(train_set))]).to(torch.uint8)
    assert torch.equal(ours, by_hand)
    wide = bm.labels_from_dataset(train_set, num_classes=80)  # ML-Decoder's target is 80 wide
    assert wide.shape == (N_TRAIN, 80) and torch.equal(wide[:, :K], ours) and wide[:, K:].sum() == 0

    class Plain(Dataset):  # no COCO index: labels read through __getitem__
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.zeros(1), train_set[i][1]

    assert torch.equal(bm.labels_from_dataset(Plain()), ours[:6])
    with pytest.raises(ValueError, match="outside num_classes"):
        bm.labels_from_dataset(train_set, num_classes=3)


# ============================================================================ loader, mixing
def test_paired_loader_length_and_epoch_coverage(train_set):
    plugin = bm.setup(parse(["--balancemix"]), train_set)
    for bs in (5, 16, 48, 50):
        original = DataLoader(train_set, batch_size=bs, shuffle=True)
        loader = plugin.train_loader(batch_size=bs)
        assert len(loader) == len(original) == math.ceil(N_TRAIN / bs)
    loader = plugin.train_loader(batch_size=20)
    plugin.set_epoch(0)
    sizes, seen = [], []
    for x, target in loader:
        sizes.append(x.shape[0])
        seen.append(plugin._current.index_r)
        assert target.shape == (x.shape[0], 3, K)
    assert sizes == [20, 20, 8]  # no drop_last: the last batch is odd-sized, as in ML-Decoder
    assert sorted(torch.cat(seen).tolist()) == list(range(N_TRAIN))  # a permutation per epoch
    # 48 = 47 + 1: the one-pair tail joins the batch before it (BatchNorm needs two samples).
    loader = plugin.train_loader(batch_size=47)
    plugin.set_epoch(1)
    sizes = [x.shape[0] for x, _ in loader]
    assert sizes == [48] and len(loader) == 1


def test_mix_returns_mixed_images_and_targets_and_record_stores_views(train_set):
    plugin = bm.setup(parse(["--balancemix", "--bm-alpha", "4"]), train_set)
    labels = bm.labels_from_dataset(train_set).float()
    model = small_model()
    plugin.attach(model)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    b = plugin._current
    x_out, y = plugin.mix(x, target.max(dim=1)[0])
    lam = b.lam[0].item()
    assert 0.5 <= lam <= 1.0 and x_out is x
    x_r = torch.stack([train_set[i][0] for i in b.index_r.tolist()])
    x_m = torch.stack([train_set[i][0] for i in b.index_m.tolist()])
    torch.testing.assert_close(x, lam * x_r + (1 - lam) * x_m, rtol=0, atol=1e-6)
    torch.testing.assert_close(y, lam * labels[b.index_r] + (1 - lam) * labels[b.index_m], rtol=0, atol=1e-6)
    plugin.record()
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(x_r))  # both views equal the image (deterministic transform)
    torch.testing.assert_close(plugin.engine.probs[b.index_r], expected, rtol=0, atol=1e-5)
    assert bool(plugin.engine.seen[b.index_r].all()) and int(plugin.engine.seen.sum()) == 16
    # The first batch of an epoch is checked against the engine's labels.
    plugin.set_epoch(1)
    x, target = next(iter(loader))
    bad = target.max(dim=1)[0].clone()
    bad[0] = 1 - bad[0]
    with pytest.raises(ValueError, match="does not match"):
        plugin.mix(x, bad)
    with pytest.raises(ValueError, match="collapsed"):
        plugin.mix(x, target)  # not collapsed: (B, 3, K)


def test_criterion_scale_and_base_losses(train_set):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, K, generator=g) * 3
    # ASL base, summed, no mixing, given labels: exactly ML-Decoder's criterion on binary targets.
    plugin = bm.setup(parse(["--balancemix", "--bm-base-loss", "asl", "--bm-alpha", "0",
                             "--bm-label-management", "none"]), train_set)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    _, y = plugin.mix(x, target.max(dim=1)[0])
    assert torch.equal(y, target.max(dim=1)[0].float())
    torch.testing.assert_close(plugin.criterion(logits, y).double(), asl_sum_reference(logits, y), rtol=1e-5, atol=1e-4)
    # BCE base (Eq. 10), mean and sum reductions.
    for red, scale in (("mean", 1 / 16), ("sum", 1.0)):
        plugin = bm.setup(parse(["--balancemix", "--bm-alpha", "0", "--bm-reduction", red]), train_set)
        loader = plugin.train_loader(batch_size=16)
        plugin.set_epoch(0)
        x, target = next(iter(loader))
        _, y = plugin.mix(x, target.max(dim=1)[0])
        p = torch.sigmoid(logits.double())
        bce = -(y * p.log() + (1 - y) * (1 - p).log()).sum()
        torch.testing.assert_close(plugin.criterion(logits, y).double(), bce * scale, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="train_loader"):
        bm.setup(parse(["--balancemix"]), train_set).criterion(logits, y)


# ============================================================================ stand-in loop
def test_standin_loop_with_balancemix(train_set, val_set, tmp_path):
    args = parse(["--balancemix", "--bm-warmup-epochs", "1", "--bm-checkpoint-dir", str(tmp_path)])
    plugin = bm.setup(args, train_set)
    model = small_model()
    loader = plugin.train_loader(batch_size=16)
    out = standin_train(model, loader, DataLoader(val_set, batch_size=16), 1e-3, plugin, epochs=3)
    assert out["steps_per_epoch"] == 3 and out["batches"] == [16, 16, 16] * 3
    assert all(math.isfinite(v) and v > 0 for v in out["losses"])
    assert bool(plugin.engine.seen.all())
    hist = plugin.engine.history
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert [h["applied"] for h in hist] == [True, True, True]  # warm-up 1: from epoch 1 on
    w = plugin.engine.second_sampler.weights
    assert w.shape == (N_TRAIN,) and not torch.allclose(w, torch.full_like(w, w.mean()))  # Eq. 4 applied
    ckpt = torch.load(tmp_path / "balancemix-last.pth", weights_only=True)
    assert ckpt["epoch"] == 3 and {"model", "ema", "optimizer", "scheduler", "balancemix"} <= set(ckpt)


@pytest.mark.gpu
def test_plugin_on_cuda_moves_tables_to_the_training_device(train_set):
    """--bm-device auto: after the first mix() the engine's tables live on the GPU; a whole
    AMP loop (mix, criterion, record, refresh) then runs without host copies of the state."""
    plugin = bm.setup(parse(["--balancemix", "--bm-warmup-epochs", "1"]), train_set)
    model = small_model().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    plugin.attach(model, None, optimizer, None, None)
    loader = plugin.train_loader(batch_size=16)
    for epoch in range(2):
        plugin.set_epoch(epoch)
        for input_data, target in loader:
            input_data, target = plugin.mix(input_data.cuda(), target.max(dim=1)[0].cuda())
            with torch.autocast("cuda", dtype=torch.float16):
                output = model(input_data).float()
            loss = plugin.criterion(output, target)
            model.zero_grad()
            loss.backward()
            optimizer.step()
            plugin.record()
            assert math.isfinite(float(loss.detach()))
        plugin.end_epoch(epoch)
    engine = plugin.engine
    assert engine.device.type == "cuda"
    assert all(getattr(engine, name).is_cuda for name in ("given_labels", "refined_labels", "probs"))
    assert [h["applied"] for h in engine.history] == [True, True]
    assert bool(engine.seen.all())


# ============================================================================ engine options
#: A deterministic stand-in of the validation transform that differs from the training one
#: (TF), so that the image's predictions are told apart from the views'.
def _eval_probs(model, dataset, indices):
    """Eval-mode, no-grad sigmoid probabilities of ``dataset``'s images at ``indices``."""
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.stack([dataset[i][0] for i in indices])))


IMAGE_TF = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Lambda(lambda x: 1 - x)])  # colours inverted


def test_option_flags_parse_and_reach_the_engine(train_set):
    from balancemix_timm.presets import PRESETS

    default, paper = PRESETS["default"], PRESETS["paper"]
    a = parse([])
    assert (a.bm_clean_if_agrees, a.bm_record_momentum, a.bm_managed_labels, a.bm_confidence_input) == (
        default["clean_if_agrees"], default["record_momentum"], default["managed_labels"], default["confidence_input"])
    plugin = bm.setup(parse(["--balancemix"]), train_set, image_transform=IMAGE_TF)
    eng = plugin.engine
    assert (eng.clean_if_agrees, eng.record_momentum, eng.managed_labels) == (
        default["clean_if_agrees"], default["record_momentum"], default["managed_labels"])
    assert plugin.confidence_input == default["confidence_input"]
    # --bm-preset paper: the literal paper on every flag left at its default; a set flag wins.
    plugin = bm.setup(parse(["--balancemix", "--bm-preset", "paper"]), train_set, image_transform=IMAGE_TF)
    assert (plugin.engine.clean_if_agrees, plugin.engine.managed_labels, plugin.confidence_input) == (
        paper["clean_if_agrees"], paper["managed_labels"], paper["confidence_input"])
    plugin = bm.setup(parse(["--balancemix", "--bm-preset", "paper", "--bm-managed-labels", "negative"]), train_set,
                      image_transform=IMAGE_TF)
    assert plugin.engine.managed_labels == "negative" and plugin.engine.clean_if_agrees == paper["clean_if_agrees"]
    argv = ["--balancemix", "--bm-clean-if-agrees", "--bm-record-momentum", "0.25", "--bm-managed-labels",
            "negative", "--bm-confidence-input", "image"]
    plugin = bm.setup(parse(argv), train_set, image_transform=IMAGE_TF)
    eng = plugin.engine
    assert (eng.clean_if_agrees, eng.record_momentum, eng.managed_labels) == (True, 0.25, "negative")
    assert plugin.confidence_input == "image" and plugin.image_transform is IMAGE_TF
    assert plugin.config()["confidence_input"] == "image"
    options = {"clean_if_agrees": True, "record_momentum": 0.25, "managed_labels": "negative"}
    assert options.items() <= eng.config().items()
    assert parse(["--bm-clean-if-agrees", "--no-bm-clean-if-agrees"]).bm_clean_if_agrees is False
    for bad in (["--bm-managed-labels", "positive"], ["--bm-confidence-input", "crop"], ["--bm-record-momentum", "x"]):
        with pytest.raises(SystemExit):
            parse(bad)
    with pytest.raises(ValueError, match="record_momentum"):
        bm.setup(parse(["--balancemix", "--bm-record-momentum", "1"]), train_set)
    p = ml_decoder_parser()
    bm.add_args(p)
    text = p.format_help()
    for flag in ("--bm-clean-if-agrees", "--no-bm-clean-if-agrees", "--bm-record-momentum", "--bm-managed-labels",
                 "--bm-confidence-input"):
        assert flag in text
    # Without --balancemix the new flags are ignored, and named.
    assert bm.setup(parse(["--bm-confidence-input", "image"]), train_set) is None


def test_confidence_input_image_needs_an_image_transform(train_set, caplog):
    # The default (image) without an evaluation transform falls back to the views, with a warning.
    with caplog.at_level("WARNING", logger="balancemix_timm"):
        plugin = bm.setup(parse(["--balancemix"]), train_set)
    assert plugin.confidence_input == "views" and "image_transform" in caplog.text
    with pytest.raises(ValueError, match="image_transform"):
        bm.BalanceMixPlugin(train_set, confidence_input="image", label_source="epoch_pass")
    with pytest.raises(ValueError, match="image_transform"):
        bm.BalanceMixPlugin(train_set, confidence_input="image", image_transform="val")
    with pytest.raises(ValueError, match="confidence_input"):
        bm.BalanceMixPlugin(train_set, confidence_input="crop")
    # With f(x) from the views the evaluation transform is not used (the patched script passes it always).
    plugin = bm.setup(parse(["--balancemix", "--bm-confidence-input", "views"]), train_set, image_transform=IMAGE_TF)
    assert plugin.image_transform is None and len(plugin.train_set.transform.transforms) == 3


def test_confidence_input_image_records_the_image_and_the_views(train_set, demo):
    """Views mode: items carry [TF] * (1 + num_views) + [image transform]; f(x) (engine.probs)
    is the image's prediction, Eq. 9's mean (engine.view_mean) the views'."""
    plugin = bm.setup(parse(["--balancemix", "--bm-confidence-input", "image"]), train_set, image_transform=IMAGE_TF)
    assert plugin.train_set.transform.transforms == [TF, TF, TF, IMAGE_TF]
    assert train_set.transform is TF  # the data set itself is left alone (a shallow copy has the views)
    model = small_model()
    plugin.attach(model)
    loader = plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    x, target = next(iter(loader))
    b = plugin._current
    assert b.view_r.shape == (3, 16, 3, 32, 32)
    plugin.mix(x, target.max(dim=1)[0])
    plugin.record()
    images = MLDecoderStyleCoco(str(demo.train_images), str(demo.train_annotations), IMAGE_TF)
    image_probs = _eval_probs(model, images, b.index_r.tolist())
    view_probs = _eval_probs(model, train_set, b.index_r.tolist())
    eng = plugin.engine
    torch.testing.assert_close(eng.probs[b.index_r], image_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(eng.view_mean[b.index_r], view_probs, rtol=0, atol=1e-5)
    assert not torch.allclose(image_probs, view_probs, atol=1e-3)
    # The epoch pass: num_views training views plus the image, for every sample.
    plugin = bm.setup(parse(["--balancemix", "--bm-label-source", "epoch_pass", "--bm-num-views", "1",
                             "--bm-confidence-input", "image"]), train_set, image_transform=IMAGE_TF)
    assert plugin.train_set is train_set
    plugin.attach(model)
    plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    plugin.end_epoch(0)
    image_probs = _eval_probs(model, images, range(N_TRAIN))
    view_probs = _eval_probs(model, train_set, range(N_TRAIN))
    torch.testing.assert_close(plugin.engine.probs, image_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(plugin.engine.view_mean, view_probs, rtol=0, atol=1e-5)


def test_confidence_input_is_part_of_the_checkpoint_config(train_set):
    views = bm.setup(parse(["--balancemix"]), train_set)
    image = bm.setup(parse(["--balancemix", "--bm-confidence-input", "image"]), train_set, image_transform=IMAGE_TF)
    with pytest.raises(ValueError, match="confidence_input"):
        views.load_state_dict(image.state_dict())
    older = views.state_dict()
    del older["config"]["confidence_input"]  # written before the option existed: f(x) from the views
    bm.setup(parse(["--balancemix"]), train_set).load_state_dict(older)
    with pytest.raises(ValueError, match="confidence_input"):
        image.load_state_dict(older)


def test_epoch_pass_records_every_sample(train_set):
    plugin = bm.setup(parse(["--balancemix", "--bm-label-source", "epoch_pass"]), train_set)
    model = small_model()
    plugin.attach(model)
    plugin.train_loader(batch_size=16)
    plugin.set_epoch(0)
    plugin.end_epoch(0)
    expected = _eval_probs(model, train_set, range(N_TRAIN))
    torch.testing.assert_close(plugin.engine.probs, expected, rtol=0, atol=1e-5)
    assert bool(plugin.engine.seen.all())


def test_checkpoint_round_trip_resumes_bit_for_bit(train_set, val_set, tmp_path):
    val = DataLoader(val_set, batch_size=16)

    def run(ckdir, *, resume=None, stop_after=None, seed=0):
        argv = ["--balancemix", "--bm-warmup-epochs", "1", "--bm-checkpoint-dir", str(ckdir)]
        plugin = bm.setup(parse(argv + (["--bm-resume", str(resume)] if resume else [])), train_set)
        model = small_model(seed)
        standin_train(model, plugin.train_loader(batch_size=16), val, 1e-3, plugin, epochs=2, stop_after=stop_after)
        return model, plugin

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    full_model, full = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=1)
    resumed_model, resumed = run(tmp_path / "c", resume=tmp_path / "b" / "balancemix-last.pth", seed=1)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    for key in ("probs", "refined_labels", "state", "clean_prob"):
        assert torch.equal(getattr(full.engine, key), getattr(resumed.engine, key)), key
    assert torch.equal(full.engine.second_sampler.weights, resumed.engine.second_sampler.weights)
    # Another configuration is refused.
    other = bm.setup(parse(["--balancemix", "--bm-reduction", "mean"]), train_set)
    with pytest.raises(ValueError, match="reduction"):
        other.load_state_dict(full.state_dict())


def test_without_balancemix_the_loop_is_plain_asl(train_set, val_set):
    args = parse([])
    assert bm.setup(args, train_set) is None
    built = small_model()
    assert bm.create_model(args, lambda a: built) is built  # ML-Decoder's factory, untouched

    def make_loader():
        return DataLoader(train_set, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5))

    val = DataLoader(val_set, batch_size=16)
    model_a = small_model()
    out = standin_train(model_a, make_loader(), val, 1e-3, None, epochs=1)
    # The same epoch written as a plain ASL loop, without any integration code.
    model_b = small_model()
    opt = torch.optim.Adam(
        [dict(params=[p for n, p in model_b.named_parameters() if p.ndim <= 1 or n.endswith(".bias")],
              weight_decay=0.0),
         dict(params=[p for n, p in model_b.named_parameters() if p.ndim > 1 and not n.endswith(".bias")],
              weight_decay=1e-4)], lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, steps_per_epoch=3, epochs=1, pct_start=0.2)
    losses = []
    for x, t in make_loader():
        loss = asl_sum_reference(model_b(x).float(), t.max(dim=1)[0]).float()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    assert out["losses"] == losses
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


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


# ============================================================================ patch files
def test_patch_file_is_shipped_and_identical():
    shipped = pm.patch_text()
    assert shipped == (REPO / "patches" / "ml_decoder_train.patch").read_text()
    hunks = pm.parse_patch(shipped)
    assert (sum(h.added for h in hunks), sum(h.removed for h in hunks)) == (25, 5)
    # --bm-confidence-input image reads the un-augmented image through ML-Decoder's validation transform.
    assert "balancemix.setup(args, train_dataset, image_transform=val_dataset.transform)" in shipped
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    line = next(s for s in scripts.splitlines() if s.strip().startswith("balancemix-patch-ml-decoder"))
    module, func = line.split("=")[1].strip().split(":")
    assert getattr(importlib.import_module(module), func) is pm.main
    assert "integrations/*.patch" in cfg["options.package_data"]["balancemix_timm"]


def test_apply_hunks_against_difflib():
    rng = np.random.default_rng(0)
    old = [f"line {i}" for i in range(60)]
    new = list(old)
    new[0:0] = ["first"]
    new[10] = "changed 9"
    del new[30:33]
    new[40:40] = ["ins a", "ins b"]
    new += ["last"]
    diff = "\n".join(difflib.unified_diff(old, new, "a/f", "b/f", lineterm=""))
    hunks = pm.parse_patch(diff)
    assert pm.apply_hunks(old, hunks) == new
    assert pm.apply_hunks(new, hunks, reverse=True) == old
    shifted = ["extra"] + old
    with pytest.raises(pm.PatchError):
        pm.apply_hunks(shifted[: int(rng.integers(40, 50))], hunks)


def test_command_refuses_other_files_and_changes_nothing(tmp_path, capsys):
    target = tmp_path / "train.py"
    target.write_text("print('not ML-Decoder')\n")
    before = target.read_bytes()
    assert pm.main([str(tmp_path)]) == 1
    assert "Nothing was changed" in capsys.readouterr().err
    assert target.read_bytes() == before
    target.write_text("import balancemix\n")
    assert pm.main([str(target)]) == 1
    assert "already holds BalanceMix lines" in capsys.readouterr().err
    assert pm.main([str(tmp_path / "nowhere")]) == 1
    assert pm.main(["--print-patch"]) == 0 and capsys.readouterr().out == pm.patch_text()
    with pytest.raises(SystemExit):
        pm.main([])


def test_table6_configs_parse():
    from balancemix_timm.config import load_config

    for key, size, model in (("tresnet_l_640", 640, "tresnet_l_mldecoder"),
                             ("tresnet_l_448", 448, "tresnet_l_mldecoder"),
                             ("resnet101_448", 448, "resnet101")):
        cfg = load_config(REPO / "configs" / f"table6_{key}.yaml")
        assert (cfg.data, cfg.model, cfg.head, cfg.image_size) == ("coco", model, "ml_decoder", size)
        assert (cfg.optimizer, cfg.lr, cfg.scheduler, cfg.ema_decay, cfg.epochs, cfg.batch_size) == (
            "adam", 1e-4, "onecycle", 0.9997, 40, 56)
        assert cfg.method == "balancemix" and cfg.warmup_epochs == 10
        assert abs(cfg.weight_decay * cfg.batch_size - 1e-4) < 1e-9  # mean loss: ML-Decoder's wd / 56
        # The shell script's command line parses with ML-Decoder's flags plus ours.
        text = (REPO / "configs" / "ml_decoder" / f"table6_{key}.sh").read_text()
        cmd = text.split("python train.py", 1)[1].split('"$@"', 1)[0]
        argv = [a.strip('"') for a in cmd.replace("\\\n", " ").split()]
        argv = [{"$COCO": "/data/coco", "$WEIGHTS": "w.pth"}.get(a, a) for a in argv]
        p = ml_decoder_parser()
        bm.add_args(p)
        args = p.parse_args(argv)
        assert args.balancemix and args.image_size == size and args.batch_size == 56
        assert args.bm_warmup_epochs == 10 and args.bm_alpha == 4 and args.bm_eps == 0.975
        assert args.bm_model == (None if model.startswith("tresnet") else "resnet101")


# ============================================================================ with a checkout
def _checkout() -> Path:
    root = Path(ML_DECODER_DIR)
    if not (root / "train.py").is_file():
        pytest.fail(f"ML_DECODER_DIR={ML_DECODER_DIR} holds no train.py")
    return root


def _copy_checkout(dst: Path) -> Path:
    src = _checkout()
    shutil.copytree(src / "src_files", dst / "src_files")
    shutil.copy2(src / "train.py", dst / "train.py")
    stubs = dst / "stubs"
    (stubs / "pycocotools").mkdir(parents=True)
    (stubs / "pycocotools" / "__init__.py").write_text("")
    (stubs / "pycocotools" / "coco.py").write_text(STUB_COCO)
    (stubs / "randaugment.py").write_text("class RandAugment:\n    def __call__(self, img):\n        return img\n")
    if importlib.util.find_spec("pandas") is None:
        (stubs / "pandas.py").write_text("")
    return dst


def _env(stubs: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), str(REPO), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "ignore"
    return env


@needs_checkout
def test_checkout_patch_apply_compile_help_refuse(tmp_path, capsys):
    work = _copy_checkout(tmp_path)
    original = (work / "train.py").read_bytes()
    assert hashlib.sha256(original).hexdigest() == pm.ORIGINAL_SHA256
    assert pm.main([str(work)]) == 0
    out = capsys.readouterr().out
    assert "was patched" in out and "total: +25 -5 lines in 7 hunks" in out
    patched = (work / "train.py").read_bytes()
    if shutil.which("patch"):  # the same result as `patch -p1` from the checkout's root
        ref = tmp_path / "ref"
        ref.mkdir()
        (ref / "train.py").write_bytes(original)
        subprocess.run(["patch", "-s", "-p1", "-i", str(REPO / "patches" / "ml_decoder_train.patch")], cwd=ref,
                       check=True)
        assert (ref / "train.py").read_bytes() == patched
    assert pm.main([str(work)]) == 0 and "already patched" in capsys.readouterr().out
    assert (work / "train.py").read_bytes() == patched
    py_compile.compile(str(work / "train.py"), doraise=True)
    help_run = subprocess.run([sys.executable, "train.py", "--help"], cwd=work, env=_env(work / "stubs"),
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    for flag in ("--balancemix", "--bm-alpha", "--bm-eps", "--bm-warmup-epochs", "--bm-minority-sampler",
                 "--bm-label-management", "--bm-base-loss", "--bm-reduction", "--bm-gmm-tol", "--bm-label-source",
                 "--bm-seed", "--bm-model", "--bm-confidence-input", "--bm-clean-if-agrees", "--model-name",
                 "--batch-size"):
        assert flag in help_run.stdout
    # A train.py of another version: refused, unchanged.
    other = tmp_path / "other"
    other.mkdir()
    edited = original.replace(b"Epochs = 40", b"Epochs = 41")
    (other / "train.py").write_bytes(edited)
    assert pm.main([str(other)]) == 1
    assert "Nothing was changed" in capsys.readouterr().err
    assert (other / "train.py").read_bytes() == edited
    assert pm.main(["--revert", str(work)]) == 0
    assert (work / "train.py").read_bytes() == original
    # CRLF checkouts (git autocrlf) are recognised and keep their line endings.
    crlf = tmp_path / "crlf"
    crlf.mkdir()
    (crlf / "train.py").write_bytes(original.replace(b"\n", b"\r\n"))
    assert pm.main([str(crlf)]) == 0
    assert (crlf / "train.py").read_bytes() == patched.replace(b"\n", b"\r\n")


RUNNER = textwrap.dedent('''
    import sys, torch
    torch.Tensor.cuda = lambda self, *a, **k: self        # CPU stand-ins for .cuda()
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.set_num_threads(2)
    source = open("train.py").read().replace("Epochs = 40", "Epochs = 2")  # in memory only
    sys.argv = ["train.py"] + sys.argv[1:]
    exec(compile(source, "train.py", "exec"), {"__name__": "__main__", "__file__": "train.py"})
''')


@needs_checkout
def test_checkout_patched_script_trains_on_cpu(tmp_path, demo):
    work = _copy_checkout(tmp_path)
    assert pm.main([str(work)]) == 0
    data = work / "data"
    (data / "annotations").mkdir(parents=True)
    shutil.copytree(demo.train_images, data / "train2014")
    shutil.copytree(demo.val_images, data / "val2014")
    shutil.copy(demo.train_annotations, data / "annotations" / "instances_train2014.json")
    shutil.copy(demo.val_annotations, data / "annotations" / "instances_val2014.json")
    (work / "models").mkdir()
    (work / "run.py").write_text(RUNNER)
    common = ["--data", "data", "--bm-model", "resnet10t", "--model-path", "", "--image-size", "32",
              "--batch-size", "16", "-j", "0", "--decoder-embedding", "32"]

    def run(extra):
        r = subprocess.run([sys.executable, "run.py", *common, *extra], cwd=work, env=_env(work / "stubs"),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        return r.stdout + r.stderr

    plain = run([])
    assert "[balancemix]" not in plain and plain.count("highest_mAP") == 2
    assert not (work / "models" / "balancemix-last.pth").exists()
    mixed = run(["--balancemix", "--bm-warmup-epochs", "1"])
    assert mixed.count("highest_mAP") == 2 and "[balancemix]" in mixed
    ckpt = torch.load(work / "models" / "balancemix-last.pth", weights_only=True)
    engine = ckpt["balancemix"]["engine"]
    assert ckpt["epoch"] == 2 and engine["seen"].all() and engine["applied"]
    assert [h["epoch"] for h in engine["history"]] == [0, 1]
    assert ckpt["balancemix"]["engine"]["given_labels"].shape == (N_TRAIN, 80)
    # f(x) of the un-augmented image: the patched script hands the plugin its validation transform.
    run(["--balancemix", "--bm-warmup-epochs", "1", "--bm-confidence-input", "image", "--bm-clean-if-agrees",
         "--bm-record-momentum", "0.5"])
    ckpt = torch.load(work / "models" / "balancemix-last.pth", weights_only=True)
    engine = ckpt["balancemix"]["engine"]
    assert ckpt["balancemix"]["config"]["confidence_input"] == "image"
    assert engine["config"]["clean_if_agrees"] and engine["config"]["record_momentum"] == 0.5
    assert engine["seen"].all() and not torch.allclose(engine["probs"], engine["view_mean"])


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
