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

Runnable on today's stack: :func:`create_model` (:mod:`~balancemix_timm.integrations.ml_decoder_models`)
builds the model with an ML-Decoder head that runs on torch >= 2.1.

Layout: the flags (:mod:`~balancemix_timm.integrations.ml_decoder_flags`, generated from
:class:`~balancemix_timm.options.BalanceMixOptions`), the plugin
(:mod:`~balancemix_timm.integrations.ml_decoder_plugin`, an adapter over
:class:`~balancemix_timm.recipe.BalanceMixRecipe`), the labels and the models; this module is
what the patched script imports.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from .ml_decoder_flags import MODEL_FLAGS, add_args, flag_defaults
from .ml_decoder_labels import labels_from_dataset
from .ml_decoder_models import (
    ML_DECODER_TRESNETS,
    create_model,
    import_ml_decoder_factory,
    replace_ml_decoder_heads,
)
from .ml_decoder_plugin import BalanceMixPlugin, PairedTrainLoader

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
) -> BalanceMixPlugin | None:
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
        defaults = flag_defaults()
        changed = sorted(
            k for k, v in defaults.items()
            if k not in MODEL_FLAGS and k != "balancemix" and hasattr(args, k) and getattr(args, k) != v
        )
        if changed:
            _logger.warning("without --balancemix these flags are ignored: %s",
                            ", ".join("--" + k.replace("_", "-") for k in changed))
        return None
    _ensure_console_logging(getattr(args, "bm_log_level", "INFO"))
    return BalanceMixPlugin.from_args(args, dataset, labels=labels, image_transform=image_transform)
