"""Checkpoint reading and loading: backbone weights and published ML-Decoder checkpoints.

Files are local (``.pth``/``.pt``/``.safetensors``), read weights-only by default with the
plain-data globals of :func:`checkpoint_safe_globals`; every load returns a :class:`LoadReport`.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from balancemix_timm.models.head import MLDecoderClassifier, MLDecoderHead

__all__ = [
    "TRAIN_CHECKPOINT_FORMAT",
    "ML_DECODER_CHECKPOINT_FORMAT",
    "check_checkpoint_format",
    "LoadReport",
    "check_checkpoint_file",
    "checkpoint_safe_globals",
    "read_state_dict",
    "load_pretrained_backbone",
    "load_ml_decoder_state_dict",
]

# The package's one logger: log filters name ``balancemix_timm.models``.
_logger = logging.getLogger("balancemix_timm.models")

#: ``format`` of a ``balancemix-train`` training checkpoint (``last.pth``); the number after the
#: slash changes whenever the layout does, and a file of another number is refused.
TRAIN_CHECKPOINT_FORMAT = "balancemix-timm/2"
#: ``format`` of the patched ML-Decoder script's checkpoint (``balancemix-last.pth``).
ML_DECODER_CHECKPOINT_FORMAT = "balancemix-ml-decoder/2"


def check_checkpoint_format(ckpt: Any, expected: str, path: str | os.PathLike[str], *, what: str) -> None:
    """Refuse a checkpoint whose ``format`` is not ``expected``.

    Args:
        ckpt: The loaded checkpoint.
        expected: :data:`TRAIN_CHECKPOINT_FORMAT` or :data:`ML_DECODER_CHECKPOINT_FORMAT`.
        path: The file it was read from (named in the error).
        what: What the file should be, for the error (e.g. ``"balancemix-train checkpoint"``).

    Raises:
        ValueError: not a mapping with ``format == expected``; a file of the same kind in another
            layout version names both versions (such a file cannot be resumed: train again).
    """
    found = ckpt.get("format") if isinstance(ckpt, Mapping) else None
    if found == expected:
        return
    family = expected.split("/")[0]
    if isinstance(found, str) and found.split("/")[0] == family:
        raise ValueError(
            f"{path} is a {what} in layout {found!r}, written by another version of balancemix-timm; "
            f"this version reads {expected!r} only: train again (or use the version that wrote it)"
        )
    raise ValueError(f"{path} is not a {what} (format {found!r}, expected {expected!r})")


# Prefixes under which ML-Decoder checkpoints store the head: ``model.head`` for TResNets,
# ``model.fc`` for ResNet-style backbones (see ``add_ml_decoder_head`` in ML-Decoder).
_ML_DECODER_PREFIXES = ("head.decoder.", "fc.decoder.")
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


@dataclass
class LoadReport:
    """What a checkpoint load did.

    Attributes:
        loaded: Keys of the model (its ``state_dict`` names) that received a tensor.
        missing: Keys of the model that the checkpoint did not provide (left as they were).
        unexpected: Checkpoint keys (after mapping) with no counterpart in the model.
        ignored: Checkpoint keys deliberately skipped (classifier weights, head or backbone keys
            that do not apply to the target module).
        mismatched: Checkpoint keys whose shape differs from the model's, with both shapes
            (only filled when mismatches are skipped instead of raising).
        mapping: Checkpoint key -> model key for every loaded tensor.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line with the counts, for logs."""
        return (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected "
            f"{len(self.unexpected)}, ignored {len(self.ignored)}, shape-mismatched "
            f"{len(self.mismatched)}"
        )


def checkpoint_safe_globals() -> list[Any]:
    """The non-tensor globals that a weights-only ``torch.load`` of a training checkpoint allows.

    Training scripts of this field pickle plain data next to the weights: timm's ``train.py``
    and torchvision's reference scripts store their ``argparse.Namespace`` under ``"args"``;
    ``balancemix-train`` stores NumPy arrays and scalars (the NumPy RNG state, metrics).
    Every entry here rebuilds data only (no code runs beyond the constructor): NumPy's array
    and scalar reconstructors under both module paths (``numpy.core`` before NumPy 2,
    ``numpy._core`` after), ``numpy.ndarray``, ``numpy.dtype`` and its per-type classes,
    ``argparse.Namespace`` and the concrete ``pathlib`` path classes.

    Returns:
        Objects, or ``(object, "module.name")`` pairs for pickles written under another module
        path, in the form ``torch.serialization.safe_globals`` takes.
    """
    import argparse
    import pathlib

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    scalar = core.multiarray.scalar
    allowed: list[Any] = [
        reconstruct,
        scalar,
        np.ndarray,
        np.dtype,
        argparse.Namespace,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
    ]
    allowed += sorted({type(np.dtype(t)) for t in set(np.sctypeDict.values())}, key=str)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for fn in (reconstruct, scalar):
            name = f"{module}.{fn.__name__}"
            if name != f"{fn.__module__}.{fn.__name__}":
                allowed.append((fn, name))
    return allowed


#: What to do about a damaged checkpoint file when the caller has no better advice.
_DAMAGED_ADVICE = "write it again, or pass another file"


def check_checkpoint_file(path: str | os.PathLike[str], *, name: str = "path", advice: str = _DAMAGED_ADVICE) -> Path:
    """Check that a checkpoint file is complete, reading only its directory, not its tensors.

    Cheap enough to run before anything expensive is built from the file. Checked:

    * the file exists and is not empty;
    * ``.safetensors``: the header, and that its tensors fit the file (safetensors' ``safe_open``);
    * anything else must be ``torch.save``'s zip archive, whose directory at the end of the file
      must be readable (a file cut short loses it), or a legacy ``torch.save`` pickle (not
      checked further here: the loader reports its errors).

    Args:
        path: The file.
        name: The caller's name for ``path`` (e.g. ``"pretrained_path"``, ``"--resume"``),
            used in messages.
        advice: What the user can do about a damaged file, appended to the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is empty or cut short (the message names ``name`` and the file,
            says it is damaged or incomplete and gives ``advice``), or is no checkpoint at all.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name}: checkpoint file not found: {str(file)!r}")

    def damaged(detail: str) -> ValueError:
        return ValueError(f"{name} {str(file)!r} is damaged or incomplete ({detail}): {advice}")

    size = file.stat().st_size
    if size == 0:
        raise damaged("0 bytes, e.g. a run stopped while writing it")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as err:
            raise damaged(f"{size} bytes; safetensors: {err}") from err
        return file
    with file.open("rb") as fh:
        head = fh.read(4)
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            raise damaged(f"{size} bytes; its zip directory is unreadable: {err}") from err
        return file
    if head.startswith(b"PK"):
        raise damaged(f"{size} bytes; a zip archive without its directory, i.e. cut short")
    if not head.startswith(b"\x80"):  # neither zip nor pickle (protocol >= 2)
        raise ValueError(
            f"{name} {str(file)!r} is not a readable torch checkpoint ({size} bytes, neither "
            "torch.save's zip format nor a pickle)"
        )
    return file


def _torch_load(file: Path, weights_only: bool) -> Any:
    """``torch.load`` on the CPU; weights-only loads allow :func:`checkpoint_safe_globals`."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if not weights_only or safe_globals is None:
        return torch.load(str(file), map_location="cpu", weights_only=weights_only)
    with safe_globals(checkpoint_safe_globals()):
        return torch.load(str(file), map_location="cpu", weights_only=True)


def read_state_dict(
    path: str | os.PathLike[str], *, weights_only: bool = True, name: str = "path"
) -> dict[str, Tensor]:
    """Read a state dict from a local file.

    ``.safetensors`` files are read with safetensors, anything else with ``torch.load`` on the
    CPU. Weights-only loads (the default) allow the plain-data globals of
    :func:`checkpoint_safe_globals`, so checkpoints of timm's ``train.py`` (``"state_dict"``,
    ``"state_dict_ema"``, ``"args"`` Namespace, ``"optimizer"`` ...), torchvision's reference
    scripts (``"model"``, ``"lr_scheduler"``, ``"args"`` ...), ML-Decoder / ASL (plain or under
    ``"model"`` / ``"state_dict"``) and ``balancemix-train`` (``last.pth``, ``best.pth``) load
    without unpickling code. A dict wrapping the weights under ``"state_dict"``, ``"model"``,
    ``"state_dict_ema"`` or ``"model_ema"`` is unwrapped (first match, repeatedly), non-tensor
    entries are dropped and a ``"module."`` prefix (DistributedDataParallel) is stripped.

    Args:
        path: The file.
        weights_only: Passed to ``torch.load``; ``False`` only for trusted files that pickle
            other objects next to the weights.
        name: The caller's name for ``path`` (e.g. ``"pretrained_path"``), used in errors.

    Returns:
        Name -> tensor.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: The file is damaged or incomplete (:func:`check_checkpoint_file`), cannot
            be read as a checkpoint, a weights-only load refuses an
            object it pickles (the message says how to re-save the weights), or it holds no
            tensors.
    """
    file = check_checkpoint_file(path, name=name)
    what = f"{name} {str(file)!r}"
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(file), device="cpu")
        except Exception as err:
            raise ValueError(f"{what} is not a readable safetensors file: {err}") from err
    else:
        try:
            obj = _torch_load(file, weights_only)
        except pickle.UnpicklingError as err:
            if not weights_only:
                raise ValueError(f"{what} is not a readable torch checkpoint: {err}") from err
            way_out = (
                "If you trust the file, re-save its weights alone and pass that file instead: "
                f"python -c \"import torch; c = torch.load({str(file)!r}, weights_only=False); "
                "torch.save(c.get('state_dict', c.get('model', c)) if isinstance(c, dict) else "
                "c.state_dict(), 'weights.pth')\"; or, in Python, call "
                "load_pretrained_backbone(model, path, weights_only=False)"
            )
            found = re.search(r"GLOBAL (\S+)", str(err))
            if found:
                raise ValueError(
                    f"{what}: a weights-only torch.load refuses this checkpoint (it pickles "
                    f"{found.group(1)}, which is not plain data). {way_out}"
                ) from err
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            reason = lines[-2] if len(lines) >= 2 else str(err)
            raise ValueError(
                f"{what} is not a readable torch checkpoint, or pickles something a weights-only "
                f"torch.load refuses ({reason}). {way_out}"
            ) from err
        except EOFError as err:
            raise ValueError(f"{what} is damaged or incomplete (it ends early): {_DAMAGED_ADVICE}") from err
        except Exception as err:  # torch.load raises many types on a file that is no checkpoint
            raise ValueError(
                f"{what} is not a readable torch checkpoint ({type(err).__name__}: {err})"
            ) from err
    return _unwrap_state_dict(obj, what)


def _unwrap_state_dict(obj: Any, what: str) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} is not a state dict (got {type(obj).__name__})")
    while True:
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{what} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if classifier is None:
        return ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{n}." for n in names)


def _timm_filter_fn(model: nn.Module) -> Callable[[dict, nn.Module], dict] | None:
    module = sys.modules.get(type(model).__module__)
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if callable(fn) else None


def _is_ml_decoder_key(key: str) -> bool:
    return key.startswith(_ML_DECODER_PREFIXES)


def _load_checked(
    model: nn.Module,
    tensors: Mapping[str, Tensor],
    report: LoadReport,
    *,
    skip_mismatched: bool,
    what: str,
) -> None:
    """Load ``tensors`` (model key -> tensor) into ``model`` non-strictly, filling ``report``."""
    own = model.state_dict()
    usable: dict[str, Tensor] = {}
    bad: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for key, value in tensors.items():
        if key not in own:
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            bad.append((key, tuple(value.shape), tuple(own[key].shape)))
            continue
        usable[key] = value
    if bad and not skip_mismatched:
        listed = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"{what}: {len(bad)} tensors have the wrong shape: {listed}{more}")
    report.mismatched.extend(bad)
    result = model.load_state_dict(usable, strict=False)
    report.loaded.extend(sorted(usable))
    report.missing.extend(result.missing_keys)
    report.unexpected.extend(sorted(k for k in tensors if k not in own))


def load_pretrained_backbone(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Tensor],
    *,
    convert: bool = True,
    skip_mismatched: bool = False,
    weights_only: bool = True,
    name: str = "source",
) -> LoadReport:
    """Load backbone weights from a local checkpoint, ignoring classifier keys.

    Steps: read (:func:`read_state_dict`); strip a ``"backbone."`` prefix (checkpoints of
    :class:`MLDecoderClassifier`); if ``convert``, apply the ``checkpoint_filter_fn`` of the
    model's timm module when it has one (e.g. TResNet's converter from the inplace-ABN layout
    of ASL/ML-Decoder checkpoints); drop the classifier keys named by the model's timm config
    (``fc.*`` for ResNets, ``head.fc.*`` for TResNets) and ML-Decoder head keys
    (``head.decoder.*``, ``fc.decoder.*``); load with ``strict=False``. Missing/unexpected
    counts are logged.

    Args:
        model: A timm model (with or without its classifier).
        source: A file path or an already-loaded state dict.
        convert: Apply timm's per-architecture checkpoint converter.
        skip_mismatched: Skip (and report) tensors whose shape differs instead of raising.
        weights_only: Passed to ``torch.load``; the default allows the plain-data objects that
            training scripts pickle next to the weights (:func:`read_state_dict`).
        name: The caller's name for ``source`` (``create_model`` passes
            ``"pretrained_path"``), used in errors and logs.

    Returns:
        The :class:`LoadReport`.

    Raises:
        FileNotFoundError: ``source`` is a path to no file.
        ValueError: The file is unreadable or refused by a weights-only load (with the way
            out), or none of its tensors matches the model.
    """
    if isinstance(source, Mapping):
        tensors = _unwrap_state_dict(source, name)
        what = name
    else:
        tensors = read_state_dict(source, weights_only=weights_only, name=name)
        what = f"{name} {str(source)!r}"
    own_keys = set(model.state_dict())
    if not any(k.startswith("backbone.") for k in own_keys):
        body = [k for k in tensors if not _is_ml_decoder_key(k)]
        if body and all(k.startswith("backbone.") for k in body):
            tensors = {
                (k[len("backbone.") :] if k.startswith("backbone.") else k): v
                for k, v in tensors.items()
            }
    report = LoadReport()
    if convert:
        fn = _timm_filter_fn(model)
        if fn is not None:
            tensors = dict(fn(dict(tensors), model))
    classifier = _classifier_prefixes(model)
    kept: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if key.startswith(classifier) or _is_ml_decoder_key(key):
            report.ignored.append(key)
        else:
            kept[key] = value
    _load_checked(model, kept, report, skip_mismatched=skip_mismatched, what=what)
    report.mapping = {k: k for k in report.loaded}  # names after prefix stripping/conversion
    report.missing = [k for k in report.missing if not k.startswith(classifier)]
    if not report.loaded:
        raise ValueError(
            f"{what}: none of its {len(tensors)} tensors match the model "
            f"({type(model).__name__}); first keys: {list(tensors)[:3]}"
        )
    _logger.info("backbone weights from %s: %s", what, report.summary())
    if report.missing or report.unexpected:
        _logger.warning(
            "backbone load from %s: %d missing (e.g. %s), %d unexpected (e.g. %s)",
            what,
            len(report.missing),
            report.missing[:3],
            len(report.unexpected),
            report.unexpected[:3],
        )
    return report


def load_ml_decoder_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor] | str | os.PathLike[str],
    *,
    load_backbone: bool = True,
    convert: bool = True,
    skip_mismatched: bool = False,
    weights_only: bool = True,
) -> LoadReport:
    """Load a published ML-Decoder checkpoint into our model.

    Key mapping:

    * ``head.decoder.X`` (TResNet checkpoints) and ``fc.decoder.X`` (ResNet-style checkpoints)
      -> ``decoder.X`` of :class:`MLDecoderHead` (``head.decoder.X`` of
      :class:`MLDecoderClassifier`). Our names equal the published ones below ``decoder.``
      (``embed_standart``, ``query_embed``, ``layers.0.multihead_attn``/``linear1``/``linear2``/
      ``norm1..3``, ``duplicate_pooling``, ``duplicate_pooling_bias``); keys already in our
      layout (``decoder.X``, ``head.decoder.X``) pass through.
    * Every other key is a backbone key. For an :class:`MLDecoderClassifier` (and
      ``load_backbone``) it goes to ``backbone.``, after timm's converter for the architecture
      when ``convert`` (ML-Decoder's TResNets use inplace-ABN names, which timm's TResNet
      converter maps: ``conv1.0`` -> ``conv1.conv``, ``conv1.1`` -> ``conv1.bn`` and
      ``|w| + 1e-5`` for the batch-norm weights); classifier keys are ignored. For a bare
      :class:`MLDecoderHead` they are reported as ``ignored``.

    Args:
        model: An :class:`MLDecoderHead` or :class:`MLDecoderClassifier`.
        state_dict: The checkpoint (a mapping, possibly wrapped under ``"model"`` /
            ``"state_dict"``) or a path to it.
        load_backbone: Also load the backbone keys (classifier models only).
        convert: Apply timm's checkpoint converter to the backbone keys.
        skip_mismatched: Skip (and report) tensors of the wrong shape (e.g. a different class
            count) instead of raising ``ValueError``.
        weights_only: Passed to ``torch.load`` when a path is given.

    Returns:
        The :class:`LoadReport`; ``mapping`` gives checkpoint key -> model key (for backbone
        keys, the checkpoint key after timm's conversion).
    """
    if isinstance(model, MLDecoderClassifier):
        head, head_prefix = model.head, "head."
    elif isinstance(model, MLDecoderHead):
        head, head_prefix = model, ""
    else:
        raise ValueError(
            f"model must be an MLDecoderHead or MLDecoderClassifier, got {type(model).__name__}"
        )
    if isinstance(state_dict, Mapping):
        tensors = _unwrap_state_dict(state_dict, "state_dict")
    else:
        tensors = read_state_dict(state_dict, weights_only=weights_only)

    report = LoadReport()
    head_tensors: dict[str, Tensor] = {}
    head_source: dict[str, str] = {}
    body: dict[str, Tensor] = {}
    for key, value in tensors.items():
        local: str | None = None
        for prefix in _ML_DECODER_PREFIXES:
            if key.startswith(prefix):
                local = "decoder." + key[len(prefix) :]
        if local is None and key.startswith("decoder."):
            local = key
        if local is None:
            body[key] = value
            continue
        head_tensors[local] = value
        head_source[local] = key

    _load_checked(head, head_tensors, report, skip_mismatched=skip_mismatched, what="state_dict")
    report.mapping.update({head_source[k]: head_prefix + k for k in report.loaded})
    report.loaded = [head_prefix + k for k in report.loaded]
    report.missing = [head_prefix + k for k in report.missing]
    report.unexpected = [head_source[k] for k in report.unexpected]

    if isinstance(model, MLDecoderClassifier) and load_backbone and body:
        backbone = model.backbone
        if all(k.startswith("backbone.") for k in body):
            body = {k[len("backbone.") :]: v for k, v in body.items()}
        if convert:
            fn = _timm_filter_fn(backbone)
            if fn is not None:
                body = dict(fn(dict(body), backbone))
        classifier = _classifier_prefixes(backbone)
        kept = {}
        for key, value in body.items():
            if key.startswith(classifier):
                report.ignored.append(key)
            else:
                kept[key] = value
        sub = LoadReport()
        _load_checked(backbone, kept, sub, skip_mismatched=skip_mismatched, what="state_dict")
        report.loaded += ["backbone." + k for k in sub.loaded]
        report.mapping.update({k: "backbone." + k for k in sub.loaded})
        report.missing += ["backbone." + k for k in sub.missing]
        report.unexpected += sub.unexpected
        report.mismatched += sub.mismatched
    else:
        report.ignored += sorted(body)
    if not report.loaded:
        raise ValueError(
            f"state_dict: none of its {len(tensors)} tensors match the model; ML-Decoder keys "
            f"start with {_ML_DECODER_PREFIXES}, first keys: {list(tensors)[:3]}"
        )
    _logger.info("ML-Decoder checkpoint: %s", report.summary())
    if report.missing or report.unexpected:
        _logger.warning(
            "ML-Decoder checkpoint: %d missing (e.g. %s), %d unexpected (e.g. %s)",
            len(report.missing),
            report.missing[:3],
            len(report.unexpected),
            report.unexpected[:3],
        )
    return report
