"""What a run shows and leaves besides checkpoints: the progress bar and the curves plot."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_metrics", "progress"]

#: The run's log channel (one name for the whole trainer: log filters use it).
_logger = logging.getLogger("balancemix_timm.train")


def plot_metrics(metrics: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """mAP and label-management curves per epoch, saved as an image at ``path``.

    Args:
        metrics: The run's metrics rows (one per epoch, with ``epoch``).
        path: The image file.

    Returns:
        True if written; False without matplotlib or without rows.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.info("matplotlib not installed: no plots (pip install 'balancemix-timm[plot]')")
        return False
    if not metrics:
        return False
    ep = [m["epoch"] for m in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("mAP", "mAP_many", "mAP_medium", "mAP_few", "ema_mAP"):
        if key in metrics[0]:
            axes[0].plot(ep, [m.get(key, float("nan")) for m in metrics], label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("validation mAP")
    axes[0].legend()
    for key in ("clean_precision", "clean_recall", "relabel_proportion", "relabel_accuracy", "lm_clean_fraction",
                "lm_ambiguous_fraction"):
        if key in metrics[-1]:
            axes[1].plot(ep, [m.get(key, float("nan")) for m in metrics], label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("label management")
    if axes[1].get_lines():  # a method without label management (BCE) has no curve here
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def progress(iterable: Iterable[Any], total: int, desc: str, enabled: bool) -> Iterable[Any]:
    """``iterable`` behind a tqdm bar when ``enabled`` (``iterable`` itself otherwise)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
