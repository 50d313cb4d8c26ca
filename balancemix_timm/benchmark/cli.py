"""Command line of the benchmark (``balancemix-benchmark``, ``python -m balancemix_timm.benchmark``)."""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from ..textfiles import read_text
from .collect import collect_results, diagnostics_runs, label_management_curves
from .grid import BUDGETS, Budget, RunSpec, plan_runs
from .report import write_report
from .runner import is_finished, run_benchmark, run_config

_logger = logging.getLogger(__name__)

#: First line of the package's docstring (the parser's description).
DESCRIPTION = "``balancemix-benchmark``: the paper's tables (1, 2, 3, 5, 7) measured on the offline demo data."


def build_parser() -> argparse.ArgumentParser:
    """The ``balancemix-benchmark`` argument parser."""
    p = argparse.ArgumentParser(prog="balancemix-benchmark", description=DESCRIPTION)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="strong_quick",
                   help="regime and grid size (default strong_quick)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the budget's, 0)")
    p.add_argument("--out", default=None, help="runs folder (default runs/benchmark-<budget>)")
    p.add_argument("--methods", default=None,
                   help="train only these methods' runs (comma-separated; a Table 5 row by its ablation name, "
                        "e.g. minority); the report is still the whole budget's")
    p.add_argument("--settings", default=None, help="train only these label settings' runs (comma-separated)")
    p.add_argument("--report-dir", default=None,
                   help="where results.md/json/png go (default: the budget's page folder for a full grid, "
                        "e.g. docs for strong_full, else --out)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per run (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, in separate processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs; train nothing")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep last.pth / best.pth of finished runs")
    p.add_argument("--deadline-minutes", type=float, default=None, help="start no run after this many minutes")
    p.add_argument("--pretrain-cache", default=None,
                   help="cache root of the pre-trained backbone (default: balancemix-pretrain's)")
    p.add_argument("--notes", default=None, help="Markdown file appended to the report (discussion)")
    p.add_argument("overrides", nargs="*",
                   help="key=value config overrides for every run (changes the runs' keys' configs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (unless ``--report-only`` / ``--dry-run``) and write its report.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 1 when a run failed, else 0.
    """
    from ..config import parse_overrides

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("balancemix_timm.engine", "balancemix_timm.trainer", "balancemix_timm.data.datasets",
                  "balancemix_timm.noise", "balancemix_timm.data.demo", "balancemix_timm.methods"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    budget = BUDGETS[args.budget]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    out = Path(args.out or f"runs/benchmark-{args.budget}")
    report_dir = Path(args.report_dir or budget.report_dir or out)
    overrides = parse_overrides(args.overrides)
    command = "python -m balancemix_timm.benchmark " + " ".join(
        [f"--budget {args.budget}"] + ([f"--seeds {args.seeds}"] if args.seeds else [])
        + [f"--out {shlex.quote(str(out))}"]
        + ([f"--report-dir {shlex.quote(str(report_dir))}"] if args.report_dir else [])
        + ([f"--workers {args.workers}"] if args.workers else []) + ([f"--jobs {args.jobs}"] if args.jobs > 1 else [])
        + ([f"--threads {args.threads}"] if args.threads != 1 else [])
        + ([f"--notes {shlex.quote(args.notes)}"] if args.notes else [])
        + [shlex.quote(o) for o in args.overrides]
    )
    methods = set(args.methods.split(",")) if args.methods else None
    settings = set(args.settings.split(",")) if args.settings else None

    def selected(spec: RunSpec) -> bool:
        """Whether ``--methods`` / ``--settings`` select ``spec`` (both unset: every run)."""
        return ((methods is None or (spec.ablation or spec.method) in methods)
                and (settings is None or spec.setting in settings))

    if args.dry_run:
        for spec in filter(selected, plan_runs(budget, seeds)):
            values = run_config(spec, budget, out, workers=args.workers, train_overrides=overrides,
                                pretrain_cache=args.pretrain_cache)
            print(("done " if is_finished(out / "runs" / spec.key, values) else "todo ") + spec.key)
        return 0
    stats = None
    if not args.report_only:
        deadline = time.time() + 60 * args.deadline_minutes if args.deadline_minutes else None
        stats = run_benchmark(budget, out, seeds=seeds, workers=args.workers, jobs=args.jobs, threads=args.threads,
                              keep_checkpoints=args.keep_checkpoints, train_overrides=overrides, deadline=deadline,
                              pretrain_cache=args.pretrain_cache, only=selected)
        _logger.info("benchmark: %s", {k: v for k, v in stats.items()})
    if overrides:
        budget = Budget(**{**budget.__dict__, "train": dict(budget.train, **overrides)})
    results = collect_results(budget, out, seeds=seeds)
    notes = read_text(args.notes) if args.notes else None
    first_seed = min(seeds or budget.seeds)
    path = write_report(results, report_dir, command=command, notes=notes, run_stats=stats,
                        lm_curves=label_management_curves(budget, out, first_seed),
                        diagnostics=diagnostics_runs(out, first_seed, (*budget.settings, *budget.ablation_settings)))
    _logger.info("wrote %s", path)
    return 1 if stats and stats["failed"] else 0
