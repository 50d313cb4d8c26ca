"""What a run shows and leaves besides checkpoints: its progress (a bar on a terminal, log lines
elsewhere) and the curves plot."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["LOG_INTERVAL_S", "plot_metrics", "progress"]

#: The run's log channel (one name for the whole trainer: log filters use it).
_logger = logging.getLogger("balancemix_timm.trainer")


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


#: Longest time between two progress lines when the stream is not a terminal (seconds).
LOG_INTERVAL_S = 30.0


def progress(iterable: Iterable[Any], total: int, desc: str, enabled: bool, *, stream: IO[str] | None = None,
             interval: float = LOG_INTERVAL_S) -> Iterable[Any]:
    """``iterable`` with progress shown when ``enabled`` (``iterable`` itself otherwise).

    On a terminal (``stream`` is a TTY) or in a notebook: a tqdm bar, refreshed in place. On
    anything else (a log file, a pipe, ``nohup``, CI) no carriage-return frames are written:
    a log line ``"<desc>: step i/total (loss ...)"`` at most every ``interval`` seconds (none
    for an epoch shorter than that; the trainer logs one line per epoch anyway).

    Args:
        iterable: The batches.
        total: How many of them are used (the bar's length).
        desc: The bar's / lines' title (e.g. ``"epoch 3/40"``).
        enabled: Show progress at all (``progress=`` of the config, main process only).
        stream: Where a bar would be drawn (default ``sys.stderr``).
        interval: Seconds between two log lines off a terminal.

    Returns:
        An iterable over ``iterable``'s items; it has ``set_postfix(**figures)`` when progress is
        shown.
    """
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream) or tqdm.__module__.startswith("tqdm.notebook"):
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=stream)
    return _LoggedProgress(iterable, total, desc, interval)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _LoggedProgress:
    """Progress off a terminal: an INFO log line at most every ``interval`` seconds."""

    def __init__(self, iterable: Iterable[Any], total: int, desc: str, interval: float) -> None:
        self.iterable, self.total, self.desc, self.interval = iterable, int(total), desc, float(interval)
        self.postfix = ""

    def set_postfix(self, **figures: Any) -> None:
        """Figures appended to the next line (``loss=0.123`` -> ``(loss 0.123)``)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in figures.items())

    def __iter__(self) -> Iterator[Any]:
        last = time.monotonic()
        for step, item in enumerate(self.iterable, 1):
            yield item
            now = time.monotonic()
            if now - last >= self.interval and step < self.total:
                last = now
                _logger.info("%s: step %d/%d%s", self.desc, step, self.total,
                             f" ({self.postfix})" if self.postfix else "")
