"""``balancemix-benchmark``: the paper's tables (1, 2, 3, 5, 7) measured on the offline demo data.

Usage::

    balancemix-benchmark --budget quick            # 11-run subset -> runs/benchmark-quick/results.md
    balancemix-benchmark --budget full --seeds 0,1 --out runs/benchmark --jobs 2   # -> docs/results.md

(``python -m balancemix_timm.benchmark`` is the same.) Budgets (:data:`BUDGETS`): ``quick`` is
every method and every Table 5 row on mislabel 40% with one seed (11 runs, a subset of the full
grid with the same settings); ``full`` is every method on every label setting, Table 5's rows on four settings and a
minority-sampler comparison (63 runs per seed, 6 epochs). Both train ``resnet10t`` from scratch
on 800 demo images of 32 px; ``docs/results.md`` states the measured run times.

Performance: ``--threads`` (default 1) torch threads per run and ``--jobs`` runs at once. On a
shared 2-core machine one thread per run was 4-9x faster per step than two (oversubscription),
so ``--jobs 2 --threads 1`` is the recommended setting there.

Every (method, label setting, seed) is one :func:`~balancemix_timm.train.train` run in
``<out>/runs/<key>/``; a run whose ``summary.json`` exists (and whose ``config.yaml`` matches)
is finished and skipped, an interrupted one continues from its ``last.pth``. After the runs
(or with ``--report-only``) the tables are written as Markdown (``results.md``), JSON
(``results.json``) and PNG plots; cells of runs not yet finished read ``n/a``. The demo set is
generated once per ``--out`` (``<out>/data``) and every run reads it as COCO-format data, so all
runs of a grid share the same images even if the generator changes between invocations.

Protocol (as in the paper): last-epoch validation mAP over all classes and the many / medium /
few-shot groups (COCO's 10,000 / 1,000 positive-label thresholds scaled to the demo set's size,
:func:`~balancemix_timm.data.demo.demo_group_thresholds`); every method but the Default (BCE)
trains on Mixup batches; BalanceMix uses ``eps = 0.975`` except ``0.55`` in the single-positive
setting. LL-R / LL-Ct use ``method_options.reduction=sum_mean`` so that all losses share the
per-sample-sum scale at the same learning rate (their paper's mean over entries is ``1/K`` of
it).
"""

from __future__ import annotations

from .cli import build_parser, main
from .collect import _Cell, _row_at_fraction, collect_results, diagnostics_runs  # noqa: F401 - the private two for the tests
from .grid import (
    ABLATION_ROWS,
    BUDGETS,
    METHOD_OVERRIDES,
    METHOD_SETTING_OVERRIDES,
    METHOD_TITLES,
    SETTING_TITLES,
    SETTINGS,
    SINGLE_POSITIVE_EPS,
    Budget,
    RunSpec,
    plan_runs,
)
from .report import headline, write_report
from .runner import run_benchmark, run_config

__all__ = [
    "SETTINGS",
    "ABLATION_ROWS",
    "BUDGETS",
    "Budget",
    "RunSpec",
    "plan_runs",
    "run_config",
    "run_benchmark",
    "collect_results",
    "diagnostics_runs",
    "write_report",
    "headline",
    "main",
    "build_parser",
    "SETTING_TITLES",
    "METHOD_TITLES",
    "METHOD_OVERRIDES",
    "METHOD_SETTING_OVERRIDES",
    "SINGLE_POSITIVE_EPS",
]
