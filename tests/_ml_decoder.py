"""The ML-Decoder stand-ins and helpers shared by the test_ml_decoder_* modules."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from balancemix_timm.integrations import ml_decoder as bm
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


def _eval_probs(model, dataset, indices):
    """Eval-mode, no-grad sigmoid probabilities of ``dataset``'s images at ``indices``."""
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.stack([dataset[i][0] for i in indices])))


#: A deterministic stand-in of the validation transform that differs from the training one
#: (TF), so that the image's predictions are told apart from the views'.


IMAGE_TF = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Lambda(lambda x: 1 - x)])  # colours inverted


def _checkout() -> Path:
    root = Path(ML_DECODER_DIR)
    if not (root / "train.py").is_file():
        pytest.fail(f"ML_DECODER_DIR={ML_DECODER_DIR} holds no train.py")
    return root
