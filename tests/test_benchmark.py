"""The benchmark runner on a micro budget: tables written, finished runs skipped."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from balancemix_timm import benchmark
from balancemix_timm.benchmark import BUDGETS, Budget, RunSpec, _Cell, _row_at_fraction, plan_runs

MICRO = Budget(
    train=dict(
        data="demo", demo_num_train=48, demo_num_val=24, demo_num_classes=4, demo_imbalance_ratio=4.0,
        demo_seed=0, image_size=16, model="resnet10t", epochs=1, warmup_epochs=0, batch_size=16,
        optimizer="adamw", lr=1e-3, max_steps_per_epoch=1, device="cpu", progress=False, plots=False,
        eval_batch_size=32,
    ),
    methods=("bce", "balancemix"),
    settings=("mislabel40",),
    ablation_settings=("mislabel40",),
    ablation_rows=("minority",),
    description="micro test budget",
)


def test_plan_runs_dedupes_and_orders():
    specs = plan_runs(MICRO)
    # bce + balancemix (main grid, shared by Table 5's first and last rows) + the minority row.
    assert [s.key for s in specs] == [
        "bce-mislabel40-s0", "balancemix-mislabel40-s0", "balancemix-abl-minority-mislabel40-s0",
    ]
    assert len(plan_runs(MICRO, seeds=[0, 1])) == 6
    for name in ("weak_full", "strong_full"):
        full = plan_runs(BUDGETS[name])
        assert len({s.key for s in full}) == len(full)
        # Full grid: every method on every setting, the partial settings' methods, plus the
        # ablation rows not in the main grid.
        b = BUDGETS[name]
        n_abl = sum(1 for a in b.ablation_rows if a != "mixup") * len(b.ablation_settings)
        n_partial = sum(len(methods) for _, methods in b.partial_settings)
        per_seed = (len(b.methods) * len(b.settings) + n_partial + n_abl
                    + len(b.sampler_variants) * len(b.sampler_settings))
        assert len(full) == per_seed * len(b.seeds)
        assert b.seeds == (0, 1, 2) and b.pretrain is not None  # a pre-trained regime, 3 seeds
    strong = plan_runs(BUDGETS["strong_full"], seeds=[0])
    assert {s.key for s in strong if s.setting in ("mislabel20", "flip20")} == {
        "bce-mislabel20-s0", "balancemix-mislabel20-s0", "bce-flip20-s0", "balancemix-flip20-s0"}
    assert "splc" not in {s.method for s in strong}


def test_partial_settings_run_after_the_headline_settings():
    b = replace(MICRO, partial_settings=(("flip20", ("bce",)), ("mislabel40", ("mixup",))))
    keys = [s.key for s in plan_runs(b)]
    assert keys.index("mixup-mislabel40-s0") < keys.index("bce-flip20-s0")
    assert len(keys) == len(set(keys)) == 5


def test_run_config_protocol(tmp_path):
    b = BUDGETS["strong_full"]
    llr = benchmark.run_config(RunSpec("llr", "flip40", 3), b, tmp_path)
    assert llr["method_options"] == {"reduction": "sum_mean"}
    assert (llr["noise"], llr["noise_rate"], llr["seed"], llr["noise_seed"]) == ("random_flip", 0.4, 3, 3)
    bm_single = benchmark.run_config(RunSpec("balancemix", "single", 0), b, tmp_path)
    assert bm_single["eps"] == 0.55 and bm_single["noise"] == "single_positive"
    bm_mis = benchmark.run_config(RunSpec("balancemix", "mislabel20", 0), b, tmp_path)
    assert "eps" not in bm_mis or bm_mis["eps"] == 0.975
    assert b.train["warmup_epochs"] < b.train["epochs"]  # T-estimator / BalanceMix need a post-warm-up phase


def test_cell_statistics_and_fraction_rows():
    c = _Cell([1.0, 2.0, 4.0])
    assert c.mean == pytest.approx(7 / 3)
    assert c.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(_Cell([5.0]).std)
    rows = [dict(epoch=e) for e in range(1, 9)]
    assert [_row_at_fraction(rows, 8, f)["epoch"] for f in (0.25, 0.5, 1.0)] == [2, 4, 8]
    assert _row_at_fraction(rows, 6, 0.25)["epoch"] == 2  # 1.5 rounds half up
    assert _row_at_fraction(rows[:3], 8, 1.0) is None


def test_micro_benchmark_writes_tables_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BUDGETS, "micro", MICRO)
    calls: list[str] = []
    real_train = benchmark.runner.train

    def counting_train(cfg, **kwargs):
        calls.append(cfg.run_name)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(benchmark.runner, "train", counting_train)
    out, rep = tmp_path / "bench", tmp_path / "report"
    argv = ["--budget", "micro", "--out", str(out), "--report-dir", str(rep)]
    # A slice of the grid first: only BCE's run; the report is the whole budget's.
    assert benchmark.main([*argv, "--methods", "bce", "--settings", "mislabel40"]) == 0
    assert calls == ["bce-mislabel40-s0"]
    assert "1 of 3 planned runs finished" in (rep / "results.md").read_text()
    assert benchmark.main(argv) == 0  # the rest of the grid; the slice's run is finished
    assert sorted(calls) == sorted(s.key for s in plan_runs(MICRO))

    md = (rep / "results.md").read_text()
    for heading in ("## Table 1: mislabeling", "## Table 5: component analysis", "## Table 7:", "## Headline"):
        assert heading in md
    assert "| Method | All 40% | Many 40% | Medium 40% | Few 40% |" in md
    assert "python -m balancemix_timm.benchmark --budget micro" in md
    # The seed-0 BalanceMix run on mislabel 40% saved label diagnostics: its figures sit next to the report.
    if importlib.util.find_spec("matplotlib") is not None:
        assert "## Diagnostics" in md and "](diagnostics_mislabel40_loss_distributions.png)" in md
        assert (rep / "diagnostics_mislabel40_loss_distributions.png").is_file()
    data = json.loads((rep / "results.json").read_text())
    # The table's number is the run's last-epoch mAP, read independently from its summary.
    summary = json.loads((out / "runs" / "bce-mislabel40-s0" / "summary.json").read_text())
    assert data["main"]["bce"]["mislabel40"]["mAP"]["mean"] == pytest.approx(summary["last"]["mAP"])
    assert data["main"]["bce"]["mislabel40"]["mAP"]["n"] == 1
    assert data["finished"] == data["planned"] == 3 and data["missing"] == []
    assert set(data["ablation"]) == {
        "Default (BCE loss)", "+ Minority sampler (Eq. 4)", "+ Ambiguous labels (Eq. 10) = BalanceMix"}
    assert data["group_thresholds"] == {
        "many": summary["group_thresholds"]["many"], "few": summary["group_thresholds"]["few"],
    }
    assert not (out / "runs" / "bce-mislabel40-s0" / "last.pth").exists()  # checkpoints dropped by default

    # Rerun: everything is finished, nothing is trained again.
    calls.clear()
    assert benchmark.main(argv) == 0
    assert calls == []
    # A run without its summary (interrupted) is the only one trained again.
    (out / "runs" / "balancemix-mislabel40-s0" / "summary.json").unlink()
    assert benchmark.main(argv) == 0
    assert calls == ["balancemix-mislabel40-s0"]
    # A run whose configuration changed (here: another lr) would be trained again too.
    capsys.readouterr()
    assert benchmark.main(argv + ["--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["done", "bce-mislabel40-s0", "done", "balancemix-mislabel40-s0",
                                               "done", "balancemix-abl-minority-mislabel40-s0"]
    assert benchmark.main(argv + ["--dry-run", "lr=0.002"]) == 0
    assert capsys.readouterr().out.split()[::2] == ["todo"] * 3
    # --methods / --settings select the same runs in a dry run as in a training one.
    assert benchmark.main(argv + ["--dry-run", "--methods", "minority"]) == 0
    assert capsys.readouterr().out.split() == ["done", "balancemix-abl-minority-mislabel40-s0"]
    assert benchmark.main(argv + ["--dry-run", "--settings", "flip40"]) == 0
    assert capsys.readouterr().out.split() == []


def test_report_marks_missing_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(BUDGETS, "micro", MICRO)
    rep = tmp_path / "report"
    assert benchmark.main(["--budget", "micro", "--out", str(tmp_path / "empty"), "--report-dir", str(rep),
                           "--report-only"]) == 0
    md = Path(rep / "results.md").read_text()
    assert "0 of 3 planned runs finished" in md and "n/a" in md


def test_report_of_fixed_fake_runs_is_golden(tmp_path, monkeypatch):
    """The report read from fixed fake runs (written by hand, no training) is byte-identical to
    ``tests/data/benchmark_golden_results.md`` (timestamp and machine line aside).

    The golden file was written by the single-module benchmark before it became a package;
    rewrite it only for an intended change of the report, and say so in the commit.
    """
    from tests._fake_benchmark import fake_plots, golden_report

    monkeypatch.setattr(benchmark.report, "_plots", fake_plots)
    monkeypatch.chdir(tmp_path)
    expected = (Path(__file__).parent / "data" / "benchmark_golden_results.md").read_text()
    assert golden_report(tmp_path) == expected


def test_budget_and_method_added_as_data_only(tmp_path, monkeypatch, capsys):
    """A new budget (three seeds, its own training fields) and a new method are rows of
    ``grid``'s tables: planned, configured and reported without touching the runner."""
    from balancemix_timm.benchmark import METHOD_OVERRIDES, METHOD_TITLES, grid
    from tests._fake_benchmark import write_fake_runs

    monkeypatch.setitem(METHOD_TITLES, "hill", "Hill")
    monkeypatch.setitem(METHOD_OVERRIDES, "hill", {"method_options": {"margin": 1.0}})
    budget = Budget(train=dict(grid._SCRATCH_TRAIN, lr=1e-3, pretrained_path="/weights/resnet10t.pth"),
                    methods=("bce", "hill", "balancemix"),
                    settings=("single", "clean"), seeds=(0, 1, 2), description="extension test")
    monkeypatch.setitem(BUDGETS, "ext", budget)
    specs = plan_runs(budget)
    assert [s.key for s in specs[:3]] == ["bce-single-s0", "hill-single-s0", "balancemix-single-s0"]
    assert len(specs) == 3 * 2 * 3
    hill = benchmark.run_config(specs[1], budget, tmp_path)
    assert hill["method_options"] == {"margin": 1.0} and hill["lr"] == 1e-3
    assert benchmark.run_config(specs[2], budget, tmp_path)["eps"] == 0.55  # per-(method, setting) data

    write_fake_runs(tmp_path / "out", [(s.key, s.method) for s in specs], skip_every=0)
    monkeypatch.setattr(benchmark.report, "_plots", lambda *a: [])
    rep = tmp_path / "rep"
    assert benchmark.main(["--budget", "ext", "--out", str(tmp_path / "out"), "--report-dir", str(rep),
                           "--report-only"]) == 0
    md = (rep / "results.md").read_text()
    assert "18 of 18 planned runs finished" in md and "| seeds | 0, 1, 2 " in md
    assert "## Table 3: missing labels" in md and "| Hill | " in md
    assert "| model | `resnet10t` from pre-trained weights `resnet10t.pth` (timm), linear head |" in md


def test_package_layers_point_down():
    """grid <- runner, grid <- collect <- report (its cells in report_cells), and cli on top: no circle,
    no module over ~500 lines."""
    import ast

    allowed = {
        "grid": set(), "runner": {"grid"}, "collect": {"grid"}, "report_cells": {"grid"},
        "criteria": {"grid"}, "report_selection": {"grid", "report_cells"},
        "report": {"grid", "collect", "report_cells", "criteria", "report_selection"},
        "cli": {"grid", "runner", "collect", "report"}, "__main__": {"cli"},
        "__init__": {"grid", "runner", "collect", "report", "cli"},
        "label_issues_report": {"grid"}, "label_issues_stage": {"grid", "runner", "label_issues_report"},
    }
    assert benchmark.__doc__.splitlines()[0] == benchmark.cli.DESCRIPTION  # the parser's description
    for path in sorted(Path(benchmark.__file__).parent.glob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) <= 500, path.name
        imported = {node.module.split(".")[0] for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        assert imported <= allowed[path.stem], (path.name, imported - allowed[path.stem])
