"""The label-issue comparison stage: scoring against known noise (by hand), cleanlab's call,
fold splitting, the trainer's part-of-the-data hook, and a tiny end-to-end run of the stage."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from balancemix_timm.benchmark import Budget
from balancemix_timm.benchmark import label_issues_report as report
from balancemix_timm.benchmark import label_issues_stage as stage

# 2 images x 3 classes. Wrong labels: (0, 1) removed (given 0, clean 1), (0, 2) added (given 1,
# clean 0), (1, 2) removed. Flagged: (0, 1) and (0, 2) rightly, (1, 0) wrongly (a given-0 label).
GIVEN = np.array([[1, 0, 1], [0, 1, 0]])
CLEAN = np.array([[1, 1, 0], [0, 1, 1]])
FLAGGED = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)


def test_score_flags_per_polarity_by_hand():
    s = stage.score_flags(FLAGGED, GIVEN, CLEAN)
    # all six labels: 3 flagged, 3 wrong, 2 both.
    assert (s["all"]["flagged"], s["all"]["noisy"], s["all"]["true_positives"]) == (3, 3, 2)
    assert s["all"]["precision"] == pytest.approx(2 / 3) and s["all"]["recall"] == pytest.approx(2 / 3)
    assert s["all"]["f1"] == pytest.approx(2 / 3)
    # labels given 1: (0,0), (0,2), (1,1); flagged (0,2), wrongly added (0,2).
    assert (s["added"]["flagged"], s["added"]["noisy"], s["added"]["true_positives"]) == (1, 1, 1)
    assert s["added"]["precision"] == s["added"]["recall"] == s["added"]["f1"] == 1.0
    # labels given 0: (0,1), (1,0), (1,2); flagged (0,1), (1,0); wrongly removed (0,1), (1,2).
    assert (s["removed"]["flagged"], s["removed"]["noisy"], s["removed"]["true_positives"]) == (2, 2, 1)
    assert s["removed"]["precision"] == s["removed"]["recall"] == s["removed"]["f1"] == 0.5


def test_score_flags_edge_cases():
    none = stage.score_flags(np.zeros((2, 3), bool), GIVEN, CLEAN)["all"]
    assert math.isnan(none["precision"]) and none["recall"] == 0.0 and none["f1"] == 0.0
    clean = stage.score_flags(FLAGGED, CLEAN, CLEAN)["all"]
    assert clean["precision"] == 0.0 and math.isnan(clean["recall"]) and clean["f1"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        stage.score_flags(FLAGGED[:1], GIVEN, CLEAN)


def test_pr_curve_by_hand_and_endpoints():
    scores = np.array([[0.9, 0.1, 0.5], [0.3, 0.8, 0.7]])
    # Ascending: 0.1 wrong, 0.3 right, 0.5 wrong, 0.7 wrong, 0.8, 0.9 right.
    c = stage.pr_curve(scores, GIVEN, CLEAN, max_points=None)
    assert c["flagged"] == [1, 2, 3, 4, 5, 6]
    assert c["precision"] == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4, 3 / 5, 1 / 2])
    assert c["recall"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1, 1, 1])
    assert c["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # A larger random case, thinned: recall non-decreasing, ends at 1 and at the base rate.
    rng = np.random.default_rng(0)
    given, clean = rng.integers(0, 2, (50, 7)), rng.integers(0, 2, (50, 7))
    c = stage.pr_curve(rng.random((50, 7)), given, clean, max_points=20)
    assert len(c["recall"]) == 20 and c["flagged"][0] == 1 and c["flagged"][-1] == 350
    assert np.all(np.diff(c["recall"]) >= 0) and c["recall"][-1] == pytest.approx(1.0)
    assert c["precision"][-1] == pytest.approx((given != clean).mean())


def test_fold_indices_cover_every_image_once_and_are_seeded():
    parts = stage.fold_indices(23, 5, seed=3)
    assert len(parts) == 5 and sorted(len(p) for p in parts) == [4, 4, 5, 5, 5]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(23))
    assert all(np.array_equal(a, b) for a, b in zip(parts, stage.fold_indices(23, 5, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, stage.fold_indices(23, 5, seed=4)))
    with pytest.raises(ValueError, match="folds"):
        stage.fold_indices(3, 4, seed=0)


def test_cleanlab_flags_planted_wrong_labels():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    n, k = 60, 3
    clean = (rng.random((n, k)) < 0.4).astype(np.uint8)
    # Out-of-sample probabilities that agree with the clean labels ...
    probs = np.clip(np.where(clean == 1, 0.9, 0.1) + rng.normal(0, 0.03, (n, k)), 0.01, 0.99)
    given = clean.copy()
    planted = [3, 17, 29, 41, 52]
    given[planted, 1] = 1 - given[planted, 1]  # ... and five given labels of class 1 they contradict
    out = stage.cleanlab_issues(given, probs)
    assert out["mask"].shape == out["scores"].shape == (n, k) and out["image_mask"].shape == (n,)
    assert np.argwhere(out["mask"]).tolist() == [[i, 1] for i in planted]  # all of them, nothing else
    assert np.flatnonzero(out["image_mask"]).tolist() == planted
    assert set(np.argsort(out["scores"], axis=None)[:5]) == {i * k + 1 for i in planted}  # ranked first
    assert stage.score_flags(out["mask"], given, clean)["all"]["f1"] == 1.0
    # A class with no given positive (cleanlab refuses it) is left out, not an error.
    given[:, 2] = 0
    out = stage.cleanlab_issues(given, probs)
    assert not out["mask"][:, 2].any()
    assert out["scores"][:, 2] == pytest.approx(1 - probs[:, 2])


TINY = Budget(
    train=dict(
        data="demo", demo_num_train=64, demo_num_val=32, demo_num_classes=4, demo_imbalance_ratio=4.0,
        demo_seed=0, image_size=16, model="resnet10t", epochs=1, warmup_epochs=0, batch_size=16,
        optimizer="adamw", lr=1e-3, device="cpu", progress=False, plots=False, eval_batch_size=64,
    ),
    methods=("balancemix",),
    settings=("mislabel40",),
    description="tiny label-issue stage",
)


def test_trainer_trains_on_part_of_the_images(tmp_path):
    from balancemix_timm.config import load_config
    from balancemix_timm.trainer import Trainer

    cfg = load_config(None, dict(TINY.train, method="bce", noise="mislabel", noise_rate=0.4,
                                 data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "runs")))
    full = Trainer(cfg)
    idx = np.array([3, 10, 11, 40, 63])
    part = Trainer(load_config(None, cfg.to_dict()), run_dir=tmp_path / "part", train_indices=idx)
    assert len(part.train_set) == 5 and part.steps_per_epoch == 1
    assert np.array_equal(part.given_labels.numpy(), full.given_labels.numpy()[idx])  # the full run's noise
    assert np.array_equal(part.train_set.labels.numpy(), full.given_labels.numpy()[idx])
    held = part.training_images([0, 5])
    assert len(held) == 2 and held.image_paths == [full.train_set.image_paths[i] for i in (0, 5)]
    assert held.transform is part._eval_tf and held[1][2] == 1


def test_tiny_stage_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("cleanlab")
    monkeypatch.setitem(stage.BUDGETS, "strong_full", TINY)  # the stage's regime: tiny, from scratch
    docs = tmp_path / "label-issues.md"
    shutil.copy(Path(__file__).parents[1] / "docs" / "label-issues.md", docs)
    original = docs.read_text()
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--settings", "mislabel40", "--seeds", "0", "--folds", "2", "--docs", str(docs),
            "--figure", str(tmp_path / "pr.png")]
    assert stage.main(argv) == 0

    results = json.loads((out / "label_issues" / "comparison.json").read_text())
    (rec,) = results["records"]
    assert (rec["setting"], rec["seed"], rec["images"], rec["classes"]) == ("mislabel40", 0, 64, 4)
    assert rec["wrong_labels"] > 0
    for m in ("balancemix", "cleanlab"):
        assert set(rec[m]["labels"]) == {"all", "added", "removed"}
        assert rec[m]["curve"]["recall"][-1] == pytest.approx(1.0)
        assert rec[m]["compute"]["train_seconds"] > 0
    assert rec["balancemix"]["compute"]["image_epochs"] == 64  # 1 epoch x 64 images
    assert rec["cleanlab"]["compute"]["image_epochs"] == 64  # 2 folds x 1 epoch x 32 images
    folds = sorted((out / "label_issues" / "folds").iterdir())
    assert [f.name for f in folds] == ["bce-mislabel40-s0-fold1of2", "bce-mislabel40-s0-fold2of2"]
    assert all(json.loads((f / "fold.json").read_text())["trained_images"] == 32 for f in folds)
    assert (out / "runs" / "balancemix-mislabel40-s0" / "last.pth").is_file()  # kept for the label state
    assert results["summary"]["target"]["met"] is None  # flip40 not run

    page = docs.read_text()
    start, end = report.section_markers("strong_full")
    weak_start, weak_end = report.section_markers("weak_full")
    assert page.count(start) == 1 and page.count(end) == 1
    weak_block = page[page.index(weak_start):page.index(weak_end)]  # the other regime's block is left alone
    assert weak_block == original[original.index(weak_start):original.index(weak_end)]
    assert "Not measured yet" not in page and "| Mislabel 40% | BalanceMix (1 training) |" in page
    assert "balancemix-benchmark-label-issues --budget strong_full --out" in page and results["date"] in page
    assert page.index("## Comparison with cleanlab") < page.index(start)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "pr.png").is_file() and "](pr.png)" in page
    assert (out / "label_issues" / "comparison.md").is_file()

    assert rec["cleanlab"]["compute"]["fold_val_mAP"] >= 0  # the folds validated like any run
    assert "| Mislabel 40% | cleanlab (K-fold BCE) |" in (out / "label_issues" / "comparison.md").read_text()

    # Rerun from the JSON: the generated part is replaced, not duplicated.
    assert stage.main(argv + ["--report-only"]) == 0
    assert docs.read_text().count(start) == 1 and docs.read_text().count(weak_start) == 1
    # A finished BalanceMix run without its checkpoint is refused (its label state is gone), untouched.
    (out / "runs" / "balancemix-mislabel40-s0" / "last.pth").unlink()
    with pytest.raises(ValueError, match="without its last.pth"):
        stage.run_stage(out, settings=["mislabel40"], folds=2)
    assert (out / "runs" / "balancemix-mislabel40-s0" / "summary.json").is_file()


def test_target_verdict_from_numbers():
    def record(setting, f1_bm, f1_cl, s_bm, s_cl):
        cell = lambda f1, s: dict(  # noqa: E731
            labels={p: dict(precision=f1, recall=f1, f1=f1, flagged=1) for p in ("all", "added", "removed")},
            images=dict(f1=f1), curve=dict(average_precision=f1), compute=dict(cpu_seconds=s, train_seconds=1000 - s))
        return dict(setting=setting, seed=0, images=10, classes=2, wrong_labels=3,
                    balancemix=cell(f1_bm, s_bm), cleanlab=cell(f1_cl, s_cl))

    met = report.summarize([record("mislabel40", 0.6, 0.5, 10, 40), record("flip40", 0.5, 0.5, 10, 40)])["target"]
    assert met["met"] is True and met["compute_ratio"] == pytest.approx(0.25)
    slow = report.summarize([record("mislabel40", 0.6, 0.5, 20, 40), record("flip40", 0.7, 0.5, 20, 40)])["target"]
    assert slow["met"] is False and "compute above 1/3" in slow["text"]
    worse = report.summarize([record("mislabel40", 0.4, 0.5, 1, 40), record("flip40", 0.7, 0.5, 1, 40)])["target"]
    assert worse["met"] is False and "-0.100" in worse["text"]


def test_each_regime_has_its_own_block_in_the_docs_section():
    page = "# Label issues\n\n## Comparison with cleanlab\n\nProse.\n\n## Next\n"
    results = dict(date="d", out="o", folds=2, settings=["mislabel40"], seeds=[0], records=[], summary=dict(
        settings={}, target=dict(text="t")))
    weak = report.comparison_markdown(results, command="weak-cmd", regime="weak_full")
    page = report._replace_section(page, weak, "weak_full")
    strong = report.comparison_markdown(results, command="strong-cmd", regime="strong_full")
    page = report._replace_section(page, strong, "strong_full")
    assert page.index("strong-cmd") < page.index("weak-cmd") < page.index("Prose.") < page.index("## Next")
    again = report._replace_section(page, strong.replace("strong-cmd", "strong-cmd-2"), "strong_full")
    assert "strong-cmd-2" in again and "strong-cmd\n" not in again and again.count("weak-cmd") == 1
    assert again.replace("strong-cmd-2", "strong-cmd") == page
