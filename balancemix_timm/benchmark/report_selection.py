"""The report's sections on BalanceMix's label decisions, read from the runs' label-diagnostics
snapshots: the clean-label selection by polarity and Eq. 9 by direction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .grid import SETTING_TITLES
from .report_cells import _fmt

__all__ = ["label_decision_section"]


def label_decision_section(gmm: Mapping[str, Any]) -> list[str]:
    """Markdown lines: per label setting and snapshot, how well the GMMs' input separates wrong
    from correct given labels (per-class ROC AUC) and what the clean-label selection kept of
    each, per polarity (empty without BalanceMix snapshots)."""
    if not gmm:
        return []
    L = ["## Clean-label selection by polarity (BalanceMix)", "",
         "Given positives and given negatives are split by separate GMMs (Eq. 7). Per label setting and "
         "snapshot (`label_diagnostics/`): the per-class ROC AUC of the GMMs' input loss for telling wrong from "
         "correct given labels (mean over classes, then over seeds), and the share (%) of wrong and of correct "
         "given labels that the selection kept as clean (p_G > 0.5, after `clean_if_agrees`).", "",
         "| setting | snapshot | AUC positives | wrong positives kept | correct positives kept "
         "| AUC negatives | wrong negatives kept | correct negatives kept |",
         "|---|---|---|---|---|---|---|---|"]
    for heading, entry in _snapshots(gmm):
        row = list(heading)
        for polarity in ("positive", "negative"):
            row += [_fmt(entry.get(polarity), 3), _fmt(entry.get(f"{polarity}_wrong_kept")),
                    _fmt(entry.get(f"{polarity}_correct_kept"))]
        L.append("| " + " | ".join(row) + " |")
    L += ["", "Eq. 9 by direction (labels re-labeled to 1 and to 0, with the share whose new value is the true one, "
          "in %), beside f(x) on the true positive labels (median and 90th percentile): re-labeling to 1 needs "
          "the views' mean above `eps`.", "",
          "| setting | snapshot | re-labeled to 1 | accuracy | re-labeled to 0 | accuracy "
          "| f(x) of true positives: median | 90th percentile |",
          "|---|---|---|---|---|---|---|---|"]
    for heading, entry in _snapshots(gmm):
        row = [*heading, _fmt(entry.get("to_one"), 0), _fmt(entry.get("to_one_accuracy")),
               _fmt(entry.get("to_zero"), 0), _fmt(entry.get("to_zero_accuracy")),
               _fmt(entry.get("positive_prob_median"), 3), _fmt(entry.get("positive_prob_p90"), 3)]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    return L


_STAGE_TEXT = {"warmup_end": "end of warm-up", "last": "end of training"}


def _snapshots(gmm: Mapping[str, Any]) -> list[tuple[tuple[str, str], Mapping[str, Any]]]:
    """``((setting title, snapshot title), entry)`` of every label setting and snapshot stage."""
    out = []
    for setting, stages in gmm.items():
        for stage, entry in stages.items():
            epoch = entry.get("epoch")
            out.append(((SETTING_TITLES.get(setting, setting),
                         _STAGE_TEXT.get(stage, stage) + (f" (epoch {epoch})" if epoch else "")), entry))
    return out
