"""Paired differences against BCE, recovery ratios and the Table 5 mean (benchmark.collect)."""

from __future__ import annotations

import numpy as np
import pytest

from balancemix_timm.benchmark.collect import paired_differences
from balancemix_timm.benchmark.grid import TABLE5_SETTINGS


def _runs(table: dict[tuple[str, str, int], float]) -> dict[str, dict]:
    return {f"{m}-{s}-s{k}": dict(method=m, setting=s, seed=k, ablation=None, variant=None,
                                  last={"mAP": v, "mAP_many": v, "mAP_medium": v, "mAP_few": v})
            for (m, s, k), v in table.items()}


def test_paired_cells_recovery_and_table5_mean_match_a_hand_computation():
    rng = np.random.default_rng(0)
    seeds = (0, 1, 2)
    table = {}
    for s in TABLE5_SETTINGS:
        for k in seeds:
            table[("bce", s, k)] = float(rng.uniform(20, 50))
            table[("bm", s, k)] = float(rng.uniform(20, 50))
    del table[("bm", "single", 2)]  # an unfinished run: seed 2 leaves the Table 5 mean
    out = paired_differences(_runs(table), ["bce", "bm"], list(TABLE5_SETTINGS))
    assert set(out) == {"bm"}
    for s in TABLE5_SETTINGS:
        ks = [k for k in seeds if ("bm", s, k) in table]
        diffs = [table[("bm", s, k)] - table[("bce", s, k)] for k in ks]
        cell = out["bm"][s]["mAP"]
        assert cell["n"] == len(ks) and cell["values"] == pytest.approx(diffs)
        assert cell["mean"] == pytest.approx(np.mean(diffs)) and cell["std"] == pytest.approx(np.std(diffs, ddof=1))
        if s != "clean":
            rec = [(table[("bm", s, k)] - table[("bce", s, k)]) / (table[("bce", "clean", k)] - table[("bce", s, k)])
                   for k in ks]
            assert out["bm"][s]["recovery"]["values"] == pytest.approx(rec)
    mean = out["bm"]["table5_mean"]["mAP"]
    expect = [np.mean([table[("bm", s, k)] for s in TABLE5_SETTINGS])
              - np.mean([table[("bce", s, k)] for s in TABLE5_SETTINGS])
              for k in (0, 1)]
    assert mean["n"] == 2 and mean["values"] == pytest.approx(expect)


def test_no_table5_mean_without_all_four_settings():
    table = {(m, s, 0): 30.0 + i for i, m in enumerate(("bce", "bm")) for s in ("clean", "mislabel40")}
    out = paired_differences(_runs(table), ["bce", "bm"], ["clean", "mislabel40"])
    assert "table5_mean" not in out["bm"]
    assert out["bm"]["mislabel40"]["mAP"]["values"] == [1.0]


def test_finished_runs_compare_by_the_options_their_method_reads(tmp_path):
    """A run whose saved configuration lacks a key its method reads (an option added after it)
    is stale; options only BalanceMix reads, and ``voc_*`` off VOC, never make another run stale;
    ``preset`` is compared through the options it sets."""
    import json

    import yaml

    from balancemix_timm.benchmark.runner import is_finished
    from balancemix_timm.config import load_config

    def saved(run: str, values: dict, drop: tuple[str, ...]) -> None:
        d = tmp_path / run
        d.mkdir()
        cfg = load_config(None, values).to_dict()
        for key in drop:
            cfg.pop(key)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "summary.json").write_text(json.dumps({"last": {}}))

    later_keys = ("preset", "confidence_input", "clean_if_agrees", "voc_difficult_eval")
    saved("bce", {"method": "bce", "data": "coco"}, later_keys)
    assert is_finished(tmp_path / "bce", {"method": "bce", "data": "coco"})
    saved("bm", {"method": "balancemix", "data": "coco"}, ("clean_if_agrees",))
    assert not is_finished(tmp_path / "bm", {"method": "balancemix", "data": "coco"})
    saved("bm-voc", {"method": "balancemix", "data": "coco"}, ("voc_difficult_eval",))
    assert is_finished(tmp_path / "bm-voc", {"method": "balancemix", "data": "coco"})
    # preset=paper and its explicit options are the same run.
    saved("paper", {"method": "balancemix", "data": "coco", "preset": "paper"}, ())
    from balancemix_timm.options import PRESETS

    assert is_finished(tmp_path / "paper", {"method": "balancemix", "data": "coco", **PRESETS["paper"]})
    assert not is_finished(tmp_path / "paper", {"method": "balancemix", "data": "coco", "clean_if_agrees": True,
                                                "preset": "paper"})
