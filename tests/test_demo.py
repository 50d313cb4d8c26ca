"""The README's main job: ``balancemix-demo`` in the pre-trained regime (tiny budget here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlxtend")

from balancemix_timm.benchmark.grid import PRETRAIN_RECIPE, PRETRAINED_TRAIN  # noqa: E402
from balancemix_timm.demo import DEMO_SETTINGS, main  # noqa: E402
from balancemix_timm.pretrain import PretrainRecipe, ensure_pretrained  # noqa: E402


def test_demo_settings_are_the_benchmarks_pretrained_regime():
    for key in ("demo_num_train", "demo_num_val", "demo_min_val_positives", "image_size", "epochs", "lr",
                "warmup_epochs", "model", "batch_size"):
        assert DEMO_SETTINGS[key] == PRETRAINED_TRAIN[key], key
    assert DEMO_SETTINGS["pretrained_path"] == "offline"
    assert (DEMO_SETTINGS["model"], DEMO_SETTINGS["image_size"]) == (
        PRETRAIN_RECIPE["model"], PRETRAIN_RECIPE["image_size"])
    assert (DEMO_SETTINGS["noise"], DEMO_SETTINGS["noise_rate"]) == ("mislabel", 0.4)


def test_demo_prints_both_methods_and_their_difference(tmp_path, monkeypatch, capsys):
    # A tiny cached backbone stands in for the default recipe's (minutes) under "offline".
    cache = tmp_path / "cache"
    tiny = PretrainRecipe(num_train=32, num_val=16, epochs=1, batch_size=16, randaugment=False)
    weights = ensure_pretrained(tiny, cache)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    assert main(["--out", str(out), "demo_num_train=64", "demo_num_val=48", "demo_min_val_positives=2",
                 "demo_num_classes=8", "epochs=2", "warmup_epochs=1", f"pretrained_path={weights}",
                 "progress=false", "plots=false"]) == 0
    text = capsys.readouterr().out
    assert "bce" in text and "balancemix" in text and "BalanceMix - BCE (last epoch): mAP" in text
    assert "clean-label precision" in text
    results = json.loads((out / "demo_results.json").read_text())
    diff = results["balancemix"]["last"]["mAP"] - results["bce"]["last"]["mAP"]
    assert f"mAP {diff:+.1f}" in text
    assert results["bce"]["best"]["mAP"] >= results["bce"]["last"]["mAP"]
