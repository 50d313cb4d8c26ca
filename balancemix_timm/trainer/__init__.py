"""The application that trains: ``balancemix-train``'s trainer, data set-up and CLI.

Nothing in the library (engine, methods, losses, samplers, ...) imports this package; it
builds on them. Modules: :mod:`.data` (data sets, noisy labels), :mod:`.core` (the
:class:`Trainer` and :func:`train`), :mod:`.optim` (optimiser and schedule),
:mod:`.evaluation` (scores and mAP figures), :mod:`.distributed` (torch.distributed),
:mod:`.outputs` (plots, progress) and :mod:`.cli` (``balancemix-train``).
"""

from .cli import build_parser, main
from .core import Trainer, train
from .data import build_datasets, noisy_labels
from .outputs import plot_metrics

__all__ = ["Trainer", "train", "main", "build_parser", "build_datasets", "noisy_labels", "plot_metrics"]
