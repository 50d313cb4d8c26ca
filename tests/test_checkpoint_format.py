"""Checkpoint layouts carry a format version; a file of another version is refused with an error
naming the file and both versions, wherever a checkpoint is read (resume, the ML-Decoder plugin,
label issues), and the benchmark starts such an interrupted run over instead of failing."""

from __future__ import annotations

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.models.checkpoints import (
    ML_DECODER_CHECKPOINT_FORMAT,
    TRAIN_CHECKPOINT_FORMAT,
    check_checkpoint_format,
)
from tests._tiny import tiny


def test_check_checkpoint_format_names_the_file_and_both_versions():
    check_checkpoint_format({"format": TRAIN_CHECKPOINT_FORMAT}, TRAIN_CHECKPOINT_FORMAT, "a.pth", what="x")
    with pytest.raises(ValueError, match=r"^old\.pth is a balancemix-train checkpoint in layout 'balancemix-timm/1'.*"
                                         r"reads 'balancemix-timm/2' only: train again"):
        check_checkpoint_format({"format": "balancemix-timm/1"}, TRAIN_CHECKPOINT_FORMAT, "old.pth",
                                what="balancemix-train checkpoint")
    with pytest.raises(ValueError, match=r"^w\.pth is not a thing \(format None, expected 'balancemix-ml-decoder/2'\)"):
        check_checkpoint_format({"model": {}}, ML_DECODER_CHECKPOINT_FORMAT, "w.pth", what="thing")
    with pytest.raises(ValueError, match="format None"):
        check_checkpoint_format([1, 2], TRAIN_CHECKPOINT_FORMAT, "list.pth", what="thing")


def _older(path, fmt: str) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["format"] = fmt
    torch.save(ckpt, path)


def test_resume_and_label_issues_refuse_a_checkpoint_of_another_layout(tmp_path):
    from balancemix_timm.label_issues import load_label_state
    from balancemix_timm.trainer import Trainer

    values = tiny(data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"), run_name="r", epochs=2,
                  method="balancemix", device="cpu", label_diagnostics=False)
    Trainer(load_config(None, values)).fit(stop_after=2)
    path = tmp_path / "runs" / "r" / "last.pth"
    assert load_label_state(path, weights_only=False).given_labels.shape[0] == 160  # the current layout reads
    _older(path, "balancemix-timm/1")
    with pytest.raises(ValueError, match=r"last\.pth is a balancemix-train checkpoint in layout 'balancemix-timm/1'"):
        Trainer(load_config(None, values)).fit(resume=path)
    with pytest.raises(ValueError, match=r"layout 'balancemix-timm/1'.*reads 'balancemix-timm/2' only"):
        load_label_state(path, weights_only=False)


def test_the_ml_decoder_plugin_refuses_a_checkpoint_of_another_layout(train_set, val_set, tmp_path):
    from torch.utils.data import DataLoader

    from balancemix_timm.integrations import ml_decoder as bm
    from tests._ml_decoder import parse, small_model, standin_train

    plugin = bm.setup(parse(["--balancemix", "--bm-warmup-epochs", "1", "--bm-checkpoint-dir", str(tmp_path)]),
                      train_set)
    standin_train(small_model(), plugin.train_loader(batch_size=16), DataLoader(val_set, batch_size=16), 1e-3,
                  plugin, epochs=1)
    path = tmp_path / "balancemix-last.pth"
    _older(path, "balancemix-ml-decoder/1")
    with pytest.raises(ValueError, match=r"layout 'balancemix-ml-decoder/1'.*reads 'balancemix-ml-decoder/2' only"):
        plugin.load_checkpoint(path)


def test_the_benchmark_starts_over_an_interrupted_run_of_another_layout(tmp_path, caplog):
    from balancemix_timm.benchmark import runner
    from balancemix_timm.trainer import Trainer

    values = tiny(data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"), run_name="r", epochs=2,
                  device="cpu", label_diagnostics=False)
    Trainer(load_config(None, values)).fit(stop_after=1)
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "summary.json").unlink()  # interrupted: no summary yet
    assert runner._prepare_run_dir(run_dir, values) == "auto"  # the current layout continues
    _older(run_dir / "last.pth", "balancemix-timm/1")
    with caplog.at_level("WARNING", logger=runner.__name__):
        assert runner._prepare_run_dir(run_dir, values) is None
    assert not run_dir.exists() and "cannot be continued" in caplog.text and "starting it over" in caplog.text
