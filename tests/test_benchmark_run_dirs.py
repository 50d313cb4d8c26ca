"""The benchmark runner never loses a finished run: another spelling of the grid's folder keeps
it finished, and a run trained again is set aside, not deleted, and only when it starts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

from balancemix_timm.benchmark.grid import BUDGETS, plan_runs
from balancemix_timm.benchmark.runner import STALE_DIR, _prepare_run_dir, _worker, is_finished, run_config
from balancemix_timm.config import load_config


def _finished_run(run_dir: Path, values: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(load_config(None, dict(values)).to_dict()))
    (run_dir / "summary.json").write_text(json.dumps({"last": {"mAP": 50.0}}))


def _values(out: Path, cache: Path) -> tuple[str, dict]:
    budget = BUDGETS["strong_quick"]
    spec = plan_runs(budget, None)[0]
    return spec.key, run_config(spec, budget, out, pretrain_cache=cache)


def test_a_grid_reached_through_another_path_keeps_its_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key, relative = _values(Path("grid"), Path("cache"))
    _finished_run(tmp_path / "grid" / "runs" / key, relative)
    _, absolute = _values(tmp_path / "grid", tmp_path / "cache")
    assert relative["data_root"] != absolute["data_root"]
    assert is_finished(tmp_path / "grid" / "runs" / key, absolute)
    os.symlink(tmp_path / "grid", tmp_path / "link")
    _, linked = _values(tmp_path / "link", tmp_path / "cache")
    assert is_finished(tmp_path / "link" / "runs" / key, linked)
    # Other weights are another run.
    _, other = _values(tmp_path / "grid", tmp_path / "other-cache")
    assert not is_finished(tmp_path / "grid" / "runs" / key, other)


def test_a_stale_run_is_set_aside_when_it_starts_never_before(tmp_path):
    key, values = _values(tmp_path / "grid", tmp_path / "cache")
    run_dir = tmp_path / "grid" / "runs" / key
    _finished_run(run_dir, {**values, "epochs": int(values["epochs"]) + 1})
    assert not is_finished(run_dir, values)
    # A pool worker past the deadline starts nothing and touches nothing.
    assert _worker(values, run_dir, 1, deadline=time.time() - 1) is None
    assert (run_dir / "summary.json").is_file()
    assert _prepare_run_dir(run_dir, values) is None
    assert not run_dir.exists()
    (kept,) = (tmp_path / "grid" / "runs" / STALE_DIR).iterdir()
    assert kept.name.startswith(key + ".")
    assert json.loads((kept / "summary.json").read_text())["last"]["mAP"] == 50.0


def test_a_run_finished_by_another_process_since_the_plan_is_not_trained_again(tmp_path):
    key, values = _values(tmp_path / "grid", tmp_path / "cache")
    run_dir = tmp_path / "grid" / "runs" / key
    _finished_run(run_dir, values)
    assert _worker(values, run_dir, 1) == "finished"
    assert json.loads((run_dir / "summary.json").read_text())["last"]["mAP"] == 50.0
    assert not (run_dir.parent / STALE_DIR).exists()


def test_a_worker_that_trains_nothing_leaves_the_process_settings_alone(tmp_path):
    import logging

    import torch

    key, values = _values(tmp_path / "grid", tmp_path / "cache")
    run_dir = tmp_path / "grid" / "runs" / key
    _finished_run(run_dir, values)
    threads, handlers = torch.get_num_threads(), list(logging.getLogger().handlers)
    assert _worker(values, run_dir, threads + 1) == "finished"
    assert _worker(values, run_dir, threads + 1, deadline=time.time() - 1) is None
    assert torch.get_num_threads() == threads and logging.getLogger().handlers == handlers
