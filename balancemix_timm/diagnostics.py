"""Diagnostics of a BalanceMix run, as figures: what a researcher looks at first.

Three figures, read from a run folder written by ``balancemix-train``:

* **Loss distributions** (:func:`plot_loss_distributions`): per given polarity (positive /
  negative labels), the distribution of the BCE losses the 2K GMMs were fed, split into correct
  and wrong given labels (the trainer knows the clean labels: it injected the noise), at the end
  of warm-up and at the end of training, with the GMMs' decision thresholds (where p_G crosses
  0.5). With ``gmm_normalize="minmax"`` (the default) each (class, polarity) group's losses are
  mapped to [0, 1] by ``(loss - min) / (max - min)`` before the fit, so the losses are drawn in
  that normalised space, where the per-group thresholds are comparable: the figure shows their
  median and interquartile range over classes. Read from ``label_diagnostics/epoch_XXX.npz``
  (written when ``label_diagnostics=True``, the default).
* **Label management** (:func:`plot_label_management`): per epoch, clean-label precision /
  recall (Eq. 12) and the share of labels in each state (clean, re-labeled, ambiguous).
* **Sampler spread** (:func:`plot_sampler_spread`): per epoch, the minority sampler's largest
  over smallest weight and its effective sample size over N.

The last two read ``metrics.jsonl``. :func:`write_run_diagnostics` makes all three from a run
folder; the command line does the same::

    python -m balancemix_timm.diagnostics RUN_DIR --out DIR

Plotting needs matplotlib (``pip install 'balancemix-timm[plot]'``), imported only when a figure
is drawn; the readers need numpy only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "load_label_diagnostics",
    "loss_split",
    "selection_summary",
    "read_metrics",
    "plot_loss_distributions",
    "plot_label_management",
    "plot_sampler_spread",
    "write_run_diagnostics",
    "report_section",
    "main",
]

_logger = logging.getLogger(__name__)

#: What :func:`plot_loss_distributions` accepts: an ``.npz`` path or its arrays.
Source = Union[str, Path, Mapping[str, Any]]

_STAGE_TEXT = {"warmup_end": "end of warm-up", "last": "end of training"}
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


def _scalar(value: Any, default: Any = None) -> Any:
    """A 0-d array (as stored in an ``.npz``) or a plain value as a Python scalar."""
    if value is None:
        return default
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 else arr.tolist()


# ---------------------------------------------------------------------------- readers
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
    losses = np.asarray(data["losses"], dtype=np.float64)
    given = np.asarray(data["given_labels"]).astype(bool)
    clean = np.asarray(data["clean_labels"]).astype(bool)
    if losses.shape != given.shape or clean.shape != given.shape:
        raise ValueError(f"losses {losses.shape}, given_labels {given.shape} and clean_labels {clean.shape} must match")
    seen = np.asarray(data.get("seen", np.ones(len(losses), bool))).astype(bool)
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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


# ---------------------------------------------------------------------------- figures
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
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
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
    ax.set_xlabel("epoch"); ax.set_ylabel("%"); ax.set_title("clean-label selection (Eq. 12)", fontsize=10)
    ax = axes[1]
    shares = [np.nan_to_num(np.array(_series(rows, f"lm_{s}_fraction")) * 100) for s in ("clean", "relabeled", "ambiguous")]
    ax.stackplot(ep, *shares, labels=["clean", "re-labeled", "ambiguous"],
                 colors=["tab:green", "tab:orange", "tab:gray"], alpha=0.8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("epoch"); ax.set_ylabel("% of all labels"); ax.set_title("label states after each epoch's refresh", fontsize=10)
    applied = _applied_from(rows)
    for a in axes:
        if applied is not None:
            a.axvline(applied, color="k", ls=":", lw=1, label=f"end of warm-up (epoch {applied})")
        a.legend(fontsize=7, loc="lower left" if a is axes[1] else "best")
        if ep:
            a.set_xticks(ep)
    fig.suptitle(title or "BalanceMix label management per epoch", fontsize=11)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


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
    axes[0].set_ylabel("largest / smallest weight"); axes[0].set_title("minority sampler: weight ratio", fontsize=10)
    axes[1].plot(ep, ess, "o-", color="tab:purple", label=f"effective sample size / N (last: {last_ess})")
    axes[1].axhline(1.0, color="k", ls=":", lw=1, label="uniform sampling")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel("ESS / N = (sum p)^2 / (N sum p^2)"); axes[1].set_title("minority sampler: effective sample size", fontsize=10)
    for a in axes:
        a.set_xlabel("epoch (weights set by its refresh)")
        a.legend(fontsize=7)
        if ep:
            a.set_xticks(ep)
    fig.suptitle(title or "Minority sampler weight spread per epoch", fontsize=11)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def write_run_diagnostics(run_dir: str | Path, out_dir: str | Path, *, prefix: str = "",
                          setting: str | None = None) -> list[Path]:
    """All diagnostics figures of one run folder.

    Writes ``<prefix>loss_distributions.png`` (every ``label_diagnostics/epoch_*.npz``, one row
    each), ``<prefix>label_management.png`` and ``<prefix>sampler_spread.png`` (from
    ``metrics.jsonl``), each only when its inputs exist.

    Args:
        run_dir: A BalanceMix run folder.
        out_dir: Where the PNGs go (created if needed).
        prefix: File-name prefix (e.g. ``"diagnostics_mislabel40_"``).
        setting: Text for the titles (default: the run folder's name).

    Returns:
        The written paths, in the order above.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    name = setting or run_dir.name
    written: list[Path] = []
    npz = sorted((run_dir / "label_diagnostics").glob("epoch_*.npz"))
    if npz:
        if setting is None:  # the noise setting and run name, from the snapshot
            name = _setting_text(load_label_diagnostics(npz[0])) or name
        written.append(plot_loss_distributions(
            npz, out_dir / f"{prefix}loss_distributions.png",
            title=f"GMM inputs: losses of correct vs wrong given labels, {name}"))
    rows = read_metrics(run_dir)
    if rows and any("lm_clean_fraction" in r for r in rows):
        written.append(plot_label_management(rows, out_dir / f"{prefix}label_management.png",
                                             title=f"BalanceMix label management per epoch, {name}"))
    if rows and not np.isnan(_series(rows, "lm_sampler_max_over_min")).all():
        written.append(plot_sampler_spread(rows, out_dir / f"{prefix}sampler_spread.png",
                                           title=f"Minority sampler weight spread per epoch, {name}"))
    return written


def report_section(runs: Mapping[str, tuple[str, str | Path]], out_dir: str | Path) -> list[str]:
    """A Markdown 'Diagnostics' section: each run's figures written into ``out_dir`` and linked.

    Args:
        runs: Title (e.g. ``"Mislabel 40%"``) -> (file-name prefix, BalanceMix run folder).
        out_dir: The report's folder; the PNGs go there, linked by file name.

    Returns:
        The section's lines; empty when no run has anything to plot or matplotlib is missing.
    """
    out_dir = Path(out_dir)
    lines: list[str] = []
    for title, (prefix, run_dir) in runs.items():
        run_dir = Path(run_dir)
        try:
            written = write_run_diagnostics(run_dir, out_dir, prefix=prefix, setting=f"{title} ({run_dir.name})")
        except ImportError:
            _logger.info("matplotlib not installed: no diagnostics figures")
            return []
        if not written:
            continue
        lines += [f"### {title}: `{run_dir.name}`", ""]
        snaps = sorted((run_dir / "label_diagnostics").glob("epoch_*.npz"))
        if snaps:
            pos, neg = (selection_summary(load_label_diagnostics(snaps[-1]))[k] for k in ("positive", "negative"))
            lines += [f"At the last refresh the GMMs kept as clean (p_G > 0.5) {100 * pos['wrong_kept']:.0f}% of the "
                      f"{pos['n_wrong']:,} wrong positive labels (correct positives: {100 * pos['correct_kept']:.0f}%) "
                      f"and {100 * neg['wrong_kept']:.0f}% of the {neg['n_wrong']:,} wrong negative labels "
                      f"(correct negatives: {100 * neg['correct_kept']:.0f}%).", ""]
        for path in written:
            lines += [f"![{path.name}]({path.name})", ""]
    if not lines:
        return []
    return ["## Diagnostics", "",
            "BalanceMix runs of the lowest seed: the BCE losses the per-(class, polarity) GMMs were fed, for correct "
            "and wrong given labels, at the end of warm-up and of training, in the min-max normalised space the GMMs "
            "decide in (dashed: median over classes of the thresholds where p_G crosses 0.5; band: their "
            "interquartile range); clean-label precision / recall and label states per epoch; the minority "
            "sampler's weight spread per epoch. Made by `python -m balancemix_timm.diagnostics RUN_DIR`.", ""] + lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m balancemix_timm.diagnostics RUN_DIR --out DIR``: write a run's figures.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 when at least one figure was written, else 1.
    """
    p = argparse.ArgumentParser(prog="python -m balancemix_timm.diagnostics",
                                description="Diagnostics figures of a BalanceMix run folder.")
    p.add_argument("run_dir", help="run folder (metrics.jsonl, label_diagnostics/epoch_*.npz)")
    p.add_argument("--out", default=None, help="output folder (default RUN_DIR/diagnostics)")
    p.add_argument("--prefix", default="", help="file-name prefix of the PNGs")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.run_dir) / "diagnostics"
    try:
        written = write_run_diagnostics(args.run_dir, out, prefix=args.prefix)
    except ImportError as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in written:
        print(path)
    if not written:
        print(f"nothing to plot in {args.run_dir} (no metrics.jsonl with label management, no label_diagnostics/)",
              file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
