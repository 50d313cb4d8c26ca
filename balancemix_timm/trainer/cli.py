"""``balancemix-train``: BalanceMix (or a baseline) end to end on a timm model.

Usage::

    balancemix-train configs/demo_balancemix.yaml epochs=5 noise=mislabel noise_rate=0.4

The run folder (``<output_dir>/<run_name>``) receives ``config.yaml``, ``metrics.jsonl`` (one
line per epoch), ``last.pth`` (atomic, every epoch), ``best.pth``, ``summary.json``,
``label_issues.csv`` and, with matplotlib installed, ``curves.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import load_config
from ..textfiles import ENCODING, dumps_json
from .checkpoint import check_run_files
from .core import train
from .distributed import dist_info, init_distributed

__all__ = ["build_parser", "main"]


def _setup_logging(run_dir: Path | None, verbose: bool) -> None:
    """Root logging to stderr (and ``<run_dir>/train.log``), DEBUG when ``verbose``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log", encoding=ENCODING))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )



def build_parser() -> argparse.ArgumentParser:
    """The ``balancemix-train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="balancemix-train",
        description="Train a multi-label classifier with BalanceMix (or a baseline) on a timm backbone.",
    )
    p.add_argument(
        "config", nargs="?",
        help="YAML config file, or the name of a shipped recipe (e.g. table6_tresnet_l_640; see --list-recipes)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    p.add_argument("--resume", default=None, help="checkpoint to continue from, or 'auto' (the run folder's last.pth)")
    p.add_argument("--run-dir", default=None, help="output folder (default <output_dir>/<run_name>)")
    p.add_argument("--list-recipes", action="store_true",
                   help="print the shipped recipe names, their folder and the Table 6 scripts, then exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``balancemix-train``: load the config (file or recipe, then ``key=value`` overrides),
    train, and print the last epoch's mAP figures as JSON (rank 0). Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_recipes:
        from ..config import list_recipes, list_scripts, recipe_dir

        print(f"recipes in {recipe_dir()}:")
        for name in list_recipes():
            print(f"  {name}")
        print("Table 6 scripts for the patched ML-Decoder:")
        for script in list_scripts():
            print(f"  {script}")
        return 0
    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    try:
        cfg = load_config(config, overrides)
        # a missing or damaged checkpoint file, before data set and model are built
        resume = check_run_files(cfg, args.resume, args.run_dir)
    except (ValueError, FileNotFoundError) as err:  # one line naming the key, value or file; exit status 2
        parser.error(str(err))
    _setup_logging(None, args.verbose)
    init_distributed(cfg)
    rank, world = dist_info()
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
        cfg.progress = False
    try:
        summary = train(cfg, resume=resume, run_dir=args.run_dir)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank != 0:
        return 0
    last = summary.get("last", {})
    keys = ("epoch", "mAP", "mAP_many", "mAP_medium", "mAP_few")
    print(dumps_json({k: last[k] for k in keys if k in last} | {"best": summary["best"]}))
    return 0
