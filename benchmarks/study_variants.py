"""Paired study of BalanceMix variants against the finished runs of a benchmark grid.

Each variant is BalanceMix with ``key=value`` config overrides. It is trained on the grid's data,
settings and seeds (into the grid's ``runs/`` folder as ``balancemix-var-NAME-SETTING-sSEED``;
finished runs are skipped) and compared, seed by seed, with the grid's BCE and default
BalanceMix runs of the same noisy labels::

    python benchmarks/study_variants.py --out runs/benchmark-full --settings mislabel40,flip40 \\
        --variant image confidence_input=image --variant warm5 warmup_epochs=5

It prints, per setting: last mAP, the paired difference against BCE (mean ± sample std over
seeds) and against the default BalanceMix, the recovery ratio, few-shot mAP and the clean-label
precision / recall of the last epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Any

from balancemix_timm.benchmark.grid import BUDGETS, RunSpec
from balancemix_timm.benchmark.runner import run_benchmark
from balancemix_timm.config import parse_overrides
from balancemix_timm.textfiles import read_json, write_text

_logger = logging.getLogger("study_variants")


def _last(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    return read_json(path)["last"]


def _fmt(values: list[float], sign: bool = True) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (f"{mean:+.2f}" if sign else f"{mean:.2f}") + f" ± {sd:.2f}" + ("" if len(values) > 1 else " (n=1)")


def study_table(out: Path, variants: list[str], settings: list[str], seeds: list[int]) -> str:
    """Markdown table of every variant (and the default) against BCE, per setting."""
    runs = out / "runs"
    rows = ["| variant | setting | n | last mAP | vs BCE | vs BalanceMix | recovery | few-shot vs BCE "
            "| precision | recall |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ["default"] + variants:
        for setting in settings:
            maps, d_bce, d_bm, rec, few, prec, recall = [], [], [], [], [], [], []
            for seed in seeds:
                key = RunSpec("balancemix", setting, seed).key if name == "default" else \
                    RunSpec("balancemix", setting, seed, variant=name).key
                mine = _last(runs / key)
                bce = _last(runs / RunSpec("bce", setting, seed).key)
                bm = _last(runs / RunSpec("balancemix", setting, seed).key)
                clean = _last(runs / RunSpec("bce", "clean", seed).key)
                if mine is None or bce is None:
                    continue
                maps.append(mine["mAP"])
                d_bce.append(mine["mAP"] - bce["mAP"])
                few.append(mine["mAP_few"] - bce["mAP_few"])
                if bm is not None and name != "default":
                    d_bm.append(mine["mAP"] - bm["mAP"])
                if clean is not None and setting != "clean" and clean["mAP"] > bce["mAP"]:
                    rec.append((mine["mAP"] - bce["mAP"]) / (clean["mAP"] - bce["mAP"]))
                if "clean_precision" in mine:
                    prec.append(100 * mine["clean_precision"])
                    recall.append(100 * mine["clean_recall"])
            if not maps:
                continue
            rows.append(f"| {name} | {setting} | {len(maps)} | {_fmt(maps, sign=False)} | {_fmt(d_bce)} | "
                        f"{_fmt(d_bm)} | {_fmt(rec)} | {_fmt(few)} | {_fmt(prec, sign=False)} | "
                        f"{_fmt(recall, sign=False)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the grid's output folder (holds data/ and runs/)")
    p.add_argument("--budget", default="strong_full", choices=sorted(BUDGETS))
    p.add_argument("--settings", default="mislabel40,flip40")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY=VALUE"),
                   help="a variant: its name, then its config overrides")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--markdown", default=None, help="also write the table to this Markdown file, under --title")
    p.add_argument("--title", default="BalanceMix variants against BCE (paired by seed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out).resolve()
    settings = [s for s in args.settings.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = [(v[0], parse_overrides(v[1:])) for v in args.variant]
    if not args.report_only and variants:
        budget = dataclasses.replace(
            BUDGETS[args.budget], methods=(), settings=(), ablation_settings=(), partial_settings=(),
            sampler_variants=tuple(variants), sampler_settings=tuple(settings),
        )
        result = run_benchmark(budget, out, seeds=seeds, jobs=args.jobs, threads=1)
        _logger.info("trained %d, skipped %d, failed %s", result["trained"], result["skipped"], result["failed"])
    table = study_table(out, [name for name, _ in variants], settings, seeds)
    print(table)
    if args.markdown:
        import shlex
        import sys

        command = "python benchmarks/study_variants.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        write_text(
            args.markdown,
            f"# {args.title}\n\nGenerated by:\n\n```bash\n{command}\n```\n\n"
            "Last-epoch mAP (%), mean ± sample std over seeds; `vs BCE` / `vs BalanceMix`: per-seed paired "
            "differences against the grid's BCE / default BalanceMix runs of the same noisy labels; recovery = "
            "(variant - BCE) / (BCE clean - BCE); precision / recall: the last epoch's clean-label selection "
            "(Eq. 12).\n\nVariants (config overrides of BalanceMix's run):\n\n"
            + "\n".join(f"- `{name}`: " + (", ".join(f"`{k}={v}`" for k, v in ov.items())
                                             or ("the default preset with the label decisions of an oracle: "
                                                 "`benchmarks/oracle_selection.py`" if name.startswith("oracle")
                                                 else "see the command"))
                        for name, ov in variants)
            + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
