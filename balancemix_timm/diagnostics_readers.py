"""Readers and computations of the run diagnostics: label-diagnostics snapshots (``.npz``), the
split of GMM input losses into correct and wrong given labels, the selection summary and the
``metrics.jsonl`` rows. They need numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .textfiles import read_json_lines

__all__ = ["load_label_diagnostics", "loss_split", "selection_summary", "relabel_summary", "wrong_label_auc",
           "read_metrics"]


#: What :func:`~balancemix_timm.diagnostics_plots.plot_loss_distributions` accepts: an ``.npz`` path or its arrays.
Source = str | Path | Mapping[str, Any]

_STAGE_TEXT = {"warmup_end": "end of warm-up", "last": "end of training"}


def _scalar(value: Any, default: Any = None) -> Any:
    """A 0-d array (as stored in an ``.npz``) or a plain value as a Python scalar."""
    if value is None:
        return default
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 else arr.tolist()


def load_label_diagnostics(source: Source) -> dict[str, Any]:
    """The arrays of one ``label_diagnostics/epoch_XXX.npz`` as a dictionary.

    Args:
        source: Path of the ``.npz`` file, or a mapping holding its arrays (at least
            ``losses``, ``given_labels`` and ``clean_labels``; the others are optional).

    Returns:
        A dictionary of numpy arrays (0-d arrays for the scalars), keys as saved by
        :meth:`~balancemix_timm.methods.standard.BalanceMixMethod.save_label_diagnostics`.

    Raises:
        KeyError: If a required array is missing.
    """
    if isinstance(source, (str, Path)):
        with np.load(source, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    else:
        data = {k: np.asarray(v) for k, v in source.items()}
    for key in ("losses", "given_labels", "clean_labels"):
        if key not in data:
            raise KeyError(f"label diagnostics need {key!r}; got {sorted(data)}")
    return data


def _label_arrays(data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(losses float64 (N, K), given bool (N, K), clean bool (N, K), seen bool (N,))`` of a
    snapshot; ``seen`` defaults to every sample. Raises ``ValueError`` on mismatched shapes."""
    losses = np.asarray(data["losses"], dtype=np.float64)
    given = np.asarray(data["given_labels"]).astype(bool)
    clean = np.asarray(data["clean_labels"]).astype(bool)
    if losses.shape != given.shape or clean.shape != given.shape:
        raise ValueError(f"losses {losses.shape}, given_labels {given.shape} and clean_labels {clean.shape} must match")
    seen = np.asarray(data.get("seen", np.ones(len(losses), bool))).astype(bool)
    return losses, given, clean, seen


def loss_split(data: Mapping[str, Any]) -> dict[str, Any]:
    """The losses as the GMMs decide on them, split by polarity and correctness.

    With ``gmm_normalize="minmax"`` and the per-group ``gmm_shift`` / ``gmm_scale`` present,
    each loss is mapped to ``(loss - shift) / scale`` of its (class, given polarity) group
    (the space the GMM is fitted in, [0, 1] per group) and the thresholds are ``gmm_threshold``;
    otherwise raw losses and ``gmm_threshold_loss``. Unseen samples (``seen`` False) are left
    out.

    Args:
        data: Arrays from :func:`load_label_diagnostics`.

    Returns:
        ``{"space": "normalised" | "raw", "polarity": {1: part, 0: part}}`` where each part is a
        dictionary with ``x`` (the losses of that polarity), ``correct`` (bool mask: given
        label equals the clean one), ``selected`` (bool mask: p_G > 0.5, or None without
        ``clean_prob``), ``thresholds`` (the K per-class thresholds of that polarity, NaN
        dropped) and ``n_groups_fallback``.
    """
    losses, given, clean, seen = _label_arrays(data)
    normalize = str(_scalar(data.get("gmm_normalize"), "minmax"))
    shift, scale = data.get("gmm_shift"), data.get("gmm_scale")
    have_groups = shift is not None and scale is not None and np.isfinite(np.asarray(shift, float)).any()
    space = "normalised" if normalize == "minmax" and have_groups else "raw"
    x = losses
    if space == "normalised":
        shift = np.asarray(shift, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        pol = given.astype(np.int64)
        cls = np.broadcast_to(np.arange(losses.shape[1]), losses.shape)
        x = (losses - shift[pol, cls]) / scale[pol, cls]
    thr_key = "gmm_threshold" if space == "normalised" else "gmm_threshold_loss"
    thresholds = data.get(thr_key)
    clean_prob = data.get("clean_prob")
    fallback = data.get("gmm_fallback")
    parts = {}
    for polarity in (1, 0):
        mask = (given == bool(polarity)) & seen[:, None]
        thr = np.asarray(thresholds, dtype=np.float64)[polarity] if thresholds is not None else np.array([])
        parts[polarity] = dict(
            x=x[mask],
            correct=(given == clean)[mask],
            selected=(np.asarray(clean_prob)[mask] > 0.5) if clean_prob is not None else None,
            thresholds=thr[np.isfinite(thr)],
            n_groups_fallback=int(np.asarray(fallback)[polarity].sum()) if fallback is not None else 0,
        )
    return dict(space=space, polarity=parts)


def selection_summary(data: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """How the GMMs sorted the labels: per polarity, counts and the shares kept as clean.

    Args:
        data: Arrays from :func:`load_label_diagnostics` (with ``clean_prob``).

    Returns:
        ``{"positive": {...}, "negative": {...}}``, each with ``n_correct``, ``n_wrong`` and
        ``correct_kept`` / ``wrong_kept``: the share of correct / wrong given labels with
        p_G > 0.5 (NaN when there are none).
    """
    split = loss_split(data)
    out = {}
    for polarity, name in ((1, "positive"), (0, "negative")):
        part = split["polarity"][polarity]
        sel, correct = part["selected"], part["correct"]
        row: dict[str, float] = dict(n_correct=int(correct.sum()), n_wrong=int((~correct).sum()))
        for key, mask in (("correct_kept", correct), ("wrong_kept", ~correct)):
            row[key] = float(sel[mask].mean()) if sel is not None and mask.any() else float("nan")
        out[name] = row
    return out


def relabel_summary(data: Mapping[str, Any]) -> dict[str, float]:
    """What Eq. 9 did, by direction, and how confident f(x) is on the true positives.

    Eq. 9 re-labels a label that is not clean to 1 when the views' mean exceeds ``eps`` and to 0
    when it is below ``1 - eps``; both counts include labels whose new value equals the given one
    (the paper's Eq. 13 counts them too).

    Args:
        data: Arrays from :func:`load_label_diagnostics` (with ``state``, ``refined_labels`` and
            ``probs``).

    Returns:
        ``to_one`` / ``to_zero`` (counts of labels re-labeled to 1 / to 0), ``to_one_accuracy`` /
        ``to_zero_accuracy`` (share whose new value is the true one; NaN without any), and
        ``positive_prob_median`` / ``positive_prob_p90`` (median and 90th percentile of f(x)
        over the true positive labels of the recorded samples).
    """
    _, given, clean, seen = _label_arrays(data)
    state = np.asarray(data["state"])
    refined = np.asarray(data["refined_labels"]).astype(bool)
    probs = np.asarray(data["probs"], dtype=np.float64)
    relabeled = (state == 1) & seen[:, None]  # LabelState.RELABELED
    out: dict[str, float] = {}
    for name, value in (("to_one", True), ("to_zero", False)):
        mask = relabeled & (refined == value)
        out[name] = float(mask.sum())
        out[f"{name}_accuracy"] = float((clean[mask] == value).mean()) if mask.any() else float("nan")
    positives = probs[clean & seen[:, None]]
    out["positive_prob_median"] = float(np.median(positives)) if positives.size else float("nan")
    out["positive_prob_p90"] = float(np.quantile(positives, 0.9)) if positives.size else float("nan")
    return out


def wrong_label_auc(data: Mapping[str, Any], min_per_kind: int = 2) -> dict[str, dict[str, Any]]:
    """How well the GMMs' input separates wrong from correct given labels: per-class ROC AUC.

    For each class and polarity of the given label, the ROC AUC of the loss the GMMs are fitted
    on (higher loss = "this given label is wrong") against the truth (given label differs from
    the clean one), by :func:`sklearn.metrics.roc_auc_score`. 1.0 separates perfectly, 0.5 is
    chance. A loss is ranked within its own (class, polarity) group, so per-group normalisation
    does not change it.

    Args:
        data: Arrays from :func:`load_label_diagnostics`.
        min_per_kind: A (class, polarity) group counts only with at least this many wrong and
            this many correct labels (the AUC of fewer is mostly noise).

    Returns:
        ``{"positive": {...}, "negative": {...}}``, each with ``per_class`` (``K`` floats, NaN
        for groups that do not count), ``mean`` and ``median`` over the counted classes (NaN when
        none counts) and ``n_classes`` (how many counted).
    """
    from sklearn.metrics import roc_auc_score

    losses, given, clean, seen = _label_arrays(data)
    out = {}
    for polarity, name in ((1, "positive"), (0, "negative")):
        per_class = np.full(losses.shape[1], np.nan)
        for k in range(losses.shape[1]):
            mask = seen & (given[:, k] == bool(polarity))
            wrong = given[mask, k] != clean[mask, k]
            if wrong.sum() >= min_per_kind and (~wrong).sum() >= min_per_kind:
                per_class[k] = roc_auc_score(wrong, losses[mask, k])
        counted = per_class[np.isfinite(per_class)]
        out[name] = dict(per_class=per_class.tolist(), n_classes=int(counted.size),
                         mean=float(counted.mean()) if counted.size else float("nan"),
                         median=float(np.median(counted)) if counted.size else float("nan"))
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.jsonl`` (one per epoch; empty if there is none).

    Args:
        run_dir: A run folder written by ``balancemix-train``.

    Returns:
        A list of dictionaries, in file order.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return read_json_lines(path)


def _setting_text(data: Mapping[str, Any]) -> str:
    """``"mislabel 40% (run name)"`` from a snapshot's metadata, as far as it has some."""
    noise = _scalar(data.get("noise"))
    rate = _scalar(data.get("noise_rate"))
    run = _scalar(data.get("run_name"))
    text = f"{noise} {100 * rate:g}%" if noise and rate is not None and noise != "clean" else (noise or "")
    if run:
        text = f"{text} ({run})" if text else str(run)
    return text


def _snapshot_title(data: Mapping[str, Any]) -> str:
    """``"epoch 2 (end of warm-up)"``."""
    epoch = _scalar(data.get("epoch"))
    stages = data.get("stages")
    stages = [] if stages is None else [str(s) for s in np.atleast_1d(stages)]
    what = " and ".join(_STAGE_TEXT.get(s, s) for s in stages)
    text = f"epoch {epoch}" if epoch is not None else "snapshot"
    return f"{text} ({what})" if what else text
