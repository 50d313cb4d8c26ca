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

Layout: the readers and computations live in :mod:`balancemix_timm.diagnostics_readers`, the
figures in :mod:`balancemix_timm.diagnostics_plots`; this module writes a run's figures and the
report section and holds the command line, and every name stays importable from it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# Names outside ``__all__`` keep importing from this path too.
from .diagnostics_plots import (  # noqa: F401
    _POLARITY_TEXT,
    _applied_from,
    _pyplot,
    _series,
    plot_label_management,
    plot_loss_distributions,
    plot_sampler_spread,
)
from .diagnostics_readers import (  # noqa: F401
    _STAGE_TEXT,
    Source,
    _scalar,
    _setting_text,
    _snapshot_title,
    load_label_diagnostics,
    loss_split,
    read_metrics,
    selection_summary,
    wrong_label_auc,
)

__all__ = [
    "load_label_diagnostics",
    "loss_split",
    "selection_summary",
    "wrong_label_auc",
    "read_metrics",
    "plot_loss_distributions",
    "plot_label_management",
    "plot_sampler_spread",
    "write_run_diagnostics",
    "report_section",
    "main",
]

_logger = logging.getLogger(__name__)


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
