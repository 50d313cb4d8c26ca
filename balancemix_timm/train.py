"""``python -m balancemix_timm.train CONFIG key=value ...``: the ``balancemix-train`` command.

The trainer lives in :mod:`balancemix_timm.trainer`; this module is its command-line entry point
and the import path of its public names, which scripts outside the repository use
(``from balancemix_timm.train import Trainer``).
"""

from __future__ import annotations

import sys

from .label_issues import write_label_issues
from .trainer import Trainer, build_datasets, build_parser, main, noisy_labels, plot_metrics, train

__all__ = [
    "Trainer", "train", "main", "build_parser", "build_datasets", "noisy_labels", "write_label_issues", "plot_metrics",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
