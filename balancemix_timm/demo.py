"""``balancemix-demo``: the README's main job on the embedded offline demo data set.

The paper's regime, offline: the benchmark's strong regime (:data:`~.benchmark.grid.STRONG_TRAIN`),
a backbone pre-trained by ``balancemix-pretrain`` on a corpus disjoint from the demo set (cached
after the first run), fine-tuned on the demo set (real scikit-learn digits composed into
long-tailed multi-label images, COCO format on disk) with 40% mislabeling (Eq. 11) by plain BCE
(the paper's Default) and by BalanceMix. The two runs are the benchmark's ``strong_quick`` runs of
those methods (same configuration and seed, one torch thread each, trained side by side), so
their figures are the committed ``docs/quick/results.md``'s. It prints both mAPs (all and per
class group), BCE's best-epoch mAP (how much it lost to memorising the noise), the difference,
and BalanceMix's label-management figures (Eq. 12-13). Finished runs in ``--out`` are reused.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .benchmark.grid import BUDGETS, Budget, plan_runs
from .textfiles import float_or_nan, read_json, write_json, write_text

__all__ = ["DEMO_BUDGET", "run_demo", "main"]

_logger = logging.getLogger("balancemix_timm.demo")

#: The demo: the strong regime's quick budget, BCE and BalanceMix at mislabel 40%, seed 0.
DEMO_BUDGET: Budget = replace(BUDGETS["strong_quick"], methods=("bce", "balancemix"),
                              description="demo: BCE and BalanceMix in the strong regime, mislabel 40%, seed 0")


def run_demo(
    *,
    out_dir: str | Path = "runs/demo",
    overrides: dict[str, Any] | None = None,
    methods: Sequence[str] = ("bce", "balancemix"),
    jobs: int = 2,
    pretrain_cache: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Train each method of the demo (two at a time, one torch thread each); return their
    summaries keyed by method, each with its ``wall_time`` (seconds) and ``run_dir``.

    Raises:
        RuntimeError: a run failed (its traceback is in the log).
    """
    from .benchmark.runner import run_benchmark

    budget = replace(DEMO_BUDGET, methods=tuple(methods))
    out = Path(out_dir)
    stats = run_benchmark(budget, out, jobs=max(1, min(jobs, len(methods))), threads=1, keep_checkpoints=True,
                          train_overrides=overrides, pretrain_cache=pretrain_cache)
    if stats["failed"]:
        raise RuntimeError(f"demo run(s) failed: {', '.join(stats['failed'])}")
    results: dict[str, dict[str, Any]] = {}
    for spec in plan_runs(budget):
        run_dir = out / "runs" / spec.key
        summary = read_json(run_dir / "summary.json")
        summary["wall_time"] = float_or_nan(read_json(run_dir / "bench.json").get("wall_time"))
        summary["run_dir"] = str(run_dir)
        results[spec.method] = summary
    return results


def _cell(row: dict[str, Any], key: str) -> str:
    """A group's mAP in a 6-wide cell; ``absent`` when the run left the group out."""
    return f"{row[key]:6.1f}" if key in row else f"{'absent':>6}"


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """A small text table of the demo's outcome."""
    lines = []
    any_summary = next(iter(results.values()))
    th = any_summary["group_thresholds"]
    sizes = any_summary["group_sizes"]
    lines.append(
        f"Demo: {any_summary['noise']} {100 * any_summary['noise_rate']:.0f}% noise, "
        f"{any_summary['epochs']} epochs from a pre-trained backbone; class groups: many > {th['many']} positives "
        f"({sizes.get('many', 0)} classes), medium ({sizes.get('medium', 0)}), "
        f"few < {th['few']} ({sizes.get('few', 0)})"
    )
    lines.append(f"{'method':<12} {'mAP':>6} {'many':>6} {'medium':>6} {'few':>6} {'best':>6} {'time':>7}")
    for method, s in results.items():
        last = s["last"]
        lines.append(
            f"{method:<12} {last['mAP']:6.1f} {_cell(last, 'mAP_many')} "
            f"{_cell(last, 'mAP_medium')} {_cell(last, 'mAP_few')} "
            f"{s.get('best', {}).get('mAP', float('nan')):6.1f} {s['wall_time']:6.0f}s"
        )
    lines.append("(mAP, many, medium, few: last epoch, as the paper reports; best: the best epoch's mAP)")
    if "bce" in results and "balancemix" in results:
        b, m = results["bce"]["last"], results["balancemix"]["last"]
        diffs = ", ".join(f"{name} {m[key] - b[key]:+.1f}" for name, key in
                          (("mAP", "mAP"), ("many", "mAP_many"), ("medium", "mAP_medium"), ("few", "mAP_few"))
                          if key in m and key in b)
        lines.append(f"BalanceMix - BCE (last epoch): {diffs}. One seed: each seed draws other noisy labels; "
                     "docs/results.md has the grid's paired figures.")
    bm = results.get("balancemix", {}).get("last", {})
    if "clean_precision" in bm:
        relabel = (f"re-labeled {100 * bm['relabel_proportion']:.2f}% of labels at "
                   f"{100 * bm['relabel_accuracy']:.1f}% accuracy"
                   if not math.isnan(float_or_nan(bm.get("relabel_accuracy"))) else "nothing re-labeled")
        lines.append(
            "BalanceMix label management (last epoch): clean-label precision "
            f"{100 * bm['clean_precision']:.1f}%, recall {100 * bm['clean_recall']:.1f}%; {relabel}"
        )
    if "balancemix" in results:
        lines.append(f"Label issues found by BalanceMix: {results['balancemix'].get('label_issues', 0)} rows in "
                     f"{Path(results['balancemix']['run_dir']) / 'label_issues.csv'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from .config import parse_overrides

    p = argparse.ArgumentParser(prog="balancemix-demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo", help="output folder for both runs")
    p.add_argument("--methods", default="bce,balancemix", help="comma-separated methods to train")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once, one torch thread each (default 2)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo settings (e.g. epochs=4)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("balancemix_timm.engine").setLevel(logging.WARNING)
    results = run_demo(out_dir=args.out, overrides=parse_overrides(args.overrides), methods=args.methods.split(","),
                       jobs=args.jobs)
    text = format_results(results)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_text(Path(args.out) / "demo_results.txt", text + "\n")
    write_json(Path(args.out) / "demo_results.json", results, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
