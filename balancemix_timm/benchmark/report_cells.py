"""The report's cell formats and its paired-difference and memorisation sections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .grid import DISPLAY_ORDER, METHOD_TITLES, SETTING_TITLES, TABLE5_SETTINGS

#: Seeds requested by the report being written (cells with fewer say so).
_REPORT_SEEDS = [1]


def _fmt(c: Mapping[str, Any] | None, digits: int = 1) -> str:
    """A cell as ``mean ± std`` (``(n=k)`` when fewer seeds than requested; ``n/a`` when empty)."""
    if not c or c.get("mean") is None:
        return "n/a"
    s = f"{c['mean']:.{digits}f}"
    if c.get("n", 0) > 1 and c.get("std") is not None:
        s += f" ± {c['std']:.{digits}f}"
    if 0 < c.get("n", 0) < _REPORT_SEEDS[0]:
        s += f" (n={c['n']})"
    return s


def _diff_text(c: Mapping[str, Any] | None, digits: int = 1, planned: int = 0) -> str:
    """``+m ± s`` of a paired-difference cell, ``(n=k)`` when it holds fewer than ``planned``
    seeds; ``n/a`` without values."""
    if not c or c.get("mean") is None:
        return "n/a"
    text = f"{c['mean']:+.{digits}f}"
    if c.get("std") is not None:
        text += f" ± {c['std']:.{digits}f}"
    return text + (f" (n={c['n']})" if c.get("n", 0) < planned else "")


def _paired_section(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines: every method's last mAP minus BCE's, paired by seed, and recovery ratios."""
    paired = results.get("paired") or {}
    planned = len(results["budget"]["seeds"])
    settings = [s for s in DISPLAY_ORDER if any(s in v for v in paired.values())]
    if not paired or not settings:
        return []
    L = ["## Paired differences against BCE (last mAP, all classes)", "",
         "Each cell: mean ± sample std over seeds of (method - Default (BCE)), both trained on the same noisy "
         "labels (seed = noise seed); n=k marks cells with fewer seeds than planned. "
         "A difference smaller than about two of its standard deviations is within noise.", "",
         "| Method | " + " | ".join(SETTING_TITLES[s] for s in settings) + " | few-shot, " +
         " | few-shot, ".join(SETTING_TITLES[s] for s in settings if s != "clean") + " |",
         "|---|" + "---|" * (len(settings) + sum(s != "clean" for s in settings))]
    for m in METHOD_TITLES:
        if m not in paired:
            continue
        row = [_diff_text(paired[m][s].get("mAP"), planned=planned) for s in settings]
        row += [_diff_text(paired[m][s].get("mAP_few"), planned=planned) for s in settings if s != "clean"]
        L.append(f"| {METHOD_TITLES[m]} | " + " | ".join(row) + " |")
    means = {m: paired[m]["table5_mean"]["mAP"] for m in paired
             if paired[m].get("table5_mean", {}).get("mAP", {}).get("n")}
    if means:
        main = results.get("main") or {}

        def overall(m: str) -> float | None:
            vals = [main.get(m, {}).get(t, {}).get("mAP", {}).get("mean") for t in TABLE5_SETTINGS]
            return None if any(v is None for v in vals) else sum(vals) / len(vals)

        rows = sorted(((overall(m), m) for m in ["bce", *means] if overall(m) is not None), reverse=True)
        L += ["", "Mean over the four Table 5 settings (clean, mislabel 40%, flip 40%, single positive; the paper's "
              "\"Overall (mean)\"), best first: the mean of the four last-mAP means, and per seed the mean of the four "
              "paired differences against BCE.", "",
              "| Method | mean last mAP | paired vs BCE |", "|---|---|---|"]
        for value, m in rows:
            diff = "-" if m == "bce" else _diff_text(means[m], planned=planned)
            L.append(f"| {METHOD_TITLES[m]} | {value:.1f} | {diff} |")
    noisy = [s for s in settings if s != "clean"]
    if noisy and any(paired[m][s].get("recovery", {}).get("n") for m in paired for s in noisy):
        L += ["", "Recovery ratio (method - BCE) / (BCE clean - BCE noisy), per seed: the share of the mAP that the "
              "noise costs BCE and the method wins back (the paper's Tables 1-2: BalanceMix 0.91 at mislabel 40%, "
              "0.78 at random flip 40%).", "",
              "| Method | " + " | ".join(SETTING_TITLES[s] for s in noisy) + " |", "|---|" + "---|" * len(noisy)]
        for m in METHOD_TITLES:
            if m in paired:
                L.append(f"| {METHOD_TITLES[m]} | "
                         + " | ".join(_diff_text(paired[m][s].get("recovery"), 2, planned) for s in noisy) + " |")
    return L + [""]


def _memorisation_section(results: Mapping[str, Any]) -> list[str]:
    """Markdown lines: BCE's best-epoch and last mAP per setting, and every method's best-epoch mAP."""
    mem = results.get("memorisation") or {}
    settings = [s for s in DISPLAY_ORDER if mem.get(s, {}).get("last", {}).get("n")]
    if not settings:
        return []
    L = ["## Does BCE memorise the noise? (mAP, all classes)", "",
         "Best = the best validation mAP over the epochs, last = the last epoch's (the tables' metric); "
         "differences are per seed, mean ± std.", "",
         "| setting | BCE best | BCE last | last - best | last - clean last |", "|---|---|---|---|---|"]
    for s in settings:
        c = mem[s]
        L.append(f"| {SETTING_TITLES[s]} | {_fmt(c['best'])} | {_fmt(c['last'])} | "
                 f"{_diff_text(c['last_minus_best'])} | "
                 f"{'-' if s == 'clean' else _diff_text(c['last_minus_clean'])} |")
    best = results.get("best") or {}
    if best:
        L += ["", "Best-epoch mAP of every method (all classes; the last-epoch figures are in Tables 1-3):", "",
              "| Method | " + " | ".join(SETTING_TITLES[s] for s in settings) + " |", "|---|" + "---|" * len(settings)]
        for m in METHOD_TITLES:
            if m in best:
                L.append(f"| {METHOD_TITLES[m]} | " + " | ".join(_fmt(best[m].get(s)) for s in settings) + " |")
    return L + [""]
