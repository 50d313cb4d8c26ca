"""BalanceMix inside ML-Decoder's ``train.py``: the flags and the calls the patched script makes.

``patches/ml_decoder_train.patch`` (applied with ``balancemix-patch-ml-decoder PATH``) changes
ML-Decoder's ``train.py`` (Alibaba-MIIL/ML_Decoder at 8a9e984) so that it calls this module:

.. code-block:: python

    create_model = balancemix.import_ml_decoder_factory()   # src_files.models.create_model
    balancemix.add_args(parser)                              # --balancemix, --bm-*
    model = balancemix.create_model(args, create_model).cuda()
    plugin = balancemix.setup(args, train_dataset,           # None without --balancemix
                              image_transform=val_dataset.transform)  # f(x) of the image
    if plugin is not None:
        train_loader = plugin.train_loader(batch_size=..., num_workers=..., pin_memory=True)
    ...
    criterion = plugin.criterion                             # Eq. 10 in place of ASL
    start_epoch, highest_mAP = plugin.attach(model, ema, optimizer, scheduler, scaler)
    for epoch in range(start_epoch, Epochs):
        plugin.set_epoch(epoch)
        for i, (inputData, target) in enumerate(train_loader):
            ...                                              # .cuda(), target.max(dim=1)[0]
            inputData, target = plugin.mix(inputData, target)   # Eq. 5 (refined labels)
            ...                                              # forward, criterion, step, EMA
            plugin.record()                                  # no-grad views (Eq. 2, 6, 9)
        plugin.end_epoch(epoch)                              # Eq. 6-9 and the sampler, Eq. 2-4
        ...                                                  # validation
        plugin.save_checkpoint(epoch, highest_mAP)

Every call in the patched script is guarded by ``if plugin is not None``: without
``--balancemix`` the script trains exactly as before (plain loader, ASL, no extra state).

How the pieces fit ML-Decoder's loop:

* The training set is read through :class:`~balancemix_timm.mixing.PairedDataset` with a
  :class:`~balancemix_timm.sampling.PairedBatchSampler` over the engine's random and minority
  samplers; :class:`~balancemix_timm.mixing.MixupCollate` mixes the images in the workers. The
  loader yields ``(mixed images, targets of the random instances)`` so that the loop's own
  ``.cuda()`` and ``target.max(dim=1)[0]`` (the (3, 80) size-grouped target collapse) run
  unchanged; its ``len()`` is ``ceil(N / batch_size)``, as the original loader's, so
  ``OneCycleLR(steps_per_epoch=len(train_loader))`` keeps its schedule. A one-pair tail joins
  the batch before it (one batch fewer), since a batch of one breaks BatchNorm in training.
* :meth:`BalanceMixPlugin.mix` runs after the collapse and before the forward: the images are
  already mixed, it returns them with the mixed *refined* targets of Eq. 5 (after warm-up the
  labels come from Eq. 9), and checks on the first batch of each epoch that the collapsed
  targets equal the labels the engine holds (a wrong sample order would fail loudly).
* :meth:`BalanceMixPlugin.criterion` is Eq. 10 with ``--bm-base-loss bce`` (the paper) or
  ``asl`` (ML-Decoder's ASL, gamma- 4, gamma+ 0, clip 0.05, as the element-wise loss), reduced by
  ``--bm-reduction sum`` (default, ML-Decoder's criterion is summed over the batch) or ``mean``.
* The labels of the training set are read from the COCO index of ML-Decoder's
  ``CocoDetection`` (``coco.imgToAnns`` in ``ids`` order, classes by ``cat2cat``): no image is
  loaded.
* ``--bm-confidence-input image`` takes f(x) of Eq. 2 and 6 from the un-augmented image, read
  through the validation transform (``Resize`` + ``ToTensor``) that the patched script passes
  as ``image_transform=val_dataset.transform``; the RandAugment views still give Eq. 9's mean.
  ``--bm-clean-if-agrees``, ``--bm-record-momentum`` and ``--bm-managed-labels`` are the
  engine's options of the same names. All four match the trainer's ``TrainConfig`` fields
  ``confidence_input``, ``clean_if_agrees``, ``record_momentum`` and ``managed_labels``
  (``tests/test_frontends_equivalent.py`` checks that both front ends train the same thing).

Runnable on today's stack: :func:`create_model` builds ``--bm-model`` (or, when ML-Decoder's
TResNet cannot be imported because inplace-abn is absent, the timm TResNet with the same
layout) with :func:`balancemix_timm.models.create_model`, whose ML-Decoder head runs on
torch >= 2.1; a model from ML-Decoder's own factory gets its decoder heads replaced by ours
with the same weights on torch >= 2.1, where the published head crashes (ML-Decoder issue #82).
ResNets are fed ImageNet-normalised inputs (ML-Decoder's transforms stop at ``ToTensor``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from balancemix_timm.data.transforms import MultiView
from balancemix_timm.engine import LABEL_MANAGEMENT_LEVELS, BalanceMix, RefreshReport
from balancemix_timm.loss import asl_elementwise
from balancemix_timm.mixing import MixedBatch, MixupCollate, PairedDataset
from balancemix_timm.presets import PRESETS, preset_options
from balancemix_timm.sampling import PairedBatchSampler, ShardedRandomSampler
from balancemix_timm.utils import atomic_save, epoch_seed, seed_worker, view_probabilities

__all__ = [
    "ML_DECODER_TRESNETS",
    "add_args",
    "setup",
    "BalanceMixPlugin",
    "PairedTrainLoader",
    "create_model",
    "import_ml_decoder_factory",
    "replace_ml_decoder_heads",
    "labels_from_dataset",
]

_logger = logging.getLogger(__name__)

#: ML-Decoder's ``--model-name`` values and our aliases for the same architectures (timm's
#: ``tresnet_m``, ``tresnet_v2_l`` and ``tresnet_v2_l`` with TResNet-XL's layers).
ML_DECODER_TRESNETS: dict[str, str] = {
    "tresnet_m": "tresnet_m_mldecoder",
    "tresnet_l": "tresnet_l_mldecoder",
    "tresnet_xl": "tresnet_xl_mldecoder",
}

#: ML-Decoder's ASL setting in ``train.py`` (``AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05)``).
_ASL_DEFAULTS = dict(gamma_neg=4.0, gamma_pos=0.0, clip=0.05)
#: The default preset's options: the defaults of the flags and of the plugin's keywords.
_DEFAULT = PRESETS["default"]

_CHECKPOINT_NAME = "balancemix-last.pth"
_CHECKPOINT_FORMAT = "balancemix-ml-decoder/1"

# Flags that act without --balancemix (model building); the others are ignored without it.
_MODEL_FLAGS = ("bm_model", "bm_normalize")


# ============================================================================ flags
def add_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add BalanceMix's flags to ML-Decoder's parser (all ``--balancemix`` / ``--bm-*``).

    Defaults are the paper's (Alg. 1, COCO: alpha 4, eps 0.975, 10 warm-up epochs, the
    minority sampler and full label management) except where ML-Decoder fixes the setting
    (the summed loss).

    Args:
        parser: The script's ``argparse.ArgumentParser``.

    Returns:
        The argument group holding the new flags.
    """
    if not isinstance(parser, argparse.ArgumentParser):
        raise ValueError(f"parser must be an argparse.ArgumentParser, got {type(parser).__name__}")
    g = parser.add_argument_group(
        "BalanceMix (balancemix-timm)",
        "Train with BalanceMix (Song et al., AAAI 2024) in place of ASL. Every --bm-* flag except "
        "--bm-model/--bm-normalize is ignored without --balancemix.",
    )
    g.add_argument("--balancemix", action="store_true",
                   help="train with BalanceMix (minority-augmented mixing + label-wise management)")
    g.add_argument("--bm-alpha", type=float, default=4.0,
                   help="Mixup Beta(alpha, alpha) of Eq. 5; 0 disables mixing (default 4)")
    g.add_argument("--bm-eps", type=float, default=0.975,
                   help="re-labeling confidence threshold of Eq. 9, in (0.5, 1] (default 0.975)")
    g.add_argument("--bm-warmup-epochs", type=int, default=10,
                   help="epochs on the given labels before label management starts (COCO: 10)")
    g.add_argument("--bm-minority-sampler", action=argparse.BooleanOptionalAction, default=True,
                   help="pair each random batch with a minority batch (Eq. 2-4); --no-bm-minority-"
                        "sampler pairs it with a second random batch (plain Mixup, Table 5 row 2)")
    g.add_argument("--bm-label-management", choices=LABEL_MANAGEMENT_LEVELS, default="full",
                   help="none | clean (Eq. 8) | relabel (+ Eq. 9) | full (+ ambiguous labels "
                        "weighted by p_G, Eq. 10); the rows of Table 5 (default full)")
    g.add_argument("--bm-base-loss", choices=("bce", "asl"), default="bce",
                   help="element-wise loss of Eq. 10: bce (the paper) or asl (ML-Decoder's "
                        "ASL, see --bm-asl-*)")
    g.add_argument("--bm-asl-gamma-neg", type=float, default=_ASL_DEFAULTS["gamma_neg"])
    g.add_argument("--bm-asl-gamma-pos", type=float, default=_ASL_DEFAULTS["gamma_pos"])
    g.add_argument("--bm-asl-clip", type=float, default=_ASL_DEFAULTS["clip"])
    g.add_argument("--bm-reduction", choices=("sum", "mean"), default="sum",
                   help="sum over the batch (default: ML-Decoder's criterion scale, which sets "
                        "the weight of Adam's coupled weight decay) or mean (Eq. 10 as written)")
    g.add_argument("--bm-lam-mode", choices=("batch", "elem"), default="batch",
                   help="one Mixup lambda per batch (default) or per pair")
    g.add_argument("--bm-sampler-score", choices=("paper", "positive"), default="paper",
                   help="minority score: Eq. 3 (paper) or positives only")
    g.add_argument("--bm-sampler-temperature", type=float, default=1.0,
                   help="exponent T of p ~ Score^-T (1 = Eq. 4)")
    g.add_argument("--bm-sampler-labels", choices=("given", "refined"), default="given",
                   help="labels of Eq. 2-3: the given ones (literal) or the refined ones")
    g.add_argument("--bm-label-source", choices=("views", "epoch_pass"), default="views",
                   help="where the predictions of Eq. 2, 6 and 9 come from: views (each step, "
                        "no-grad forward of extra RandAugment views of the random instances) "
                        "or epoch_pass (a no-grad pass over the training set after each epoch)")
    g.add_argument("--bm-num-views", type=int, default=2,
                   help="augmented views averaged per prediction (Eq. 9 uses two)")
    g.add_argument("--bm-preset", choices=sorted(PRESETS), default=None,
                   help="named option set (balancemix_timm.presets): paper (the literal paper) or "
                        "default; the flags below that are left at their default take the preset's value")
    g.add_argument("--bm-confidence-input", choices=("views", "image"), default=_DEFAULT["confidence_input"],
                   help="f(x) of Eq. 2 and 6 (minority score, GMM losses): image (the un-augmented "
                        "image through the validation transform, as the paper writes Eq. 6; one "
                        "more no-grad forward per sample) or views (the mean of the RandAugment "
                        "views); Eq. 9 always averages the views")
    g.add_argument("--bm-clean-if-agrees", action=argparse.BooleanOptionalAction,
                   default=_DEFAULT["clean_if_agrees"],
                   help="a label that f(x) agrees with (BCE below ln 2) is clean whatever its p_G "
                        "(not in the paper; see docs/design.md)")
    g.add_argument("--bm-record-momentum", type=float, default=_DEFAULT["record_momentum"],
                   help="m in [0, 1): recorded probabilities become m * previous + (1 - m) * new "
                        "(an average over epochs, not in the paper); 0 keeps the latest")
    g.add_argument("--bm-managed-labels", choices=("all", "negative"), default=_DEFAULT["managed_labels"],
                   help="all (the paper) manages positive and negative labels; negative treats "
                        "every given positive as clean (missing-label / single-positive setting)")
    g.add_argument("--bm-gmm-normalize", choices=("minmax", "none"), default="minmax")
    g.add_argument("--bm-gmm-max-iter", type=int, default=10)
    g.add_argument("--bm-gmm-tol", type=float, default=1e-2)
    g.add_argument("--bm-gmm-reg-covar", type=float, default=5e-4)
    g.add_argument("--bm-gmm-init", choices=("kmeans", "quantile"), default="kmeans")
    g.add_argument("--bm-gmm-dtype", choices=("auto", "float32", "float64"), default="auto",
                   help="per-label arithmetic of the GMM fits (auto: float32 unless tol < 1e-4)")
    g.add_argument("--bm-gmm-min-group-size", type=int, default=8,
                   help="(class, polarity) groups with fewer labels count as clean")
    g.add_argument("--bm-gmm-device", default=None,
                   help="device of the GMM fits (default: where the engine's tables live)")
    g.add_argument("--bm-device", default="auto",
                   help="device of the engine's per-sample tables: auto (the training device, "
                        "from the first batch), cpu, or a device such as cuda:0")
    g.add_argument("--bm-seed", type=int, default=0,
                   help="seed of the samplers, the Mixup lambdas and the loader's worker seeds")
    g.add_argument("--bm-checkpoint-dir", default="models/",
                   help="folder of balancemix-last.pth (model, EMA, optimiser, schedule, scaler "
                        "and BalanceMix state, every epoch); '' disables. Like ML-Decoder's own "
                        "saves, nothing is written when the folder does not exist")
    g.add_argument("--bm-resume", default=None, metavar="PATH",
                   help="resume from a balancemix-last.pth")
    g.add_argument("--bm-log-level", default="INFO", help="level of the BalanceMix log lines")
    g.add_argument("--bm-model", default=None, metavar="NAME",
                   help="build the model with balancemix_timm (timm backbone + an ML-Decoder head "
                        "that runs on torch >= 2.1): a timm name (e.g. resnet101), an alias "
                        "(tresnet_l_mldecoder = timm tresnet_v2_l) or 'auto' (from --model-name); "
                        "--model-path must then be a local file or ''")
    g.add_argument("--bm-normalize", choices=("auto", "imagenet", "none"), default="auto",
                   help="input normalisation inside a --bm-model model: auto (ImageNet mean/std "
                        "for ResNets, none for TResNets), imagenet or none")
    return g


def _flag_defaults() -> dict[str, Any]:
    p = argparse.ArgumentParser(add_help=False)
    add_args(p)
    return vars(p.parse_args([]))


def _with_preset(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with ``--bm-preset``'s options on the flags left at their default (a copy)."""
    name = getattr(args, "bm_preset", None)
    if name is None:
        return args
    defaults = _flag_defaults()
    out = copy.copy(args)
    for key, value in preset_options(name).items():
        flag = "bm_" + key
        if getattr(args, flag, defaults[flag]) == defaults[flag]:
            setattr(out, flag, value)
    return out


def _ensure_console_logging(level: str | int) -> None:
    """Show our INFO lines in a script that configures no logging (ML-Decoder prints)."""
    pkg = logging.getLogger("balancemix_timm")
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"--bm-log-level must be a logging level name, got {level!r}")
        level = resolved
    pkg.setLevel(level)
    if not pkg.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[balancemix] %(message)s"))
        pkg.addHandler(handler)


def setup(
    args: argparse.Namespace,
    dataset: Dataset,
    *,
    labels: Tensor | None = None,
    image_transform: Callable[[Any], Any] | None = None,
) -> "BalanceMixPlugin | None":
    """The plugin for ``args``, or ``None`` without ``--balancemix``.

    Args:
        args: Parsed arguments (with the flags of :func:`add_args`).
        dataset: ML-Decoder's training set (or any map-style set of ``(image, target)``).
        labels: Optional ``(N, K)`` labels; read from ``dataset`` when omitted.
        image_transform: The evaluation transform (the patched script passes
            ``val_dataset.transform``); required by ``--bm-confidence-input image``, unused
            otherwise.

    Returns:
        A :class:`BalanceMixPlugin`, or ``None`` when ``args.balancemix`` is false (a warning
        names any ``--bm-*`` training flag that was set and is therefore ignored).
    """
    if not getattr(args, "balancemix", False):
        defaults = _flag_defaults()
        changed = sorted(
            k for k, v in defaults.items()
            if k not in _MODEL_FLAGS and k != "balancemix" and hasattr(args, k) and getattr(args, k) != v
        )
        if changed:
            _logger.warning("without --balancemix these flags are ignored: %s",
                            ", ".join("--" + k.replace("_", "-") for k in changed))
        return None
    _ensure_console_logging(getattr(args, "bm_log_level", "INFO"))
    return BalanceMixPlugin.from_args(args, dataset, labels=labels, image_transform=image_transform)


# ============================================================================ labels
def labels_from_dataset(dataset: Dataset, num_classes: int | None = None) -> Tensor:
    """``(N, K)`` uint8 training labels of ``dataset`` in its sample order, loading no image.

    Sources, in order:

    1. a ``labels`` attribute of shape ``(N, K)`` (our :class:`~balancemix_timm.data.datasets.CocoMultiLabel`);
    2. ML-Decoder's ``CocoDetection`` layout: ``coco.imgToAnns`` read in ``ids`` order, class
       index ``cat2cat[category_id]``; a class is positive when the image has an annotation of
       it, which is ML-Decoder's (3, K) size-grouped target after ``max`` over the groups;
    3. otherwise every item's target (this loads every image; a warning says so), with a 2-D
       target collapsed by ``max`` over its first dimension.

    Args:
        dataset: The training set.
        num_classes: ``K``; required for source 2 when the targets are wider than the categories
            (ML-Decoder's target is always 80 wide).

    Returns:
        ``(N, K)`` ``torch.uint8`` tensor.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset is empty")
    if num_classes is not None and (int(num_classes) != num_classes or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    own = getattr(dataset, "labels", None)
    if isinstance(own, Tensor) and own.ndim == 2 and own.shape[0] == n:
        if num_classes is not None and own.shape[1] != num_classes:
            raise ValueError(f"dataset.labels has {own.shape[1]} classes, num_classes is {num_classes}")
        return own.detach().to("cpu", torch.uint8).clone()
    coco, ids, cat2cat = (getattr(dataset, a, None) for a in ("coco", "ids", "cat2cat"))
    if coco is not None and ids is not None and isinstance(cat2cat, Mapping) and hasattr(coco, "imgToAnns"):
        if len(ids) != n:
            raise ValueError(f"dataset.ids has {len(ids)} entries for {n} samples")
        k = int(num_classes) if num_classes is not None else max(cat2cat.values()) + 1
        labels = torch.zeros(n, k, dtype=torch.uint8)
        img_to_anns = coco.imgToAnns
        for row, img_id in enumerate(ids):
            for ann in img_to_anns.get(img_id, ()) if hasattr(img_to_anns, "get") else img_to_anns[img_id]:
                c = cat2cat[ann["category_id"]]
                if not 0 <= c < k:
                    raise ValueError(
                        f"category {ann['category_id']} maps to class {c}, outside num_classes={k}"
                    )
                labels[row, c] = 1
        return labels
    _logger.warning("reading the labels of %d samples through __getitem__ (loads every image); "
                    "give labels= or a dataset with a .labels tensor to avoid it", n)
    rows = []
    for i in range(n):
        item = dataset[i]
        target = torch.as_tensor(item[1])
        if target.ndim == 2:
            target = target.max(dim=0).values
        rows.append(target.reshape(-1))
    labels = torch.stack(rows)
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"dataset targets have {labels.shape[1]} classes, num_classes is {num_classes}")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("dataset targets must be binary (0/1)")
    return labels.to(torch.uint8)


# ============================================================================ loader
class PairedTrainLoader:
    """The training loader of the patched script: paired random/minority batches, mixed.

    Iterating yields ``(mixed_images, targets_r)`` like ML-Decoder's loader yields
    ``(images, targets)``; the full :class:`~balancemix_timm.mixing.MixedBatch` of the batch
    being yielded is kept on the plugin for :meth:`BalanceMixPlugin.mix`, ``criterion`` and
    ``record``. ``len()`` is the number of batches per epoch, ``ceil(N / batch_size)`` (one
    fewer when a one-pair tail joins the batch before it).

    Args:
        plugin: The owning plugin.
        loader: A DataLoader yielding :class:`~balancemix_timm.mixing.MixedBatch`.
    """

    def __init__(self, plugin: "BalanceMixPlugin", loader: DataLoader) -> None:
        self.plugin = plugin
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Any]]:
        for batch in self.loader:
            self.plugin._set_batch(batch)
            yield batch.input, batch.target_r
        self.plugin._current = None


# ============================================================================ plugin
class _Attached:
    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.ema: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.scaler: Any = None


class BalanceMixPlugin:
    """BalanceMix for a training loop shaped like ML-Decoder's (Alg. 1 of BalanceMix).

    Owns a :class:`~balancemix_timm.engine.BalanceMix` engine (labels, samplers, GMM state),
    the in-worker Mixup collate and the current batch; the patched loop calls
    :meth:`train_loader`, :meth:`attach`, :meth:`set_epoch`, :meth:`mix`, :meth:`criterion`,
    :meth:`record`, :meth:`end_epoch` and :meth:`save_checkpoint`.

    Args:
        dataset: Training set returning ``(image, target)`` (ML-Decoder's ``CocoDetection``)
            or ``(image, target, index)``; with ``label_source="views"`` or
            ``confidence_input="image"`` it must apply its ``transform`` attribute (a shallow
            copy gets a :class:`MultiView` of it).
        labels: ``(N, K)`` given labels; default :func:`labels_from_dataset`.
        num_classes: ``K`` for :func:`labels_from_dataset`.
        alpha, eps, warmup_epochs, minority_sampler, label_management, sampler_score,
            sampler_temperature, sampler_labels, gmm_options, seed: engine options, see
            :class:`~balancemix_timm.engine.BalanceMix`.
        base_loss: ``"bce"`` (Eq. 10) or ``"asl"``.
        asl_options: ``gamma_neg`` / ``gamma_pos`` / ``clip`` of the ASL base loss.
        reduction: ``"sum"`` (ML-Decoder's scale) or ``"mean"`` (Eq. 10's batch mean).
        lam_mode: ``"batch"`` or ``"elem"`` (see :class:`~balancemix_timm.mixing.MixupCollate`).
        label_source: ``"views"`` or ``"epoch_pass"`` (see :func:`add_args`).
        num_views: Views averaged per recorded prediction (>= 1).
        clean_if_agrees, record_momentum, managed_labels: engine options, see
            :class:`~balancemix_timm.engine.BalanceMix` (the paper has none of these rules;
            the defaults False, 0.0 and ``"all"`` are the paper).
        confidence_input: Where f(x) of Eq. 2 (minority score) and Eq. 6 (GMM losses) comes
            from: ``"views"`` (default) uses the mean of the ``num_views`` augmented views,
            the same mean that Eq. 9 re-labels with; ``"image"`` forwards one more input per
            sample, the un-augmented image through ``image_transform``, and records its
            ``(B, K)`` probabilities as f(x) (``engine.probs``) while the views' mean still
            goes to Eq. 9 (``engine.view_mean``). The paper gives no rule beyond writing
            Eq. 6 with f(x) of the image. With ``label_source="views"`` the training items
            then carry ``[train transform] * (1 + num_views) + [image_transform]``; with
            ``"epoch_pass"`` the pass reads ``num_views`` train-transform views plus the
            image.
        image_transform: The evaluation transform (ML-Decoder's validation transform,
            ``Resize`` + ``ToTensor``), a callable from what ``dataset`` reads to a
            ``(C, H, W)`` tensor of the training views' shape. Required by
            ``confidence_input="image"``, unused otherwise.
        checkpoint_dir: Folder of ``balancemix-last.pth``; ``None`` or ``""`` disables.
        resume: A ``balancemix-last.pth`` to restore in :meth:`attach`.
        verify_targets: Check on each epoch's first batch that the loop's targets equal the
            engine's labels.
        device: Where the engine's per-sample tables live (and its GMM refresh computes):
            ``"auto"`` (default) moves them to the device of the first batch given to
            :meth:`mix`, so that the per-step calls index them in place with no host-device
            copies; ``"cpu"`` keeps them on the host; any other device places them there now.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        labels: Tensor | None = None,
        num_classes: int | None = None,
        alpha: float = 4.0,
        eps: float = 0.975,
        warmup_epochs: int = 10,
        minority_sampler: bool = True,
        label_management: str = "full",
        sampler_score: str = "paper",
        sampler_temperature: float = 1.0,
        sampler_labels: str = "given",
        base_loss: str = "bce",
        asl_options: Mapping[str, float] | None = None,
        reduction: str = "sum",
        lam_mode: str = "batch",
        gmm_options: Mapping[str, Any] | None = None,
        label_source: str = "views",
        num_views: int = 2,
        clean_if_agrees: bool = _DEFAULT["clean_if_agrees"],
        record_momentum: float = _DEFAULT["record_momentum"],
        managed_labels: str = _DEFAULT["managed_labels"],
        confidence_input: str | None = None,
        image_transform: Callable[[Any], Any] | None = None,
        seed: int = 0,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        verify_targets: bool = True,
        device: str | torch.device = "auto",
    ) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"dataset must be a map-style data set, got {type(dataset).__name__}")
        if base_loss not in ("bce", "asl"):
            raise ValueError(f"base_loss must be 'bce' or 'asl', got {base_loss!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if label_source not in ("views", "epoch_pass"):
            raise ValueError(f"label_source must be 'views' or 'epoch_pass', got {label_source!r}")
        if isinstance(num_views, bool) or int(num_views) != num_views or num_views < 1:
            raise ValueError(f"num_views must be a positive int, got {num_views!r}")
        if confidence_input is None:
            confidence_input = _DEFAULT["confidence_input"]
            if confidence_input == "image" and image_transform is None:
                _logger.warning(
                    "no image_transform given: f(x) of Eq. 2 and 6 is the mean of the RandAugment "
                    "views (confidence_input='views'); pass the evaluation transform as "
                    "image_transform= for the un-augmented image"
                )
                confidence_input = "views"
        if confidence_input not in ("views", "image"):
            raise ValueError(f"confidence_input must be 'views' or 'image', got {confidence_input!r}")
        if confidence_input == "image" and image_transform is None:
            raise ValueError(
                "image_transform is required with confidence_input='image' (f(x) of the "
                "un-augmented image): pass the evaluation transform, e.g. "
                "image_transform=val_dataset.transform (the patched train.py does)"
            )
        if image_transform is not None and not callable(image_transform):
            raise ValueError(f"image_transform must be callable, got {type(image_transform).__name__}")
        asl = dict(_ASL_DEFAULTS)
        unknown = sorted(set(asl_options or {}) - set(asl))
        if unknown:
            raise ValueError(f"asl_options has unknown keys {unknown}; allowed: {sorted(asl)}")
        asl.update({k: float(v) for k, v in (asl_options or {}).items()})
        if labels is None:
            labels = labels_from_dataset(dataset, num_classes)
        base: str | Callable[[Tensor, Tensor], Tensor] = base_loss
        if base_loss == "asl" and asl != _ASL_DEFAULTS:
            asl_elementwise(torch.zeros(1, 1), torch.zeros(1, 1), **asl)  # validates the options
            base = functools.partial(asl_elementwise, **asl)

        self.engine = BalanceMix(
            labels,
            alpha=alpha,
            eps=eps,
            warmup_epochs=warmup_epochs,
            minority_sampler=minority_sampler,
            label_management=label_management,  # type: ignore[arg-type]
            sampler_score=sampler_score,  # type: ignore[arg-type]
            sampler_temperature=sampler_temperature,
            sampler_labels=sampler_labels,  # type: ignore[arg-type]
            base_loss=base,
            gmm_options=gmm_options,
            clean_if_agrees=clean_if_agrees,
            record_momentum=record_momentum,
            managed_labels=managed_labels,  # type: ignore[arg-type]
            seed=seed,
            device=None if device == "auto" else device,
        )
        self.auto_device = device == "auto"
        if len(dataset) != self.engine.num_samples_total:  # type: ignore[arg-type]
            raise ValueError(
                f"labels has {self.engine.num_samples_total} rows for a dataset of {len(dataset)} samples"  # type: ignore[arg-type]
            )
        self.collate = MixupCollate(alpha=alpha, mode=lam_mode, seed=seed)
        self.dataset = dataset
        self.base_loss = base_loss
        self.asl_options = asl
        self.reduction = reduction
        self.lam_mode = lam_mode
        self.label_source = label_source
        self.num_views = int(num_views)
        self.confidence_input = confidence_input
        #: The evaluation transform of f(x) (None unless ``confidence_input="image"``).
        self.image_transform = image_transform if confidence_input == "image" else None
        self.seed = int(seed)
        self.verify_targets = bool(verify_targets)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume = Path(resume) if resume else None
        self.epoch = 0
        self.batch_size: int | None = None
        self.train_set = (
            self._with_views(dataset, 1 + self.num_views, self.image_transform) if label_source == "views" else dataset
        )
        self._loader_generator = torch.Generator()
        self._loader_generator.manual_seed(epoch_seed(self.seed, 0, 1))
        self._current: MixedBatch | None = None
        self._device: torch.device | None = None
        self._verify_pending = True
        self._warned_dir = False
        self._attached = _Attached()
        self._num_workers = 0
        self._pin_memory = False
        _logger.info(
            "BalanceMix on %d samples x %d classes: alpha=%s eps=%s warm-up=%d minority=%s "
            "label management=%s (%s labels, clean if agrees=%s) base loss=%s (%s) label source=%s "
            "x%d views, f(x) from the %s, record momentum=%s",
            *labels.shape, alpha, eps, warmup_epochs, minority_sampler, label_management, managed_labels,
            clean_if_agrees, base_loss, reduction, label_source, self.num_views,
            "un-augmented image" if confidence_input == "image" else "views", record_momentum,
        )

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        dataset: Dataset,
        *,
        labels: Tensor | None = None,
        image_transform: Callable[[Any], Any] | None = None,
    ) -> "BalanceMixPlugin":
        """Build from the flags of :func:`add_args` (``args.num_classes`` gives ``K``).

        Args:
            args: Parsed arguments.
            dataset: The training set.
            labels: Optional ``(N, K)`` labels (default: read from ``dataset``).
            image_transform: The evaluation transform, required by
                ``--bm-confidence-input image`` (see the class).

        Raises:
            ValueError: ``--bm-confidence-input image`` without ``image_transform``, or any
                option the plugin or the engine refuses.
        """
        num_classes = getattr(args, "num_classes", None)
        args = _with_preset(args)
        return cls(
            dataset,
            labels=labels,
            num_classes=int(num_classes) if num_classes is not None else None,
            alpha=args.bm_alpha,
            eps=args.bm_eps,
            warmup_epochs=args.bm_warmup_epochs,
            minority_sampler=args.bm_minority_sampler,
            label_management=args.bm_label_management,
            sampler_score=args.bm_sampler_score,
            sampler_temperature=args.bm_sampler_temperature,
            sampler_labels=args.bm_sampler_labels,
            base_loss=args.bm_base_loss,
            asl_options=dict(gamma_neg=args.bm_asl_gamma_neg, gamma_pos=args.bm_asl_gamma_pos, clip=args.bm_asl_clip),
            reduction=args.bm_reduction,
            lam_mode=args.bm_lam_mode,
            gmm_options=dict(
                normalize=args.bm_gmm_normalize,
                max_iter=args.bm_gmm_max_iter,
                tol=args.bm_gmm_tol,
                reg_covar=args.bm_gmm_reg_covar,
                init=args.bm_gmm_init,
                min_group_size=args.bm_gmm_min_group_size,
                dtype=args.bm_gmm_dtype,
                device=args.bm_gmm_device,
            ),
            label_source=args.bm_label_source,
            num_views=args.bm_num_views,
            clean_if_agrees=args.bm_clean_if_agrees,
            record_momentum=args.bm_record_momentum,
            managed_labels=args.bm_managed_labels,
            # The flag's default resolves like the keyword's (views, with a warning, when the
            # loop gives no image_transform).
            confidence_input=None if args.bm_confidence_input == _DEFAULT["confidence_input"] else args.bm_confidence_input,
            image_transform=image_transform,
            seed=args.bm_seed,
            checkpoint_dir=args.bm_checkpoint_dir,
            resume=args.bm_resume,
            device=args.bm_device,
        )

    # ------------------------------------------------------------------ data
    @staticmethod
    def _with_views(dataset: Dataset, num_views: int, image_transform: Callable[[Any], Any] | None = None) -> Dataset:
        """A shallow copy of ``dataset`` whose ``transform`` returns ``num_views`` views of its
        own transform, then (``image_transform``) the image under ``image_transform``."""
        if not hasattr(dataset, "transform") or dataset.transform is None:  # type: ignore[attr-defined]
            raise ValueError(
                "dataset must have a transform attribute that its __getitem__ applies, to make "
                "the augmented views of label_source='views' and the image of "
                "confidence_input='image' (or use label_source='epoch_pass' and "
                "confidence_input='views' with such a dataset)"
            )
        views = copy.copy(dataset)
        transforms = [dataset.transform] * num_views  # type: ignore[attr-defined]
        if image_transform is not None:
            transforms.append(image_transform)
        views.transform = MultiView(transforms)  # type: ignore[attr-defined]
        return views

    def train_loader(
        self, *, batch_size: int, num_workers: int = 0, pin_memory: bool = False, **loader_kwargs: Any
    ) -> PairedTrainLoader:
        """The paired training loader (replaces ML-Decoder's shuffled one).

        Args:
            batch_size: Pairs per batch (ML-Decoder: 56). No sample is dropped, as in ML-Decoder;
                a one-pair tail joins the batch before it.
            num_workers: DataLoader workers (images are mixed there).
            pin_memory: DataLoader option.
            **loader_kwargs: Further DataLoader options (``prefetch_factor`` ...).

        Returns:
            A :class:`PairedTrainLoader` of ``ceil(N / batch_size)`` batches per epoch (one
            fewer when the last would hold a single pair).
        """
        for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last"):
            if key in loader_kwargs:
                raise ValueError(f"{key} is set by the plugin and cannot be passed")
        batch_sampler = PairedBatchSampler(self.engine.paired_sampler, batch_size, drop_last=False,
                                           merge_single_tail=True)
        self.batch_size = int(batch_size)
        self._num_workers, self._pin_memory = int(num_workers), bool(pin_memory)
        loader_kwargs.setdefault("worker_init_fn", seed_worker)
        pairs = PairedDataset(self.train_set, self.dataset)  # views only for the random instances
        loader = DataLoader(
            pairs,
            batch_sampler=batch_sampler,
            collate_fn=self.collate,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=self._loader_generator,
            **loader_kwargs,
        )
        return PairedTrainLoader(self, loader)

    def _set_batch(self, batch: MixedBatch) -> None:
        self._current = batch

    def _require_batch(self, what: str) -> MixedBatch:
        if self._current is None:
            raise RuntimeError(
                f"{what}() needs the batch being trained on: iterate the loader of train_loader()"
            )
        return self._current

    # ------------------------------------------------------------------ epoch control
    def attach(
        self, model: nn.Module, ema: Any = None, optimizer: Any = None, scheduler: Any = None, scaler: Any = None
    ) -> tuple[int, float]:
        """Keep references for :meth:`record`, :meth:`end_epoch` and the checkpoints; resume.

        Args:
            model: The trained model.
            ema, optimizer, scheduler, scaler: Saved and restored with it when given
                (objects with ``state_dict`` / ``load_state_dict``).

        Returns:
            ``(start_epoch, highest_mAP)``: ``(0, 0)`` or the values of ``resume``.
        """
        a = self._attached
        a.model, a.ema, a.optimizer, a.scheduler, a.scaler = model, ema, optimizer, scheduler, scaler
        if self.resume is None:
            return 0, 0
        return self.load_checkpoint(self.resume)

    def set_epoch(self, epoch: int) -> None:
        """Start an epoch: sampler streams, Mixup lambdas and loader worker seeds follow it."""
        self.epoch = int(epoch)
        self.engine.set_epoch(self.epoch)
        self.collate.set_epoch(self.epoch)
        self._loader_generator.manual_seed(epoch_seed(self.seed, self.epoch, 1))
        self._verify_pending = self.verify_targets
        self._current = None

    # ------------------------------------------------------------------ per step
    def mix(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 5 for the current batch, called after the target collapse and before the forward.

        The images were mixed in the loader's workers (``input`` is returned as is); the targets
        returned are ``lam * y_R + (1 - lam) * y_M`` of the engine's labels (refined by Eq. 9
        after warm-up), on ``input``'s device.

        Args:
            input: ``(B, C, H, W)`` mixed images of the current batch.
            target: ``(B, K)`` targets of the random instances after ML-Decoder's collapse;
                checked against the engine's labels on each epoch's first batch.

        Returns:
            ``(input, mixed_targets)`` with ``mixed_targets`` float32 ``(B, K)``.
        """
        b = self._require_batch("mix")
        n = b.index_r.numel()
        if not isinstance(input, Tensor) or input.ndim < 1 or input.shape[0] != n:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input must be the current batch of {n} images, got {got}")
        if self._verify_pending:
            self._check_targets(target, b)
            self._verify_pending = False
        self._device = input.device
        if self.auto_device and self.engine.device != input.device:
            _logger.info("BalanceMix tables moved to %s (the training device)", input.device)
            self.engine.to(input.device)
        return input, self.engine.mixed_targets(b.index_r, b.index_m, b.lam, device=input.device)

    def _check_targets(self, target: Tensor, batch: MixedBatch) -> None:
        expected = self.engine.given_labels[batch.index_r.to(self.engine.device)].cpu()
        if not isinstance(target, Tensor) or tuple(target.shape) != tuple(expected.shape):
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"target must be the collapsed (B, K) = {tuple(expected.shape)} targets of the "
                f"random instances, got {got}"
            )
        if not torch.equal(target.detach().to("cpu", torch.uint8), expected):
            raise ValueError(
                "target does not match the labels the engine read from the dataset for these "
                "samples (a different sample order or class mapping?)"
            )

    def criterion(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Eq. 10 on the current batch (replaces ML-Decoder's ASL ``criterion``).

        Args:
            logits: ``(B, K)`` float logits of the mixed images.
            targets: ``(B, K)`` mixed targets from :meth:`mix`.

        Returns:
            Scalar loss: per-sample sums over the labels, summed (``reduction="sum"``) or
            averaged over the batch; with weight 1 on every label during warm-up.
        """
        b = self._require_batch("criterion")
        loss = self.engine.loss(logits, targets, b.index_r.to(logits.device))
        return loss * logits.shape[0] if self.reduction == "sum" else loss

    @staticmethod
    def _view_probs(model: nn.Module, views: Tensor, device: torch.device) -> Tensor:
        return view_probabilities(model, views, device, amp=device.type == "cuda")

    def _model(self, model: nn.Module | None, what: str) -> nn.Module:
        model = model if model is not None else self._attached.model
        if model is None:
            raise RuntimeError(f"{what}() needs the model: pass it or call attach() first")
        return model

    @torch.no_grad()
    def record(self, model: nn.Module | None = None) -> None:
        """Record the current batch's predictions (``label_source="views"``; else a no-op).

        The random instances' extra views are forwarded without gradient, in eval mode (under
        float16 autocast on CUDA), after the optimiser step, in one batch of ``V * B`` images:
        the ``num_views`` augmented views, then with ``confidence_input="image"`` the
        un-augmented image. The views' mean probability is Eq. 9's average
        (``engine.view_mean``) and, with ``confidence_input="views"``, also f(x) of Eq. 2 and
        6 (``engine.probs``); with ``"image"`` f(x) is the image's ``(B, K)`` probabilities.

        Args:
            model: The model (default: the one given to :meth:`attach`).
        """
        if self.label_source != "views":
            return
        b = self._require_batch("record")
        if b.view_r is None:
            raise RuntimeError("the current batch has no extra views (label_source='views')")
        model = self._model(model, "record")
        device = self._device or next(model.parameters()).device
        image = self.image_transform is not None
        self._record(b.index_r, self._view_probs(model, b.view_r[: self.num_views + int(image)], device))

    def _record(self, index: Tensor, probs: Tensor) -> None:
        """Record ``(V, B, K)`` probabilities: the views, then the image when it is f(x)."""
        if self.image_transform is not None:
            self.engine.record(index, probs[:-1], image_probs=probs[-1])
        else:
            self.engine.record(index, probs)

    @torch.no_grad()
    def _epoch_pass(self, model: nn.Module, epoch: int) -> None:
        if self.num_views > 1 or self.image_transform is not None:
            views = self._with_views(self.dataset, self.num_views, self.image_transform)
        else:
            views = self.dataset
        sampler = ShardedRandomSampler(len(views), seed=self.seed + 7)  # type: ignore[arg-type]
        sampler.set_epoch(epoch)
        loader = DataLoader(
            PairedDataset(views),
            batch_size=self.batch_size or 64,
            sampler=[(i, i) for i in sampler],
            collate_fn=_first_of_pairs,
            num_workers=self._num_workers,
            pin_memory=self._pin_memory,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch, 2)),
        )
        device = self._device or next(model.parameters()).device
        for images, index in loader:
            stacked = images if images.ndim == 5 else images[None]
            self._record(index, self._view_probs(model, stacked, device))

    def end_epoch(self, epoch: int | None = None, model: nn.Module | None = None) -> RefreshReport:
        """Epoch end (Alg. 1): the no-grad pass if ``label_source="epoch_pass"``, then the refresh.

        The refresh fits the 2K GMMs (Eq. 6-8), re-labels (Eq. 9; used from the epoch after
        the last warm-up epoch) and updates the minority sampler (Eq. 2-4).

        Returns:
            The engine's :class:`~balancemix_timm.engine.RefreshReport` (the engine logs it).
        """
        epoch = self.epoch if epoch is None else int(epoch)
        self._current = None
        if self.label_source == "epoch_pass":
            self._epoch_pass(self._model(model, "end_epoch"), epoch)
        report = self.engine.refresh(epoch=epoch)  # logs its report at INFO
        d = report.as_dict()
        _logger.debug(
            "epoch %d: labels in use %s; clean %.4f, re-labeled %.4f, ambiguous %.4f, changed %.4f; "
            "minority weights max/min %.3g",
            epoch, "refined" if report.applied else "given", d["clean_fraction"], d["relabeled_fraction"],
            d["ambiguous_fraction"], d["changed_fraction"], d.get("sampler_max_over_min", float("nan")),
        )
        return report

    # ------------------------------------------------------------------ state
    def config(self) -> dict[str, Any]:
        """Options that must match when a state is loaded (beside the engine's own)."""
        return dict(
            base_loss=self.base_loss,
            asl_options=dict(self.asl_options),
            reduction=self.reduction,
            lam_mode=self.lam_mode,
            label_source=self.label_source,
            num_views=self.num_views,
            confidence_input=self.confidence_input,
        )

    def state_dict(self) -> dict[str, Any]:
        """Engine, collate, epoch and configuration (CPU tensors)."""
        return dict(
            config=self.config(),
            engine=self.engine.state_dict(),
            collate=self.collate.state_dict(),
            epoch=self.epoch,
            batch_size=self.batch_size,
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses another configuration."""
        # A state written before confidence_input existed took f(x) from the views.
        cfg = {"confidence_input": "views", **dict(state_dict.get("config", {}))}
        diff = {k: (cfg.get(k), v) for k, v in self.config().items() if cfg.get(k) != v}
        if diff:
            pretty = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"BalanceMix state was written with other options ({pretty})")
        saved_bs = state_dict.get("batch_size")
        if saved_bs is not None and self.batch_size is not None and saved_bs != self.batch_size:
            raise ValueError(f"BalanceMix state was written with batch size {saved_bs}, now {self.batch_size}")
        self.engine.load_state_dict(state_dict["engine"])
        self.collate.load_state_dict(state_dict["collate"])
        self.epoch = int(state_dict.get("epoch", 0))

    def checkpoint(self, epoch: int, highest_map: float | None = None) -> dict[str, Any]:
        """Everything needed to resume after ``epoch``: attached objects and our state."""
        a = self._attached
        out: dict[str, Any] = dict(
            format=_CHECKPOINT_FORMAT,
            epoch=int(epoch) + 1,
            highest_mAP=None if highest_map is None else float(highest_map),  # ML-Decoder's is numpy
            balancemix=self.state_dict(),
        )
        for name in ("model", "ema", "optimizer", "scheduler", "scaler"):
            obj = getattr(a, name)
            if obj is not None:
                out[name] = obj.state_dict()
        return out

    def save_checkpoint(self, epoch: int, highest_map: float | None = None, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write :meth:`checkpoint` atomically to ``path`` or ``<checkpoint_dir>/balancemix-last.pth``.

        Returns:
            The path written, or ``None`` when no checkpoint folder is set or it does not exist
            (ML-Decoder's own saves are skipped silently then; this logs one warning).
        """
        if path is None:
            if self.checkpoint_dir is None:
                return None
            if not self.checkpoint_dir.is_dir():
                if not self._warned_dir:
                    _logger.warning("checkpoint folder %s does not exist: no BalanceMix checkpoint is "
                                    "written (create it, or set --bm-checkpoint-dir)", self.checkpoint_dir)
                    self._warned_dir = True
                return None
            path = self.checkpoint_dir / _CHECKPOINT_NAME
        atomic_save(self.checkpoint(epoch, highest_map), path)
        return Path(path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> tuple[int, float]:
        """Restore a :meth:`save_checkpoint` file into the attached objects and this plugin.

        Returns:
            ``(start_epoch, highest_mAP)``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # older schedulers pickle functions
            _logger.warning("weights-only load of %s failed (%s); loading it fully", path, err)
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, Mapping) or ckpt.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a BalanceMix checkpoint of the patched ML-Decoder script")
        a = self._attached
        for name in ("model", "ema", "optimizer", "scheduler", "scaler"):
            obj = getattr(a, name)
            if obj is None:
                continue
            if name not in ckpt:
                raise ValueError(f"{path} holds no {name} state")
            obj.load_state_dict(ckpt[name])
        self.load_state_dict(ckpt["balancemix"])
        start = int(ckpt["epoch"])
        best = ckpt.get("highest_mAP")
        _logger.info("resumed from %s: next epoch %d", path, start)
        return start, (0 if best is None else best)


def _first_of_pairs(batch: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """Collate of the epoch pass: ``(views (V, B, C, H, W) or images (B, C, H, W), index (B,))``."""
    items = [pair[0] for pair in batch]
    index = torch.tensor([int(it[2]) for it in items], dtype=torch.long)
    images = [it[0] for it in items]
    if isinstance(images[0], (tuple, list)):
        return torch.stack([torch.stack([im[v] for im in images]) for v in range(len(images[0]))]), index
    return torch.stack(images), index


# ============================================================================ models
class _MissingFactory:
    """Stands for ML-Decoder's ``create_model`` when its TResNet cannot be imported."""

    def __init__(self, error: ImportError) -> None:
        self.error = error

    def __call__(self, args: Any, *rest: Any, **kwargs: Any) -> nn.Module:
        raise ImportError(
            f"ML-Decoder's models cannot be imported ({self.error}); install inplace-abn (needs a "
            "CUDA toolchain) or build the model with --bm-model"
        ) from self.error

    def __bool__(self) -> bool:
        return False


def import_ml_decoder_factory() -> Callable[..., nn.Module]:
    """ML-Decoder's ``src_files.models.create_model``, or a stand-in without inplace-abn.

    ML-Decoder's TResNet imports ``inplace_abn`` (a CUDA extension) unconditionally; when that
    package is missing the returned stand-in is falsy and raises a clear ``ImportError`` if
    called, and :func:`create_model` builds the timm TResNet instead. Other import errors
    propagate.
    """
    try:
        module = importlib.import_module("src_files.models")
    except ModuleNotFoundError as err:
        if err.name != "inplace_abn":
            raise
        return _MissingFactory(err)
    return module.create_model


def _torch_at_least(major: int, minor: int) -> bool:
    parts = torch.__version__.split("+")[0].split(".")
    try:
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def _published_decoder_heads(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            dec = getattr(child, "decoder", None)
            if type(child).__name__ == "MLDecoder" and isinstance(dec, nn.TransformerDecoder):
                found.append((parent, name, child))
    return found


def replace_ml_decoder_heads(model: nn.Module) -> int:
    """Swap every published ``MLDecoder`` head in ``model`` for our equivalent, same weights.

    The published head hands its layer to ``nn.TransformerDecoder``, which on torch >= 2.1
    reads ``layer.self_attn`` and passes ``tgt_is_causal`` (ML-Decoder issue #82):
    :class:`~balancemix_timm.models.MLDecoderHead` computes the same function with the same
    parameter names and calls its layers directly. Zero-shot heads (``zsl``) are left alone.

    Returns:
        The number of heads replaced.
    """
    from balancemix_timm.models import MLDecoderHead, load_ml_decoder_state_dict

    count = 0
    for parent, name, old in _published_decoder_heads(model):
        if getattr(old, "zsl", 0):
            _logger.warning("zero-shot ML-Decoder head %s left as published (not supported)", name)
            continue
        dec = old.decoder
        layer = dec.layers[0]
        new = MLDecoderHead(
            dec.embed_standart.in_features,
            int(dec.num_classes),
            num_groups=dec.query_embed.num_embeddings,
            embed_dim=dec.embed_standart.out_features,
            num_heads=layer.multihead_attn.num_heads,
            dim_feedforward=layer.linear1.out_features,
            dropout=float(layer.dropout.p),
            num_layers=len(dec.layers),
            layer_norm_eps=float(layer.norm1.eps),
        )
        load_ml_decoder_state_dict(new, old.state_dict())
        ref = next(old.parameters())
        new.to(device=ref.device, dtype=ref.dtype).train(old.training)
        setattr(parent, name, new)
        count += 1
    return count


class _InputNormalization:
    """Forward pre-hook: ``(x - mean) / std`` per channel (ResNets need ImageNet statistics)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0]
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return ((x - mean) / std, *inputs[1:])


def _model_path(args: argparse.Namespace) -> str | None:
    path = getattr(args, "model_path", None) or None
    if path is None or os.path.isfile(path):
        return path
    if str(getattr(args, "model_name", "")).lower() == "tresnet_l" and os.path.isfile("./tresnet_l.pth"):
        return "./tresnet_l.pth"  # ML-Decoder's factory looks there too
    raise ValueError(
        f"--model-path {path!r} is not a local file; --bm-model downloads nothing: fetch it "
        "(e.g. with wget) and pass its path, or pass --model-path '' to start from random weights"
    )


def _load_weights(model: nn.Module, path: str) -> None:
    from balancemix_timm.models import (
        MLDecoderClassifier,
        load_ml_decoder_state_dict,
        load_pretrained_backbone,
        read_state_dict,
    )

    try:
        tensors = read_state_dict(path)
    except Exception as err:  # ML-Decoder's checkpoints may pickle more than tensors
        _logger.warning("weights-only load of %s failed (%s); loading it fully", path, err)
        tensors = read_state_dict(path, weights_only=False)
    has_head = any(k.startswith(("head.decoder.", "fc.decoder.")) for k in tensors)
    if has_head and isinstance(model, MLDecoderClassifier):
        report = load_ml_decoder_state_dict(model, tensors, skip_mismatched=True)
    else:
        target = model.backbone if isinstance(model, MLDecoderClassifier) else model
        report = load_pretrained_backbone(target, tensors, skip_mismatched=True)
    _logger.info("weights from %s: %s", path, report.summary())


def create_model(args: argparse.Namespace, factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The model of the patched script.

    * Without ``--bm-model`` and with ML-Decoder's factory importable: ``factory(args)``, with
      its decoder heads replaced by ours on torch >= 2.1 (where the published one crashes;
      below 2.1 the model is returned untouched).
    * With ``--bm-model NAME`` (or when the factory is missing because inplace-abn is absent
      and ``--model-name`` is a TResNet): :func:`balancemix_timm.models.create_model` with an
      ML-Decoder head (``--use-ml-decoder``, ``--num-of-groups``, ``--decoder-embedding``),
      weights from ``--model-path`` (an ML-Decoder checkpoint, head included, or backbone
      weights), and ImageNet normalisation inside the model for ResNets (``--bm-normalize``).

    Args:
        args: Parsed arguments of the patched script.
        factory: ML-Decoder's ``create_model`` (from :func:`import_ml_decoder_factory`).

    Returns:
        The model, on the CPU.
    """
    name = getattr(args, "bm_model", None)
    model_name = str(getattr(args, "model_name", "")).lower()
    if name is None:
        if factory:
            model = factory(args)
            if _torch_at_least(2, 1):
                n = replace_ml_decoder_heads(model)
                if n:
                    _logger.warning("replaced %d ML-Decoder head(s) by balancemix_timm's (same weights): "
                                    "the published one fails on torch >= 2.1 (ML-Decoder issue #82)", n)
            return model
        if model_name not in ML_DECODER_TRESNETS:
            if factory is None:
                raise ValueError("factory is None and --bm-model is not set")
            return factory(args)  # raises the import error with its explanation
        name = "auto"
        _logger.warning("ML-Decoder's TResNet needs inplace-abn, which is missing: building %s as "
                        "timm's %s through balancemix_timm", model_name, ML_DECODER_TRESNETS[model_name])
    if name == "auto":
        name = ML_DECODER_TRESNETS.get(model_name, model_name)
    from balancemix_timm.models import create_model as bm_create_model
    from balancemix_timm.models import model_default_normalization

    if int(getattr(args, "zsl", 0) or 0):
        raise ValueError("--zsl is not supported with --bm-model")
    use_decoder = bool(int(getattr(args, "use_ml_decoder", 1)))
    kwargs: dict[str, Any] = {}
    if use_decoder:
        kwargs["ml_decoder_kwargs"] = dict(
            num_groups=int(getattr(args, "num_of_groups", -1)),
            embed_dim=768 if int(getattr(args, "decoder_embedding", 768)) < 0 else int(args.decoder_embedding),
        )
    model = bm_create_model(
        name, num_classes=int(args.num_classes), head="ml_decoder" if use_decoder else "linear", **kwargs
    )
    path = _model_path(args)
    if path:
        _load_weights(model, path)
    mode = getattr(args, "bm_normalize", "auto")
    if mode == "auto":
        stats = model_default_normalization(name)
    elif mode == "imagenet":
        from balancemix_timm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        stats = (IMAGENET_MEAN, IMAGENET_STD)
    elif mode == "none":
        stats = None
    else:
        raise ValueError(f"--bm-normalize must be auto, imagenet or none, got {mode!r}")
    if stats is not None:
        model.register_forward_pre_hook(_InputNormalization(*stats))
        model.balancemix_normalization = stats  # type: ignore[assignment]
    _logger.info("model %s (%s head, %d classes) from balancemix_timm; input normalisation: %s",
                 name, "ML-Decoder" if use_decoder else "linear", int(args.num_classes),
                 "none" if stats is None else f"mean {stats[0]} std {stats[1]}")
    return model
