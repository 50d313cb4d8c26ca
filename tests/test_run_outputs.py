"""What a training run leaves behind, under the conditions practitioners report (issue 23).

* ``best.pth`` holds the weights that scored the mAP it records (the EMA when the EMA won).
* A machine whose locale is not UTF-8 (``LC_ALL=C``): a UTF-8 config with a non-ASCII comment,
  class names that are not ASCII, ``--resume auto``; every output written as UTF-8.
* The run's JSON files are strict JSON (an undefined figure is ``null``).
* A run whose output goes to a file (not a terminal) writes no progress-bar frames (``\\r``).
* One end-of-run output that cannot be written does not lose the others.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from balancemix_timm.config import load_config
from balancemix_timm.models.checkpoints import read_state_dict
from balancemix_timm.textfiles import read_json, read_json_lines, read_text
from balancemix_timm.trainer import Trainer, train

#: A run in which the EMA (decay 0.5, so it moves fast) scores above the regular weights after
#: one epoch at a high learning rate (checked by the test, which needs it).
EMA_RUN = dict(data="demo", demo_num_train=64, demo_num_val=32, demo_num_classes=6, image_size=32, model="resnet10t",
               method="bce", epochs=1, batch_size=16, ema_decay=0.5, lr=0.05, seed=0, workers=0, plots=False,
               progress=False, device="cpu")
#: Class names of the C-locale run: none of them ASCII-only.
CLASS_NAMES = ["café", "行人", "Straße", "ciclista"]


def reject(token: str) -> None:
    raise ValueError(f"non-JSON constant {token}")


# ---------------------------------------------------------------- best.pth
def test_scored_weights_picks_the_higher_of_regular_and_ema():
    from balancemix_timm.trainer.core import scored_weights

    assert scored_weights({"mAP": 30.0}) == "regular"
    assert scored_weights({"mAP": 30.0, "ema_mAP": 31.0}) == "ema"
    assert scored_weights({"mAP": 31.0, "ema_mAP": 31.0}) == "regular"  # a tie keeps the trained weights


def test_best_checkpoint_reproduces_the_map_it_records_when_the_ema_won(tmp_path):
    cfg = load_config(None, dict(EMA_RUN, data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"),
                                 run_name="ema"))
    summary = train(cfg)
    run = tmp_path / "runs" / "ema"
    row = read_json_lines(run / "metrics.jsonl")[-1]
    assert row["ema_mAP"] > row["mAP"], "this run must have the EMA win, or it checks nothing"
    best_path = run / "best.pth"
    import torch

    best = torch.load(best_path, map_location="cpu", weights_only=False)
    assert best["weights"] == "ema" and best["mAP"] == row["ema_mAP"]
    assert summary["best"] == {"mAP": row["ema_mAP"], "epoch": 1, "weights": "ema"}

    # Re-scored with the run's own configuration and the project's checkpoint reader.
    rescoring = Trainer(load_config(str(run / "config.yaml"), {"run_name": "rescore"}))
    rescoring.model.load_state_dict(read_state_dict(best_path))
    assert rescoring.validate()["mAP"] == pytest.approx(best["mAP"], abs=1e-9)
    # The regular weights are kept too, under their own name, and score the regular mAP.
    rescoring.model.load_state_dict(best["model_regular"])
    assert rescoring.validate()["mAP"] == pytest.approx(row["mAP"], abs=1e-9)


# ---------------------------------------------------------------- C locale, strict JSON, log file
@pytest.fixture(scope="module")
def c_locale_run(tmp_path_factory) -> dict:
    """A BalanceMix run in a subprocess under ``LC_ALL=C`` (Python's UTF-8 mode off), its output
    redirected to a file, on a COCO set with non-ASCII class names and a UTF-8 config file whose
    comment is not ASCII; then ``--resume auto`` of the finished run."""
    from balancemix_timm.data.demo import make_demo_dataset

    tmp = tmp_path_factory.mktemp("c_locale")
    root = tmp / "data"
    make_demo_dataset(root, num_train=48, num_val=16, num_classes=4, image_size=32, imbalance_ratio=5,
                      mean_labels=1.5)
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text(encoding="utf-8"))
        for cat, name in zip(sorted(coco["categories"], key=lambda c: c["id"]), CLASS_NAMES):
            cat["name"] = name
        path.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    config = tmp / "run.yaml"
    config.write_text("# 训练配置: BalanceMix, one epoch — café\nmethod: balancemix\nepochs: 1\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANGUAGE") and not k.startswith("LC_")}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    args = [str(config), "data=coco", f"data_root={root}", "image_size=32", "warmup_epochs=0", "noise=mislabel",
            "noise_rate=0.4", "batch_size=16", "workers=0", "plots=false", "progress=true",
            f"output_dir={tmp / 'runs'}", "run_name=run", "device=cpu"]
    out = {}
    for name, extra in (("first", []), ("resumed", ["--resume", "auto"])):
        log = tmp / f"{name}.log"
        with log.open("wb") as fh:  # a file, not a terminal
            res = subprocess.run([sys.executable, "-m", "balancemix_timm.trainer", *args, *extra], stdout=fh,
                                 stderr=subprocess.STDOUT, env=env, timeout=600)
        out[name] = (res.returncode, log.read_bytes())
    out["run"] = tmp / "runs" / "run"
    return out


def test_c_locale_run_reads_utf8_config_and_writes_utf8_outputs(c_locale_run):
    for name in ("first", "resumed"):
        code, log = c_locale_run[name]
        assert code == 0, f"{name} run failed:\n{log.decode('utf-8', 'replace')[-3000:]}"
    run = c_locale_run["run"]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "label_issues.csv", "last.pth", "best.pth"):
        assert (run / name).is_file(), name
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    issues = read_text(run / "label_issues.csv")  # UTF-8 (a locale-encoded file would not decode)
    assert issues.startswith("image_id,")
    assert {line.split(",")[3] for line in issues.splitlines()[1:]} <= set(CLASS_NAMES)
    assert any(name in issues for name in CLASS_NAMES if not name.isascii())


def test_run_json_files_are_strict_with_undefined_figures_as_null(c_locale_run):
    run = c_locale_run["run"]
    rows = [json.loads(line, parse_constant=reject) for line in read_text(run / "metrics.jsonl").splitlines()]
    summary = json.loads(read_text(run / "summary.json"), parse_constant=reject)
    # One epoch without warm-up: nothing re-labeled yet, so its accuracy is undefined.
    assert rows[-1]["relabel_proportion"] == 0.0
    assert rows[-1]["relabel_accuracy"] is None and summary["last"]["relabel_accuracy"] is None
    assert read_json(run / "summary.json")["last"]["relabel_accuracy"] is None


def test_a_run_logged_to_a_file_writes_no_progress_frames(c_locale_run):
    for name in ("first", "resumed"):
        _, log = c_locale_run[name]
        assert b"epoch 1/1" in log or name == "resumed"
        assert b"\r" not in log, f"{name}: carriage-return frames in a log file"


def test_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(caplog):
    import io

    from balancemix_timm.trainer.outputs import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    assert list(progress(range(3), 3, "epoch 1/1", True, stream=term)) == [0, 1, 2]
    assert "\r" in term.getvalue()  # tqdm's bar

    plain = io.StringIO()
    caplog.set_level("INFO", logger="balancemix_timm.trainer")
    bar = progress(range(4), 4, "epoch 2/5", True, stream=plain, interval=0.0)
    for _ in bar:
        bar.set_postfix(loss="0.250")
    assert plain.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["epoch 2/5: step 1/4 (loss 0.250)", "epoch 2/5: step 2/4 (loss 0.250)",
                     "epoch 2/5: step 3/4 (loss 0.250)"]
    assert list(progress(range(2), 2, "x", False)) == [0, 1]


# ---------------------------------------------------------------- one output failing
def test_an_output_that_cannot_be_written_does_not_lose_the_others(tmp_path, monkeypatch):
    import balancemix_timm.methods.standard as standard

    def fail(*args, **kwargs):
        raise UnicodeEncodeError("ascii", "Straße", 4, 5, "ordinal not in range(128)")

    monkeypatch.setattr(standard, "write_label_issues", fail)
    cfg = load_config(None, dict(EMA_RUN, method="balancemix", warmup_epochs=0, ema_decay=0.0, noise="mislabel",
                                 noise_rate=0.4, demo_num_train=32, demo_num_val=16, data_root=str(tmp_path / "demo"),
                                 output_dir=str(tmp_path / "runs"), run_name="r"))
    trainer = Trainer(cfg)
    with pytest.raises(RuntimeError, match="label_issues.csv") as info:
        trainer.fit()
    assert isinstance(info.value.__cause__, UnicodeEncodeError)
    run = tmp_path / "runs" / "r"
    summary = read_json(run / "summary.json")
    assert summary["last"]["epoch"] == 1 and "UnicodeEncodeError" in next(iter(summary["output_errors"].values()))
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not math.isnan(summary["best"]["mAP"])
