"""A 2-epoch tiny BalanceMix run gives the figures it gave when this file was written.

The run (``tests/_tiny.py``'s configuration: 160 demo images, ResNet-10t at 32 px, mislabel
40%, one warm-up epoch so that the second epoch trains on managed labels) is pinned by
``tests/data/golden_run.json``: each epoch's metrics row (every figure except timings and the
learning rate's float noise) and a digest of the engine's per-sample tables in ``last.pth``
(exact for the integer tables, sums and norms for the float ones). A refactor that keeps the
behaviour keeps these; a change that moves them must say why and rewrite the file with
``BALANCEMIX_UPDATE_GOLDEN=1 pytest tests/test_golden_run.py``.

The comparison is exact for integer tables and 1e-5 relative for floats (float sums depend on
the reduction order of the CPU kernels, which the thread count can change).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.trainer import train
from tests._tiny import tiny

GOLDEN = Path(__file__).parent / "data" / "golden_run.json"
#: Row keys that measure time (they differ on every run).
TIME_KEYS = ("epoch_time", "train_time", "view_time", "refresh_time")
INT_TABLES = ("given_labels", "refined_labels", "state", "seen")
FLOAT_TABLES = ("clean_prob", "probs", "view_mean", "losses")


def _digest(engine_state: dict[str, Any]) -> dict[str, Any]:
    """Integer tables in full (as nested lists), float tables as sum / L2 norm / first row."""
    out: dict[str, Any] = {}
    for name in INT_TABLES:
        out[name] = engine_state[name].to(torch.int64).tolist()
    for name in FLOAT_TABLES:
        t = engine_state[name].double()
        out[name] = dict(sum=float(t.sum()), norm=float(t.norm()), first=t.reshape(len(t), -1)[0].tolist())
    return out


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in row.items() if k not in TIME_KEYS} for row in rows]


def _close(a: Any, b: Any, path: str) -> None:
    """Assert ``a`` equals ``b``: exact for ints, strings, bools; 1e-5 relative for floats."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in b:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(b, float) and not isinstance(b, bool):
        if math.isnan(b):
            assert isinstance(a, float) and math.isnan(a), f"{path}: {a} != nan"
        else:
            assert a == pytest.approx(b, rel=1e-5, abs=1e-7), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_two_epoch_tiny_run_matches_its_golden_figures(tmp_path: Path) -> None:
    cfg = load_config(None, tiny(
        data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"), run_name="golden",
        device="cpu", label_diagnostics=False, eps=0.6,
    ))
    train(cfg)
    run_dir = tmp_path / "runs" / "golden"
    ckpt = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=False)
    got = dict(rows=_rows(run_dir), engine=_digest(ckpt["method"]["engine"]))
    if os.environ.get("BALANCEMIX_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"rewrote {GOLDEN.name}")
    want = json.loads(GOLDEN.read_text())
    _close(json.loads(json.dumps(got)), want, "golden")
