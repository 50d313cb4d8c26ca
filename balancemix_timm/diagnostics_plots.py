"""Figures of the run diagnostics: loss distributions with the GMM thresholds, label management
and sampler spread. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .diagnostics_readers import (
    Source,
    _setting_text,
    _snapshot_title,
    load_label_diagnostics,
    loss_split,
)

__all__ = ["plot_loss_distributions", "plot_label_management", "plot_sampler_spread"]


_POLARITY_TEXT = {1: "given positive labels", 0: "given negative labels"}


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or an ImportError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the diagnostics figures need matplotlib: pip install 'balancemix-timm[plot]'") from exc
    return plt


def plot_loss_distributions(npz_path_or_arrays: Source | Sequence[Source], out_png: str | Path,
                            *, title: str | None = None, bins: int = 50) -> Path:
    """Histograms of the GMMs' losses, correct vs wrong given labels, per polarity.

    One row per snapshot (e.g. end of warm-up, end of training), one column per given
    polarity. Each histogram is normalised to its own total (correct and wrong labels are
    far from equally many); the legend gives counts and the share the GMMs kept as clean
    (p_G > 0.5). The vertical line is the median over classes of the per-(class, polarity)
    thresholds where p_G crosses 0.5, the shaded band their interquartile range.

    Args:
        npz_path_or_arrays: An ``.npz`` path or mapping of arrays (see
            :func:`load_label_diagnostics`), or a sequence of them (one row each).
        out_png: Where to write the PNG.
        title: Figure title (default: the noise setting and run name from the snapshot).
        bins: Histogram bins.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    plt = _pyplot()
    sources = (list(npz_path_or_arrays) if isinstance(npz_path_or_arrays, (list, tuple))
               else [npz_path_or_arrays])
    if not sources:
        raise ValueError("plot_loss_distributions needs at least one snapshot")
    snaps = [load_label_diagnostics(s) for s in sources]
    fig, axes = plt.subplots(len(snaps), 2, figsize=(11, 3.6 * len(snaps)), squeeze=False)
    space = "raw"
    for row, data in zip(axes, snaps):
        split = loss_split(data)
        space = split["space"]
        for ax, polarity in zip(row, (1, 0)):
            part = split["polarity"][polarity]
            x = part["x"]
            hi = 1.0 if space == "normalised" else (float(np.nanmax(x)) if x.size else 1.0)
            edges = np.linspace(0.0, hi if hi > 0 else 1.0, bins + 1)
            for mask, name, color in ((part["correct"], "correct", "tab:blue"), (~part["correct"], "wrong", "tab:red")):
                vals = x[mask]
                label = f"{name} (n={vals.size:,}"
                if part["selected"] is not None and vals.size:
                    label += f"; {100 * part['selected'][mask].mean():.0f}% kept as clean"
                label += ")"
                if vals.size:
                    weights = np.full(vals.size, 1.0 / vals.size)
                    ax.hist(vals, bins=edges, weights=weights, histtype="stepfilled", alpha=0.35, color=color)
                    ax.hist(vals, bins=edges, weights=weights, histtype="step", color=color, label=label)
                else:
                    ax.plot([], [], color=color, label=label)
            thr = part["thresholds"]
            if thr.size:
                q1, med, q3 = np.percentile(thr, [25, 50, 75])
                ax.axvspan(q1, q3, color="k", alpha=0.12, label=f"GMM thresholds, IQR [{q1:.2f}, {q3:.2f}]")
                ax.axvline(med, color="k", ls="--", label=f"GMM threshold, median over {thr.size} classes: {med:.2f}")
            ax.set_title(f"{_POLARITY_TEXT[polarity]}, {_snapshot_title(data)}", fontsize=10)
            ax.set_xlabel("BCE loss, min-max normalised per (class, polarity)"
                          if space == "normalised" else "BCE loss of the given label")
            ax.set_ylabel("share of the labels in the set")
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or f"GMM inputs: losses of correct vs wrong labels, {_setting_text(snaps[0])}", fontsize=11)
    return _save(fig, out_png)


def _save(fig: Any, out_png: str | Path) -> Path:
    """Lay out ``fig``, write it to ``out_png`` (folders created) at 90 dpi and close it."""
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    _pyplot().close(fig)
    return out_png


def _series(rows: Sequence[Mapping[str, Any]], *keys: str) -> list[float]:
    """Per row, the first of ``keys`` present (NaN where none is, or the value is None)."""
    out = []
    for r in rows:
        v = next((r[k] for k in keys if r.get(k) is not None), None)
        out.append(float("nan") if v is None else float(v))
    return out


def _applied_from(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The first epoch whose refresh put label management in use (``lm_applied``)."""
    return next((int(r["epoch"]) for r in rows if r.get("lm_applied")), None)


def plot_label_management(metrics_rows: Sequence[Mapping[str, Any]], out_png: str | Path,
                          *, title: str | None = None) -> Path:
    """Clean-label precision / recall and the share of labels in each state, per epoch.

    Args:
        metrics_rows: ``metrics.jsonl`` rows of a BalanceMix run (``epoch``,
            ``clean_precision``, ``clean_recall``, ``relabel_accuracy``, ``lm_clean_fraction``,
            ``lm_relabeled_fraction``, ``lm_ambiguous_fraction``, ``lm_applied``; missing ones
            are drawn as gaps).
        out_png: Where to write the PNG.
        title: Figure title.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    plt = _pyplot()
    rows = list(metrics_rows)
    ep = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for key, name, style in (("clean_precision", "clean-label precision", "o-"),
                             ("clean_recall", "clean-label recall", "s-"),
                             ("relabel_accuracy", "re-label accuracy", "x--")):
        ys = [100 * v for v in _series(rows, key)]
        if any(np.isfinite(ys)):
            ax.plot(ep, ys, style, label=name)
    ax.set_ylim(0, 102)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_title("clean-label selection (Eq. 12)", fontsize=10)
    ax = axes[1]
    shares = [np.nan_to_num(np.array(_series(rows, f"lm_{s}_fraction")) * 100)
              for s in ("clean", "relabeled", "ambiguous")]
    ax.stackplot(ep, *shares, labels=["clean", "re-labeled", "ambiguous"],
                 colors=["tab:green", "tab:orange", "tab:gray"], alpha=0.8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("% of all labels")
    ax.set_title("label states after each epoch's refresh", fontsize=10)
    applied = _applied_from(rows)
    for a in axes:
        if applied is not None:
            a.axvline(applied, color="k", ls=":", lw=1, label=f"end of warm-up (epoch {applied})")
        a.legend(fontsize=7, loc="lower left" if a is axes[1] else "best")
        if ep:
            a.set_xticks(ep)
    fig.suptitle(title or "BalanceMix label management per epoch", fontsize=11)
    return _save(fig, out_png)


def plot_sampler_spread(metrics_rows: Sequence[Mapping[str, Any]], out_png: str | Path,
                        *, title: str | None = None) -> Path:
    """The minority sampler's weight spread per epoch: max / min weight and ESS / N.

    Args:
        metrics_rows: Rows with ``epoch`` and ``lm_sampler_max_over_min`` /
            ``lm_sampler_ess_fraction`` (the trainer's ``metrics.jsonl``; ``sampler_*`` and
            bare ``max_over_min`` / ``ess_fraction`` keys are read too).
        out_png: Where to write the PNG.
        title: Figure title.

    Returns:
        ``out_png`` as a :class:`~pathlib.Path`.
    """
    plt = _pyplot()
    rows = list(metrics_rows)
    ep = [int(r["epoch"]) for r in rows]
    ratio = _series(rows, "lm_sampler_max_over_min", "sampler_max_over_min", "max_over_min")
    ess = _series(rows, "lm_sampler_ess_fraction", "sampler_ess_fraction", "ess_fraction")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    last_ratio = f"{ratio[-1]:.3g}" if ratio else "n/a"
    last_ess = f"{ess[-1]:.3f}" if ess else "n/a"
    axes[0].plot(ep, ratio, "o-", label=f"max / min sampling weight (last: {last_ratio})")
    finite = [v for v in ratio if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 10:  # a log axis only for a wide range
        axes[0].set_yscale("log")
    axes[0].set_ylabel("largest / smallest weight")
    axes[0].set_title("minority sampler: weight ratio", fontsize=10)
    axes[1].plot(ep, ess, "o-", color="tab:purple", label=f"effective sample size / N (last: {last_ess})")
    axes[1].axhline(1.0, color="k", ls=":", lw=1, label="uniform sampling")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel("ESS / N = (sum p)^2 / (N sum p^2)")
    axes[1].set_title("minority sampler: effective sample size", fontsize=10)
    for a in axes:
        a.set_xlabel("epoch (weights set by its refresh)")
        a.legend(fontsize=7)
        if ep:
            a.set_xticks(ep)
    fig.suptitle(title or "Minority sampler weight spread per epoch", fontsize=11)
    return _save(fig, out_png)
