"""Upper bounds of label management: BalanceMix with an oracle in place of the GMMs and Eq. 9.

After every epoch-end refresh the engine's decision is replaced by one made from the true labels
(known because the benchmark injects the noise itself):

- ``oracle_drop``: every correct label clean, every wrong label dropped (p_G = 0, weight 0): a
  perfect clean-label selection (Eq. 8 with precision and recall 100%), no re-labeling.
- ``oracle_fix``: every wrong label re-labeled to its true value: perfect Eq. 8 and Eq. 9.

Everything else (Mixup, the minority sampler, warm-up, schedule) is BalanceMix's default. The
paired difference ``oracle - BCE`` over ``BCE clean - BCE noisy`` is the largest recovery ratio
that label management of each kind can reach in the regime::

    python benchmarks/oracle_selection.py --out runs/benchmark-full --settings mislabel40,flip40 --seeds 0,1,2

Runs go to ``<out>/runs/balancemix-var-ORACLE-SETTING-sSEED`` (finished runs are skipped); the
table is printed by ``benchmarks/study_variants.py --report-only --variant oracle_drop ...``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

_logger = logging.getLogger("oracle_selection")

ORACLES = ("oracle_drop", "oracle_fix")


def _run(values: dict[str, Any], oracle: str, run_dir: Path) -> tuple[float, float, bool]:  # pragma: no cover
    """Train one oracle run in this (pool) process, its folder prepared when it starts; returns
    ``(wall, cpu, resumed)`` seconds."""
    import torch

    from balancemix_timm.benchmark.runner import _prepare_run_dir
    from balancemix_timm.config import load_config
    from balancemix_timm.engine import BalanceMixEngine
    from balancemix_timm.refine import LabelState
    from balancemix_timm.train import Trainer

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    resume = _prepare_run_dir(run_dir, values)
    cfg = load_config(None, {k: v for k, v in values.items() if k != "oracle"})
    trainer = Trainer(cfg)
    engine = trainer.method.engine
    clean = trainer.clean_labels.to(engine.device)
    real_refresh = BalanceMixEngine.refresh

    def refresh(self: BalanceMixEngine, *, epoch: int | None = None):
        report = real_refresh(self, epoch=epoch)
        wrong = self.given_labels != clean
        if oracle == "oracle_drop":
            self.clean_prob = (~wrong).float()
            self.state = torch.where(wrong, int(LabelState.AMBIGUOUS), int(LabelState.CLEAN)).to(torch.int8)
            self.refined_labels = self.given_labels.clone()
        else:
            self.clean_prob = (~wrong).float()
            self.state = torch.where(wrong, int(LabelState.RELABELED), int(LabelState.CLEAN)).to(torch.int8)
            self.refined_labels = clean.clone()
        self._device_cache.clear()
        return report

    engine.refresh = refresh.__get__(engine, BalanceMixEngine)  # type: ignore[method-assign]
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(resume=resume)
    return time.perf_counter() - t0, time.process_time() - c0, resume is not None


def main(argv: list[str] | None = None) -> None:
    from balancemix_timm.benchmark.grid import BUDGETS, RunSpec
    from balancemix_timm.benchmark.runner import _after_run, is_finished, prepare_inputs, run_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--budget", default="strong_full", choices=sorted(BUDGETS))
    p.add_argument("--settings", default="mislabel40,flip40")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--oracles", default=",".join(ORACLES))
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out).resolve()
    budget = BUDGETS[args.budget]
    prepare_inputs(budget, out)
    todo = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for setting in args.settings.split(","):
            for oracle in args.oracles.split(","):
                # The oracle is part of the run's identity (its folder) but not a config field.
                spec = RunSpec("balancemix", setting, seed, variant=oracle)
                values = run_config(spec, budget, out)
                if is_finished(out / "runs" / spec.key, values) and (out / "runs" / spec.key / "bench.json").is_file():
                    continue
                todo.append((spec, values, oracle))
    _logger.info("%d oracle runs to train", len(todo))
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run, values, oracle, out / "runs" / spec.key): spec for spec, values, oracle in todo}
        for fut, spec in futures.items():
            wall, cpu, resumed = fut.result()
            _after_run(out / "runs" / spec.key, wall, keep_checkpoints=False, cpu=cpu, resumed=resumed)
            _logger.info("%s done in %.0f s", spec.key, wall)


if __name__ == "__main__":
    main()
