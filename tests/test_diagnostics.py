"""Label diagnostics: the trainer's npz snapshots hold the engine's tables, the figures are drawn,
and the benchmark report links them only when such a snapshot exists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from balancemix_timm import diagnostics
from balancemix_timm.config import load_config
from balancemix_timm.diagnostics import wrong_label_auc
from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.gmm import LabelGMM
from balancemix_timm.refine import LabelState
from balancemix_timm.trainer import Trainer
from tests._tiny import tiny


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpl = pytest.mark.skipif(not _has_matplotlib(), reason="matplotlib not installed")


def _engine_snapshot(engine: BalanceMixEngine) -> dict:
    """Copies of what the npz should hold, taken right after the refresh."""
    gmm = engine.last_gmm
    return dict(
        losses=engine.losses.cpu().clone(), clean_prob=engine.clean_prob.cpu().clone(),
        state=engine.state.cpu().clone(), refined=engine.refined_labels.cpu().clone(),
        probs=engine.probs.cpu().clone(), thresholds=gmm.decision_thresholds().clone(),
        shift=gmm.shift_.clone(), scale=gmm.scale_.clone(), gmm_state=gmm.state_dict(),
    )


def test_trainer_npz_holds_the_engine_tables(tmp_path):
    cfg = load_config(None, tiny(data_root=str(tmp_path / "data"), output_dir=str(tmp_path), run_name="bm",
                                 epochs=3, warmup_epochs=1))
    trainer = Trainer(cfg)
    method = trainer.method
    taken: dict[int, dict] = {}
    save = method.save_label_diagnostics

    def spy(epoch, stages):
        taken[epoch + 1] = _engine_snapshot(method.engine)
        return save(epoch, stages)

    method.save_label_diagnostics = spy
    trainer.fit()
    folder = trainer.run_dir / "label_diagnostics"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_001.npz", "epoch_003.npz"]
    assert sorted(taken) == [1, 3]
    given, clean = trainer.given_labels.numpy(), trainer.clean_labels.numpy()
    for epoch, stages in ((1, ["warmup_end"]), (3, ["last"])):
        data = diagnostics.load_label_diagnostics(folder / f"epoch_{epoch:03d}.npz")
        snap = taken[epoch]
        assert int(data["epoch"]) == epoch and list(data["stages"]) == stages
        assert str(data["gmm_normalize"]) == "minmax" and str(data["noise"]) == "mislabel"
        # The engine's tables, unchanged.
        np.testing.assert_array_equal(data["losses"], snap["losses"].numpy())
        np.testing.assert_array_equal(data["clean_prob"], snap["clean_prob"].numpy())
        np.testing.assert_array_equal(data["state"], snap["state"].numpy())
        np.testing.assert_array_equal(data["refined_labels"], snap["refined"].numpy())
        np.testing.assert_array_equal(data["given_labels"], given)
        np.testing.assert_array_equal(data["clean_labels"], clean)
        np.testing.assert_array_equal(data["gmm_threshold"], snap["thresholds"].numpy())
        # The losses are the BCE of the recorded probabilities against the given labels (a few by hand).
        probs = data["probs"].astype(np.float64)
        for n, k in ((0, 0), (5, 3), (17, 11), (100, 19)):
            p = min(max(probs[n, k], 1e-7), 1 - 1e-7)
            expected = -math.log(p if given[n, k] else 1 - p)
            assert data["losses"][n, k] == pytest.approx(expected, rel=1e-5)
        np.testing.assert_array_equal(
            data["losses"],
            BalanceMixEngine.bce_from_probs(torch.from_numpy(data["probs"]), trainer.given_labels).numpy())
        # Refitting the GMMs on the saved losses gives the saved p_G (deterministic EM), after the
        # engine's clean-if-agrees rule when it is on.
        gmm = LabelGMM(**method.engine.gmm_options)
        refit = gmm.fit_predict_clean_probability(torch.from_numpy(data["losses"]), trainer.given_labels)
        if method.engine.clean_if_agrees:
            from balancemix_timm.refine import clean_if_agrees

            refit = clean_if_agrees(refit, torch.from_numpy(data["probs"]).to(refit.dtype), trainer.given_labels)
        np.testing.assert_allclose(refit.numpy(), data["clean_prob"], atol=1e-6)
        # States agree with p_G: clean labels have p_G > 0.5, the others not.
        is_clean = data["state"] == int(LabelState.CLEAN)
        assert (data["clean_prob"][is_clean] > 0.5).all() and not (data["clean_prob"][~is_clean] > 0.5).any()
        # Each fitted group's threshold is where its p_G crosses 0.5.
        z, shift, scale = data["gmm_threshold"], data["gmm_shift"], data["gmm_scale"]
        assert np.isnan(z[data["gmm_fallback"]]).all()
        np.testing.assert_allclose(data["gmm_threshold_loss"], shift + scale * z)
        gmm.load_state_dict(snap["gmm_state"])
        for pol, k in zip(*np.nonzero(np.isfinite(z))):
            x = torch.zeros(2, z.shape[1], dtype=torch.float64)
            x[:, k] = torch.tensor([shift[pol, k] + scale[pol, k] * (z[pol, k] - 1e-3),
                                    shift[pol, k] + scale[pol, k] * (z[pol, k] + 1e-3)])
            p = gmm.predict_clean_probability(x, torch.full_like(x, float(pol)))[:, k]
            assert abs(float(p.mean()) - 0.5) < 0.05 and (p[0] - 0.5) * (p[1] - 0.5) <= 0, (pol, k, p)
        # The correct / wrong split is given vs clean labels, per polarity, in the GMM's space.
        split = diagnostics.loss_split(data)
        assert split["space"] == "normalised"
        for pol in (1, 0):
            part = split["polarity"][pol]
            mask = given == pol
            assert part["x"].size == mask.sum()
            assert int((~part["correct"]).sum()) == int((mask & (given != clean)).sum())
            assert part["x"].min() >= -1e-6 and part["x"].max() <= 1 + 1e-6
            assert (part["selected"] == (data["clean_prob"][mask] > 0.5)).all()
    # The per-epoch figures come from metrics.jsonl, which has them.
    rows = diagnostics.read_metrics(trainer.run_dir)
    for key in ("clean_precision", "clean_recall", "lm_clean_fraction", "lm_relabeled_fraction",
                "lm_ambiguous_fraction", "lm_sampler_max_over_min", "lm_sampler_ess_fraction"):
        assert all(key in r for r in rows), key


def test_one_epoch_snapshot_is_both_stages_and_option_turns_it_off(tmp_path):
    cfg = load_config(None, tiny(data_root=str(tmp_path / "data"), output_dir=str(tmp_path), run_name="one",
                                 epochs=1, warmup_epochs=1, max_steps_per_epoch=2))
    Trainer(cfg).fit()
    data = diagnostics.load_label_diagnostics(tmp_path / "one" / "label_diagnostics" / "epoch_001.npz")
    assert list(data["stages"]) == ["warmup_end", "last"]
    cfg = load_config(None, tiny(data_root=str(tmp_path / "data"), output_dir=str(tmp_path), run_name="off",
                                 epochs=1, warmup_epochs=1, max_steps_per_epoch=2, label_diagnostics=False))
    Trainer(cfg).fit()
    assert not (tmp_path / "off" / "label_diagnostics").exists()


def _fake_snapshot(epoch: int, stages: list[str], seed: int = 0) -> dict:
    """Hand-made arrays shaped like a trainer snapshot: wrong labels have larger losses."""
    g = torch.Generator().manual_seed(seed)
    n, k = 300, 4
    clean = (torch.rand(n, k, generator=g) < 0.3).to(torch.uint8)
    flip = torch.rand(n, k, generator=g) < 0.2
    given = torch.where(flip, 1 - clean, clean)
    losses = torch.where(flip, 1.5 + 0.4 * torch.randn(n, k, generator=g), 0.3 * torch.rand(n, k, generator=g)).abs()
    gmm = LabelGMM()
    p = gmm.fit_predict_clean_probability(losses, given)
    z = gmm.decision_thresholds().numpy()
    return dict(
        losses=losses.numpy(), clean_prob=p.numpy(), given_labels=given.numpy(), clean_labels=clean.numpy(),
        state=np.where(p.numpy() > 0.5, 0, 2).astype(np.int8), seen=np.ones(n, bool),
        gmm_shift=gmm.shift_.numpy(), gmm_scale=gmm.scale_.numpy(), gmm_threshold=z,
        gmm_threshold_loss=gmm.shift_.numpy() + gmm.scale_.numpy() * z, gmm_fallback=gmm.fallback_.numpy(),
        gmm_normalize=np.array("minmax"), epoch=np.int64(epoch), stages=np.array(stages),
        noise=np.array("random_flip"), noise_rate=np.float64(0.2), run_name=np.array("hand-made"),
    )


def _fake_rows(epochs: int = 4) -> list[dict]:
    return [dict(epoch=e, clean_precision=0.8 + 0.02 * e, clean_recall=0.5 + 0.1 * e, relabel_accuracy=0.6,
                 lm_clean_fraction=0.5 + 0.1 * e, lm_relabeled_fraction=0.02 * e, lm_ambiguous_fraction=0.5 - 0.12 * e,
                 lm_applied=e >= 2, lm_sampler_max_over_min=2.0 + e, lm_sampler_ess_fraction=0.9 - 0.05 * e)
            for e in range(1, epochs + 1)]


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_mpl
def test_plots_write_pngs_from_hand_made_arrays(tmp_path):
    snaps = [_fake_snapshot(2, ["warmup_end"]), _fake_snapshot(6, ["last"], seed=1)]
    assert _is_png(diagnostics.plot_loss_distributions(snaps, tmp_path / "loss.png"))
    npz = tmp_path / "snap.npz"
    np.savez(npz, **snaps[0])
    assert _is_png(diagnostics.plot_loss_distributions(npz, tmp_path / "loss1.png"))
    assert _is_png(diagnostics.plot_label_management(_fake_rows(), tmp_path / "lm.png"))
    assert _is_png(diagnostics.plot_sampler_spread(_fake_rows(), tmp_path / "sampler.png"))
    # The wrong labels of the hand-made set are mostly flagged.
    summary = diagnostics.selection_summary(snaps[1])
    assert summary["positive"]["wrong_kept"] < 0.2 and summary["negative"]["correct_kept"] > 0.8


def _fake_run(run_dir: Path) -> Path:
    (run_dir / "label_diagnostics").mkdir(parents=True)
    np.savez(run_dir / "label_diagnostics" / "epoch_002.npz", **_fake_snapshot(2, ["warmup_end"]))
    np.savez(run_dir / "label_diagnostics" / "epoch_004.npz", **_fake_snapshot(4, ["last"], seed=1))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _fake_rows()))
    (run_dir / "summary.json").write_text("{}")
    return run_dir


@needs_mpl
def test_cli_writes_the_three_figures_of_a_run_folder(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    assert diagnostics.main([str(run), "--out", str(tmp_path / "figs")]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["label_management.png", "loss_distributions.png", "sampler_spread.png"]
    assert all(_is_png(tmp_path / "figs" / n) for n in names)
    assert diagnostics.main([str(tmp_path / "empty")]) == 1


@needs_mpl
def test_report_links_diagnostics_only_when_a_snapshot_exists(tmp_path):
    from balancemix_timm.benchmark import diagnostics_runs, report

    out = tmp_path / "bench"
    _fake_run(out / "runs" / "balancemix-mislabel40-s0")
    (out / "runs" / "balancemix-flip40-s0").mkdir(parents=True)  # finished-looking, no snapshot
    (out / "runs" / "balancemix-flip40-s0" / "summary.json").write_text("{}")
    runs = diagnostics_runs(out, 0)
    assert list(runs) == ["mislabel40"]
    lines = report._diagnostics(runs, tmp_path / "rep")
    text = "\n".join(lines)
    assert lines[0] == "## Diagnostics" and "wrong positive labels" in text
    for name in ("loss_distributions", "label_management", "sampler_spread"):
        assert f"](diagnostics_mislabel40_{name}.png)" in text
        assert _is_png(tmp_path / "rep" / f"diagnostics_mislabel40_{name}.png")
    assert report._diagnostics({}, tmp_path / "rep") == []
    assert diagnostics_runs(tmp_path / "nothing", 0) == {}


def _pairwise_auc(wrong_losses, right_losses):
    """AUC by counting pairs: P(loss of a wrong label > loss of a correct one), ties 1/2."""
    total = 0.0
    for w in wrong_losses:
        for r in right_losses:
            total += 1.0 if w > r else 0.5 if w == r else 0.0
    return total / (len(wrong_losses) * len(right_losses))


def test_wrong_label_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    n, k = 60, 3
    clean = rng.random((n, k)) < 0.3
    given = clean ^ (rng.random((n, k)) < 0.25)
    losses = np.round(rng.random((n, k)) + 0.8 * (given != clean), 1)  # ties on purpose
    seen = np.ones(n, bool)
    seen[:5] = False
    got = wrong_label_auc(dict(losses=losses, given_labels=given, clean_labels=clean, seen=seen))
    for polarity, name in ((True, "positive"), (False, "negative")):
        expected = []
        for c in range(k):
            m = seen & (given[:, c] == polarity)
            wrong = losses[m, c][given[m, c] != clean[m, c]]
            right = losses[m, c][given[m, c] == clean[m, c]]
            expected.append(_pairwise_auc(wrong, right) if len(wrong) >= 2 and len(right) >= 2 else np.nan)
        assert np.allclose(got[name]["per_class"], expected, equal_nan=True)
        assert got[name]["mean"] == pytest.approx(np.nanmean(expected))
        assert got[name]["n_classes"] == int(np.isfinite(expected).sum())


def test_wrong_label_auc_without_wrong_labels_is_nan():
    labels = np.eye(4, dtype=bool)
    got = wrong_label_auc(dict(losses=np.zeros((4, 4)), given_labels=labels, clean_labels=labels))
    assert got["positive"]["n_classes"] == 0 and np.isnan(got["positive"]["mean"])


def test_benchmark_collects_the_selection_by_polarity_and_reports_it(tmp_path):
    from balancemix_timm.benchmark.collect import gmm_input_auc
    from balancemix_timm.benchmark.report_selection import label_decision_section

    run = _fake_run(tmp_path / "runs" / "balancemix-flip20-s0")
    runs = {run.name: dict(method="balancemix", setting="flip20", ablation=None, variant=None)}
    got = gmm_input_auc(tmp_path, runs, settings=("flip20",))["flip20"]
    assert set(got) == {"warmup_end", "last"} and got["last"]["epoch"] == 4
    snap = _fake_snapshot(4, ["last"], seed=1)
    summary, auc = diagnostics.selection_summary(snap), wrong_label_auc(snap)
    for polarity in ("positive", "negative"):
        assert got["last"][polarity]["mean"] == pytest.approx(auc[polarity]["mean"])
        for what in ("wrong_kept", "correct_kept"):
            assert got["last"][f"{polarity}_{what}"]["mean"] == pytest.approx(100 * summary[polarity][what])
    lines = label_decision_section({"flip20": got})
    row = next(line for line in lines if line.startswith("| Rand. flip 20% | end of training (epoch 4)"))
    assert f"{100 * summary['negative']['wrong_kept']:.1f}" in row
    assert label_decision_section({}) == []


def test_relabel_summary_counts_each_direction_against_the_true_labels():
    from balancemix_timm.diagnostics_readers import relabel_summary

    given = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.uint8)
    clean = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], np.uint8)
    state = np.array([[0, 1, 1], [1, 1, 0], [2, 0, 1]], np.int8)  # 1 = re-labeled
    refined = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1]], np.uint8)
    probs = np.array([[0.9, 0.99, 0.98], [0.01, 0.02, 0.3], [0.6, 0.7, 0.97]], np.float32)
    got = relabel_summary(dict(losses=np.zeros((3, 3)), given_labels=given, clean_labels=clean, state=state,
                               refined_labels=refined, probs=probs, seen=np.array([True, True, True])))
    # To 1: (0,1) right, (0,2) wrong, (2,2) right; to 0: (1,0) right, (1,1) right.
    assert (got["to_one"], got["to_zero"]) == (3.0, 2.0)
    assert got["to_one_accuracy"] == pytest.approx(2 / 3) and got["to_zero_accuracy"] == 1.0
    true_positive_probs = [0.9, 0.99, 0.6, 0.7, 0.97]
    assert got["positive_prob_median"] == pytest.approx(np.median(true_positive_probs))
    assert got["positive_prob_p90"] == pytest.approx(np.quantile(true_positive_probs, 0.9))
