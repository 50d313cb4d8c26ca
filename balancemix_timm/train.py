"""``balancemix-train`` under its original module name (the trainer lives in
:mod:`balancemix_timm.trainer`).

``python -m balancemix_timm.train CONFIG key=value ...`` runs the CLI; the names below are
re-exported for code that imports them from here.
"""

from __future__ import annotations

import sys

from .label_issues import _ISSUE_COLUMNS, write_label_issues  # noqa: F401
from .trainer.cli import _setup_logging, build_parser, main  # noqa: F401
from .trainer.core import Trainer, train
from .trainer.data import _paths, build_datasets, noisy_labels  # noqa: F401
from .trainer.distributed import dist_info as _dist_info  # noqa: F401
from .trainer.distributed import gather_rows as _gather_rows  # noqa: F401
from .trainer.distributed import init_distributed as _init_distributed  # noqa: F401
from .trainer.evaluation import _nanmean100  # noqa: F401
from .trainer.outputs import plot_metrics
from .trainer.outputs import progress as _progress  # noqa: F401

__all__ = [
    "Trainer", "train", "main", "build_parser", "build_datasets", "noisy_labels", "write_label_issues", "plot_metrics",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
