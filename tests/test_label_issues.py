"""Label-issue API on hand-made engine states, every source type, a tiny run, bad input.

The hand-made state (8 images, 3 classes, eps 0.9) plants one surely wrong label, two
ambiguous ones, one label re-labeled to its own value, and one image never recorded; the
expected flags, scores and rankings below are computed by hand from the documented formulas.
"""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch

import balancemix_timm as bmt
from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.label_issues import (
    FILTER_BY,
    SCORE_METHODS,
    LabelIssueState,
    describe_label_issues,
    find_label_issues,
    label_quality_scores,
    load_label_state,
)
from balancemix_timm.models.checkpoints import TRAIN_CHECKPOINT_FORMAT
from balancemix_timm.refine import LabelState

C, R, U = int(LabelState.CLEAN), int(LabelState.RELABELED), int(LabelState.AMBIGUOUS)
WRONG = (2, 1)  # given 1, views 0.02, p_G 0.01: re-labeled to 0
CLEAN = (0, 0)
UNSEEN = 4


def _engine() -> BalanceMixEngine:
    """An engine refreshed once, whose tables are then overwritten by hand."""
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(8, 3, generator=g) < 0.5).to(torch.uint8)
    labels[:, 0] = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    labels[WRONG] = 1
    labels[3, 2], labels[5, 0], labels[6, 2], labels[7, 1] = 1, 0, 1, 0
    eng = BalanceMixEngine(labels, eps=0.9, warmup_epochs=0, seed=0)
    eng.set_epoch(0)
    probs = torch.where(labels == 1, 0.8, 0.1).float()
    eng.record(torch.arange(8), probs)
    eng.refresh()  # history, GMM; everything below is replaced by hand
    clean_prob = torch.full((8, 3), 0.9)
    state = torch.full((8, 3), C, dtype=torch.int8)
    refined = labels.clone()
    for (n, k), p, pg, s, ref in [
        (WRONG, 0.02, 0.01, R, 0),  # surely wrong: re-labeled to 0
        ((3, 2), 0.95, 0.40, R, 1),  # re-labeled to its own value: confirmed, not an issue
        ((5, 0), 0.45, 0.30, U, 0),  # ambiguous, views lean to the given 0
        ((6, 2), 0.30, 0.20, U, 1),  # ambiguous, views lean against the given 1
        ((7, 1), 0.75, 0.45, U, 0),  # ambiguous, views lean against the given 0
    ]:
        probs[n, k], clean_prob[n, k], state[n, k], refined[n, k] = p, pg, s, ref
    probs[UNSEEN] = 0.5
    clean_prob[UNSEEN] = 1.0
    eng.probs, eng.clean_prob, eng.state, eng.refined_labels = probs, clean_prob, state, refined
    eng.seen[UNSEEN] = False
    return eng


@pytest.fixture()
def engine() -> BalanceMixEngine:
    return _engine()


# ---------------------------------------------------------------------------- scores
def test_scores_follow_the_documented_formulas(engine):
    given = engine.given_labels.numpy().astype(bool)
    p = engine.probs.numpy().astype(np.float64)
    pg = engine.clean_prob.numpy().astype(np.float64)
    sc = np.where(given, p, 1 - p)
    expected = {"self_confidence": sc, "clean_probability": pg, "balancemix": pg + (1 - pg) * sc}
    for method in SCORE_METHODS:
        s = label_quality_scores(engine, method=method)
        assert s.shape == (8, 3) and s.dtype == np.float64, method
        assert ((s >= 0) & (s <= 1)).all(), method
        seen = np.arange(8) != UNSEEN
        np.testing.assert_allclose(s[seen], expected[method][seen], rtol=1e-6, err_msg=method)
        assert (s[UNSEEN] == 1.0).all(), method  # no view probability: no evidence against
    # By hand: (6, 2) has p_G 0.2, views 0.3 on a given 1.
    assert label_quality_scores(engine)[6, 2] == pytest.approx(0.2 + 0.8 * 0.3)
    assert label_quality_scores(engine, method="self_confidence")[7, 1] == pytest.approx(0.25)


def test_default_method_is_balancemix(engine):
    np.testing.assert_array_equal(label_quality_scores(engine), label_quality_scores(engine, method="balancemix"))


@pytest.mark.parametrize("method", SCORE_METHODS)
def test_wrong_label_scores_lowest_and_clean_one_high(engine, method):
    s = label_quality_scores(engine, method=method)
    assert np.unravel_index(np.argmin(s), s.shape) == WRONG
    assert s[CLEAN] > 0.5


# ---------------------------------------------------------------------------- issues
def test_label_state_filter_flags_the_engine_decisions(engine):
    mask = find_label_issues(engine)
    assert mask.shape == (8, 3) and mask.dtype == bool
    assert set(zip(*np.nonzero(mask))) == {WRONG, (5, 0), (6, 2), (7, 1)}
    assert not mask[CLEAN] and not mask[3, 2]  # clean; re-labeled to its own value


def test_each_filter(engine):
    flagged = {f: set(zip(*np.nonzero(find_label_issues(engine, filter_by=f)))) for f in FILTER_BY}
    assert flagged["relabeled"] == {WRONG}
    # balancemix scores: WRONG 0.0298, (6,2) 0.44, (7,1) 0.5875, (5,0) 0.685; clean ones >= 0.9.
    assert flagged["threshold"] == {WRONG, (6, 2)}
    assert flagged["both"] == {WRONG, (6, 2)}
    assert set(zip(*np.nonzero(find_label_issues(engine, filter_by="threshold", threshold=0.6)))) == {
        WRONG, (6, 2), (7, 1)}
    by_self = find_label_issues(engine, filter_by="threshold", score_method="self_confidence", threshold=0.5)
    assert set(zip(*np.nonzero(by_self))) == {WRONG, (6, 2), (7, 1)}  # sc 0.02, 0.3, 0.25


@pytest.mark.parametrize(
    "ranked_by, order",
    [
        ("balancemix", [WRONG, (6, 2), (7, 1), (5, 0)]),
        ("clean_probability", [WRONG, (6, 2), (5, 0), (7, 1)]),
        ("self_confidence", [WRONG, (7, 1), (6, 2), (5, 0)]),
    ],
)
def test_ranked_pairs_most_likely_wrong_first(engine, ranked_by, order):
    pairs = find_label_issues(engine, return_indices_ranked_by=ranked_by)
    assert pairs.shape == (4, 2) and pairs.dtype == np.int64
    assert [tuple(map(int, r)) for r in pairs] == order


@pytest.mark.parametrize("filter_by", FILTER_BY)
def test_mask_and_ranked_pairs_agree(engine, filter_by):
    mask = find_label_issues(engine, filter_by=filter_by)
    pairs = find_label_issues(engine, filter_by=filter_by, return_indices_ranked_by="balancemix")
    assert len(pairs) == mask.sum()
    assert mask[pairs[:, 0], pairs[:, 1]].all()
    scores = label_quality_scores(engine)[pairs[:, 0], pairs[:, 1]]
    assert (np.diff(scores) >= 0).all()


def test_describe_gives_given_and_suggested_labels(engine):
    d = describe_label_issues(engine)
    assert list(zip(d["image_index"].tolist(), d["class_index"].tolist())) == [WRONG, (6, 2), (7, 1), (5, 0)]
    assert d["given"].tolist() == [1, 1, 0, 0]
    assert d["suggested"].tolist() == [0, 0, 1, 0]  # refined, then the model's vote (f(x) > 0.5)
    assert d["state"].tolist() == [R, U, U, U]
    assert set(d) == {"image_index", "class_index", "given", "suggested", "state", "clean_prob", "pred_prob",
                      "view_mean", "quality"}
    assert all(len(v) == 4 for v in d.values())
    one = describe_label_issues(engine, np.array([[3, 2]]))
    assert one["suggested"].tolist() == [1] and one["given"].tolist() == [1]


def test_unseen_images_are_never_flagged(engine):
    for f in FILTER_BY:
        assert not find_label_issues(engine, filter_by=f, threshold=1.0)[UNSEEN].any(), f


# ---------------------------------------------------------------------------- sources
def _answers(source):
    return (
        find_label_issues(source),
        find_label_issues(source, return_indices_ranked_by="balancemix"),
        label_quality_scores(source),
    )


def test_every_source_type_gives_the_same_answer(engine, tmp_path):
    from balancemix_timm.integrations.ml_decoder import BalanceMixPlugin

    ref = _answers(engine)
    sd = engine.state_dict()
    # A balancemix-train checkpoint (the trainer's format) in a run folder.
    run = tmp_path / "run"
    run.mkdir()
    torch.save(dict(format=TRAIN_CHECKPOINT_FORMAT, method=dict(epoch=1, engine=sd),
                    rng=dict(numpy=np.random.get_state())), run / "last.pth")
    # An ML-Decoder plugin checkpoint, written by the plugin itself.
    plugin = BalanceMixPlugin(list(range(8)), labels=engine.given_labels, eps=0.9, warmup_epochs=0,
                              label_source="epoch_pass", device="cpu")
    plugin.engine.load_state_dict(sd)
    mld = tmp_path / "mld"
    mld.mkdir()
    written = plugin.save_checkpoint(0, 1.0, mld / "balancemix-last.pth")
    sources = {
        "state_dict": sd, "LabelIssueState": load_label_state(engine), "run folder": run,
        "last.pth": str(run / "last.pth"), "plugin": plugin, "plugin checkpoint": written,
        "plugin folder": mld, "plugin state": plugin.state_dict(),
    }
    for name, source in sources.items():
        got = _answers(source)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_load_label_state_returns_host_arrays(engine):
    st = load_label_state(engine)
    assert isinstance(st, LabelIssueState) and st.shape == (8, 3) and st.eps == pytest.approx(0.9)
    assert st.given_labels.dtype == np.uint8 and st.states.dtype == np.int8 and st.seen.dtype == bool


class _Opaque:  # pickled as a class reference: not loadable with weights_only=True
    pass


def test_weights_only_is_the_default(engine, tmp_path):
    path = tmp_path / "last.pth"
    torch.save(dict(format=TRAIN_CHECKPOINT_FORMAT, method=dict(engine=engine.state_dict()), extra=_Opaque()), path)
    with pytest.raises(ValueError, match="weights_only"):
        find_label_issues(path)
    st = load_label_state(path, weights_only=False)  # explicitly trusted
    np.testing.assert_array_equal(find_label_issues(st), find_label_issues(engine))


# ---------------------------------------------------------------------------- bad input
def test_bad_sources_name_the_argument(engine, tmp_path):
    with pytest.raises(ValueError, match="source"):
        find_label_issues(42)
    with pytest.raises(ValueError, match="source"):
        label_quality_scores(tmp_path / "missing")
    with pytest.raises(ValueError, match="source.*no checkpoint"):
        find_label_issues(tmp_path)
    fresh = BalanceMixEngine(engine.given_labels)
    with pytest.raises(ValueError, match="source.*never refreshed"):
        find_label_issues(fresh)
    with pytest.raises(ValueError, match="source.*never refreshed"):
        label_quality_scores(fresh.state_dict())
    with pytest.raises(ValueError, match="source.*no BalanceMix engine"):
        find_label_issues(dict(format=TRAIN_CHECKPOINT_FORMAT, config=dict(method="bce"), method=dict(epoch=0)))
    with pytest.raises(ValueError, match="source"):
        find_label_issues(dict(weights=torch.zeros(2)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(return_indices_ranked_by="confidence"), "return_indices_ranked_by"),
        (dict(filter_by="prune_by_noise_rate"), "filter_by"),
        (dict(threshold=1.5), "threshold"),
        (dict(threshold="low"), "threshold"),
        (dict(score_method="entropy"), "score_method"),
    ],
)
def test_bad_options_name_the_argument(engine, kwargs, name):
    with pytest.raises(ValueError, match=name):
        find_label_issues(engine, **kwargs)


def test_bad_method_and_indices(engine):
    with pytest.raises(ValueError, match="method"):
        label_quality_scores(engine, method="normalized_margin")
    with pytest.raises(ValueError, match="indices"):
        describe_label_issues(engine, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="indices"):
        describe_label_issues(engine, np.array([[8, 0]]))


def test_exported_from_the_package():
    for name in ("find_label_issues", "label_quality_scores", "describe_label_issues", "load_label_state",
                 "LabelIssueState"):
        assert name in bmt.__all__ and getattr(bmt, name) is not None


# ---------------------------------------------------------------------------- a real run
def test_tiny_run_folder_engine_and_csv_agree(tmp_path, caplog):
    from balancemix_timm.config import load_config
    from balancemix_timm.trainer import Trainer
    from tests._tiny import tiny

    cfg = load_config(None, dict(tiny(eps=0.6), data_root=str(tmp_path / "demo"), output_dir=str(tmp_path),
                                 run_name="bm"))
    trainer = Trainer(cfg)
    # other tests may quiet these loggers
    with caplog.at_level(logging.INFO, logger="balancemix_timm.trainer"), \
            caplog.at_level(logging.INFO, logger="balancemix_timm.label_issues"):
        trainer.fit()
    live, folder = trainer.method.engine, trainer.run_dir
    for a, b in zip(_answers(live), _answers(folder)):
        np.testing.assert_array_equal(a, b)
    mask = find_label_issues(folder)
    assert 0 < mask.sum() < mask.size
    with (folder / "label_issues.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    ids = list(trainer.train_set.image_ids)
    from_csv = {(ids.index(int(r["image_id"])), int(r["class_index"]))
                for r in rows if r["changed"] == "1" or r["state"] == "ambiguous"}
    assert from_csv == set(zip(*np.nonzero(mask)))
    relabeled = [r for r in rows if r["state"] == "relabeled"]
    assert relabeled, "eps=0.6 re-labels on the tiny set"
    for r in relabeled:  # Eq. 9's agreement: the views' mean (not f(x)) beyond eps
        agreement = float(r["view_mean"]) if r["refined"] == "1" else 1 - float(r["view_mean"])
        assert float(r["confidence"]) == pytest.approx(agreement, abs=2e-4) and agreement > 0.6 - 1e-4
    assert any(r["pred_prob"] != r["view_mean"] for r in rows)  # RandAugment views: another input than f(x)
    scores = label_quality_scores(folder)
    for r in rows[:50]:
        n, k = ids.index(int(r["image_id"])), int(r["class_index"])
        assert float(r["label_quality"]) == pytest.approx(scores[n, k], abs=6e-5)
    assert any("label issues:" in rec.getMessage() for rec in caplog.records)  # logging, not print


def test_the_engine_takes_numpy_labels_as_cleanlab_does():
    from balancemix_timm import BalanceMixEngine

    labels = (np.random.default_rng(0).random((12, 3)) < 0.4).astype(np.uint8)
    engine = BalanceMixEngine(labels, warmup_epochs=0)
    assert torch.equal(engine.given_labels.cpu(), torch.from_numpy(labels))
    with pytest.raises(ValueError, match="labels"):
        BalanceMixEngine(labels.astype(np.float32) * 2)
