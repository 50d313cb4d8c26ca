"""End-to-end training on CUDA with mixed precision (marked ``gpu``: skipped without a GPU).

The CPU suite covers every code path but AMP (the trainer's autocast and ``GradScaler`` are on
CUDA only) and the engine's tables living on the GPU through a whole run. These tests train the
tiny demo configuration on CUDA for each method, with the ML-Decoder head too, and check that
an interrupted run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.methods import METHODS
from balancemix_timm.trainer import Trainer
from tests._tiny import tiny

pytestmark = pytest.mark.gpu
DEVICE = "cuda"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("demo_cuda"))


def _cfg(data_root, out, **kw):
    values = tiny(data_root=data_root, output_dir=str(out), device=DEVICE, amp=True, eps=0.6)
    values.update(kw)
    return load_config(None, values)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_with_amp(data_root, tmp_path, method):
    trainer = Trainer(_cfg(data_root, tmp_path, run_name=method, method=method))
    assert trainer.amp == (DEVICE == "cuda") and trainer.device.type == DEVICE
    summary = trainer.fit()
    rows = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert 0.0 <= summary["last"]["mAP"] <= 100.0
    if method == "balancemix":
        engine = trainer.method.engine
        for name in ("given_labels", "refined_labels", "state", "clean_prob", "probs"):
            assert getattr(engine, name).device.type == DEVICE, name
        assert rows[-1]["lm_applied"]


def test_ml_decoder_head_and_resume(data_root, tmp_path):
    kw = dict(method="balancemix", head="ml_decoder", epochs=3)
    full = Trainer(_cfg(data_root, tmp_path, run_name="full", **kw))
    full.fit()
    Trainer(_cfg(data_root, tmp_path, run_name="part", **kw)).fit(stop_after=2)
    resumed = Trainer(_cfg(data_root, tmp_path, run_name="part", **kw))
    resumed.fit(resume=resumed.run_dir / "last.pth")
    # cuDNN kernels are not bit-reproducible run to run, so the check is that the resumed run
    # picks up where it stopped (epochs, label state) and ends close to the uninterrupted one.
    assert [m["epoch"] for m in resumed.metrics][-1] == 3
    a, b = full.method.engine, resumed.method.engine
    assert (a.given_labels == b.given_labels).all()
    assert abs(full.metrics[-1]["mAP"] - resumed.metrics[-1]["mAP"]) < 15.0
    assert torch.isfinite(b.clean_prob).all()
