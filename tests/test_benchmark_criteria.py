"""The regime criteria (``benchmark.criteria``): each measured on hand-made results."""

from __future__ import annotations

import pytest

from balancemix_timm.benchmark.criteria import CRITERIA, criteria_section, regime_criteria


def _cell(*values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return dict(mean=mean, std=std, n=len(values), values=list(values))


def _results(**changes):
    results = dict(
        main={"bce": {"clean": {"mAP": _cell(80.0, 82.0)}}},
        memorisation={"mislabel40": dict(last_minus_clean=_cell(-20.0, -22.0), last_minus_best=_cell(-2.0, -3.0)),
                      "flip40": dict(last_minus_clean=_cell(-14.0, -15.0), last_minus_best=_cell(-6.0, -7.0))},
        paired={"mixup": {"mislabel40": {"recovery": _cell(0.6, 0.5)}, "flip40": {"recovery": _cell(0.1, 0.2)}},
                "asl": {"mislabel40": {"recovery": _cell(0.5, 0.52)}},
                "hill": {"mislabel40": {"recovery": _cell(0.1, 0.3)}},
                "balancemix": {"mislabel40": {"recovery": _cell(0.9, 0.9)}}},
        gmm_auc={"mislabel40": {"warmup_end": {"positive": _cell(0.95, 0.93), "negative": _cell(0.85, 0.88)}}},
    )
    results.update(changes)
    return results


def test_each_criterion_is_measured_and_judged():
    rows = {r["key"]: r for r in regime_criteria(_results())}
    assert list(rows) == [c.key for c in CRITERIA]
    assert rows["bce_clean"]["value"] == 81.0 and rows["bce_clean"]["met"]
    assert rows["cost_mislabel40"]["value"] == 21.0 and rows["cost_mislabel40"]["met"]
    assert rows["cost_flip40"]["value"] == 14.5 and rows["cost_flip40"]["met"] is False
    assert rows["memorisation"]["value"] == 6.5 and rows["memorisation"]["met"]  # flip40 carries it
    assert rows["auc_positive"]["met"] and rows["auc_negative"]["met"] is False
    # BalanceMix is what the regime judges: it does not count as a baseline.
    assert rows["baselines_recover"]["value"] == 2.0 and rows["baselines_recover"]["met"]
    assert rows["mixup_flip"]["value"] == pytest.approx(0.15) and rows["mixup_flip"]["met"] is False


def test_unmeasured_criteria_say_so():
    rows = {r["key"]: r for r in regime_criteria(_results(gmm_auc={}, paired={}))}
    assert rows["auc_positive"]["met"] is None and rows["auc_positive"]["measured"] == "n/a"
    assert rows["baselines_recover"]["met"] is None and rows["mixup_flip"]["met"] is None
    assert rows["bce_clean"]["met"]
    assert criteria_section(dict(main={}, memorisation={}, paired={})) == []


def test_section_marks_each_verdict():
    text = "\n".join(criteria_section(_results()))
    assert "| BCE on clean labels, last-epoch mAP >= 75 | 81.0 ± 1.4 (n=2) | met |" in text
    assert "random flip 40% costs BCE >= 15 points (clean last - noisy last) | 14.5 ± 0.7 (n=2) | **missed** |" in text
    assert "0.865 ± 0.021 (n=2) | **missed** |" in text
