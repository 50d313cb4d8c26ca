"""``balancemix-benchmark``: the paper's tables (1, 2, 3, 5, 7) measured on the offline demo data.

Usage::

    balancemix-benchmark --budget strong_quick     # BCE, Mixup, BalanceMix at mislabel 40%, seed 0
    balancemix-benchmark --budget strong_full --jobs 2   # the strong regime's full grid -> docs/results.md

(``python -m balancemix_timm.benchmark`` is the same.) Budgets (:data:`BUDGETS`) come in regimes:
``strong_*`` (:data:`~.grid.STRONG_TRAIN`: a backbone pre-trained offline on a corpus of coloured
digits, fine-tuned on 3,000 images of 48 px until BCE memorises; its page is ``docs/results.md``),
``weak_*`` (:data:`~.grid.WEAK_TRAIN`: 1,000 images of 32 px; ``docs/weak/results.md``) and
``scratch_*`` (every method from scratch; ``docs/scratch/results.md``). A ``*_quick`` budget is a
one-seed subset of its ``*_full`` grid with the same settings; each page states its run times.

Performance: ``--threads`` (default 1) torch threads per run and ``--jobs`` runs at once; on a
machine of C cores, ``--jobs C --threads 1`` avoids oversubscription (``docs/performance.md``).

Every (method, label setting, seed) is one :func:`~balancemix_timm.trainer.train` run in
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
