"""The README's main job: ``balancemix-demo`` in the pre-trained regime (tiny budget here)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlxtend")

from balancemix_timm.benchmark import BUDGETS, plan_runs, run_config  # noqa: E402
from balancemix_timm.demo import DEMO_BUDGET, main  # noqa: E402
from balancemix_timm.pretrain import PretrainRecipe, ensure_pretrained  # noqa: E402


def test_demo_runs_are_the_strong_quick_budgets_runs(tmp_path):
    demo, quick = plan_runs(DEMO_BUDGET), plan_runs(BUDGETS["strong_quick"])
    assert [s.key for s in demo] == ["bce-mislabel40-s0", "balancemix-mislabel40-s0"]
    assert {s.key for s in demo} <= {s.key for s in quick}
    for spec in demo:  # the same configuration, so the same figures
        assert run_config(spec, DEMO_BUDGET, tmp_path) == run_config(spec, BUDGETS["strong_quick"], tmp_path)
    values = run_config(demo[0], DEMO_BUDGET, tmp_path)
    assert (values["noise"], values["noise_rate"], values["image_size"]) == ("mislabel", 0.4, 48)
    assert DEMO_BUDGET.pretrain["labels"] == "pairs"


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
