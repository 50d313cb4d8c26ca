"""Fake benchmark run folders, written by hand (no training), for the report's golden test.

Every run of a budget gets a ``summary.json``, ``metrics.jsonl`` and ``bench.json`` with numbers
drawn from a generator seeded by the run's key, so the folder (and the report read from it) is
the same on every machine. Some runs are left out so that ``n/a`` and ``(n=...)`` cells appear.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

#: Seeds of the golden grid (two, so cells carry a standard deviation).
GOLDEN_SEEDS = (0, 1)
#: The notes appended to the golden report.
GOLDEN_NOTES = "## Discussion\n\nFixed fake runs: the numbers mean nothing.\n"


def _metrics_row(rng: random.Random, epoch: int, epochs: int, balancemix: bool) -> dict:
    row = dict(epoch=epoch, train_loss=round(rng.uniform(0.1, 1.0), 4), mAP=round(rng.uniform(10, 60), 3))
    if balancemix:
        row.update(
            clean_precision=round(rng.uniform(0.6, 0.99), 4),
            clean_recall=round(rng.uniform(0.5, 0.99), 4),
            relabel_proportion=round(rng.uniform(0.0, 0.05), 5),
            # An epoch without re-labeling has no accuracy.
            relabel_accuracy=None if epoch == 1 else round(rng.uniform(0.3, 0.9), 4),
            lm_sampler_max_over_min=round(rng.uniform(1.5, 40.0), 3),
            lm_sampler_ess_fraction=round(rng.uniform(0.3, 0.95), 4),
        )
    return row


def write_fake_runs(out: Path, keys_and_methods: Sequence[tuple[str, str]], *, epochs: int = 6,
                    skip_every: int = 5) -> list[str]:
    """Write fake finished runs under ``out/runs`` (and ``out/data/demo_meta.json``).

    Args:
        out: The benchmark's ``--out`` folder.
        keys_and_methods: ``(run key, method)`` of every planned run.
        epochs: Epochs each fake run reports.
        skip_every: Every ``skip_every``-th run is left unfinished (no ``summary.json``).

    Returns:
        The keys of the runs written as finished.
    """
    written = []
    for i, (key, method) in enumerate(keys_and_methods):
        run_dir = out / "runs" / key
        run_dir.mkdir(parents=True, exist_ok=True)
        rng = random.Random(key)
        bm = method == "balancemix"
        rows = [_metrics_row(rng, e, epochs, bm) for e in range(1, epochs + 1)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
        if skip_every and i % skip_every == skip_every - 1:
            continue  # an interrupted run: metrics but no summary
        last = {f"mAP{g}": round(rng.uniform(5, 70), 3) for g in ("", "_many", "_medium", "_few")}
        # As the trainer writes it: the best epoch's mAP, at least the last epoch's.
        last["best_mAP"] = round(last["mAP"] + 1.5, 3)  # no draw: the other fake numbers stay as they were
        if bm:
            last.update(lm_sampler_max_over_min=rows[-1]["lm_sampler_max_over_min"],
                        lm_sampler_ess_fraction=rows[-1]["lm_sampler_ess_fraction"])
        summary = dict(
            last=last, epochs=epochs,
            group_thresholds=dict(many=97, few=9), group_sizes=dict(many=3, medium=12, few=9),
            noise_report=dict(changed_fraction=round(rng.uniform(0.0, 0.2), 4)),
        )
        (run_dir / "summary.json").write_text(json.dumps(summary))
        bench = dict(wall_time=round(rng.uniform(30, 300), 2),
                     finished_at=f"2026-01-0{1 + i % 9}T12:{i % 60:02d}:00+00:00")
        if i % 3:
            bench["cpu_time"] = round(rng.uniform(30, 300), 2)
        (run_dir / "bench.json").write_text(json.dumps(bench))
        written.append(key)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "data" / "demo_meta.json").write_text(json.dumps(dict(
        options=dict(num_train=800, num_classes=24, seed=0),
        train_positive_counts=[(7 * c) % 113 + 2 for c in range(24)],
        val_positive_counts=[(5 * c) % 61 + 1 for c in range(24)],
        class_names=[f"class{c}" for c in range(24)],
    )))
    return written


#: The plots a report of the golden grid lists (stands in for drawing them).
GOLDEN_PLOTS = ("main", "ablation", "label_management", "sampler")


def fake_plots(results, report_dir, prefix):  # noqa: ARG001 - same signature as the report's
    """Stand-in for the report's plotting: the names it writes for the golden grid, nothing drawn."""
    return [f"{prefix}_{name}.png" for name in GOLDEN_PLOTS]


def normalize_report(text: str) -> str:
    """The report without what depends on the clock or the machine."""
    text = re.sub(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "Generated <TIME>", text)
    return re.sub(r"^\| machine \| .* \|$", "| machine | <MACHINE> |", text, flags=re.M)


def golden_report(work: Path) -> str:
    """The golden grid's report: fake runs of the from-scratch full budget (seeds 0, 1) under ``work/fake``,
    ``main(--report-only)`` run in ``work`` (so the command line holds relative paths only).

    The caller chdirs into ``work`` and replaces the report's plotting by :func:`fake_plots`.
    """
    from balancemix_timm.benchmark import BUDGETS, main, plan_runs

    specs = plan_runs(BUDGETS["scratch_full"], GOLDEN_SEEDS)
    write_fake_runs(work / "fake", [(s.key, s.method) for s in specs])
    (work / "notes.md").write_text(GOLDEN_NOTES)
    assert main(["--budget", "scratch_full", "--seeds", ",".join(map(str, GOLDEN_SEEDS)), "--out", "fake",
                 "--report-dir", "report", "--report-only", "--notes", "notes.md"]) == 0
    return normalize_report((work / "report" / "results.md").read_text())
