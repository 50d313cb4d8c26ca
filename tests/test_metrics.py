"""Tests of balancemix_timm.metrics: AP/mAP, class groups, Eq. 12 and Eq. 13 of BalanceMix."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from balancemix_timm.metrics import (
    average_precision,
    class_groups,
    group_mean_average_precision,
    label_precision_recall,
    mean_average_precision,
    relabel_statistics,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sk_ap(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    return np.array(
        [
            average_precision_score(targets[:, k].numpy(), scores[:, k].numpy())
            for k in range(scores.shape[1])
        ]
    )


def _random_case(n: int, k: int, seed: int, *, levels: int | None) -> tuple[torch.Tensor, ...]:
    g = _gen(seed)
    if levels is None:
        scores = torch.randn(n, k, generator=g, dtype=torch.float64)
    else:  # few distinct values -> many ties
        scores = torch.randint(0, levels, (n, k), generator=g).double() / levels
    prevalence = torch.rand(k, generator=g) * 0.5 + 0.02
    targets = (torch.rand(n, k, generator=g) < prevalence).float()
    targets[0] = 1.0  # at least one positive per class
    # make the scores informative for a part of the classes
    scores = scores + 0.5 * targets * (torch.arange(k) % 2).double()
    if levels is not None:
        scores = torch.round(scores * levels) / levels
    return scores, targets


# --------------------------------------------------------------------------------------------
# average precision vs scikit-learn and hand-worked values
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [None, 2, 5, 20])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn(levels, seed):
    scores, targets = _random_case(400, 12, seed, levels=levels)
    ap = average_precision(scores, targets)
    assert ap.dtype == torch.float64 and ap.shape == (12,)
    np.testing.assert_allclose(ap.numpy(), _sk_ap(scores, targets), rtol=0, atol=1e-12)


def test_average_precision_float32_and_int_inputs_match_sklearn():
    scores, targets = _random_case(300, 7, 5, levels=8)
    s32 = scores.float()
    expected = _sk_ap(s32.double(), targets)
    np.testing.assert_allclose(
        average_precision(s32, targets.bool()).numpy(), expected, rtol=0, atol=1e-12
    )
    s_int = (scores * 8).round().long()
    np.testing.assert_allclose(
        average_precision(s_int, targets.long()).numpy(), _sk_ap(s_int.double(), targets),
        rtol=0, atol=1e-12,
    )


@pytest.mark.parametrize(
    "scores, targets, expected",
    [
        # ranks: P@1 = 1 (R 1/2), P@3 = 2/3 (R 1) -> 1/2 + 1/3
        ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 1 / 2 * 1 + 1 / 2 * 2 / 3),
        # tie group {0.5, 0.5}: P = 1/2, R = 1/2; then P = 2/3, R = 1 -> 1/4 + 1/3
        ([0.5, 0.5, 0.2], [1, 0, 1], 1 / 4 + 1 / 3),
        # all tied: one threshold, AP = prevalence
        ([0.3, 0.3, 0.3, 0.3], [0, 1, 0, 0], 1 / 4),
        # perfect ranking
        ([0.1, 0.9, 0.8, 0.2], [0, 1, 1, 0], 1.0),
        # worst ranking: positives last -> P = 1/3 at R = 1/2, P = 2/4 at R = 1
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 1 / 2 * 1 / 3 + 1 / 2 * 2 / 4),
        # every sample positive
        ([0.2, 0.4, 0.1], [1, 1, 1], 1.0),
    ],
)
def test_average_precision_hand_worked(scores, targets, expected):
    s = torch.tensor(scores, dtype=torch.float64).unsqueeze(1)
    y = torch.tensor(targets, dtype=torch.float64).unsqueeze(1)
    ap = average_precision(s, y)
    assert float(ap[0]) == pytest.approx(expected, abs=1e-15)
    assert float(ap[0]) == pytest.approx(
        average_precision_score(y[:, 0].numpy(), s[:, 0].numpy()), abs=1e-15
    )


def test_average_precision_order_invariance():
    scores, targets = _random_case(200, 5, 7, levels=4)
    perm = torch.randperm(200, generator=_gen(8))
    a = average_precision(scores, targets)
    b = average_precision(scores[perm], targets[perm])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_nan_for_class_without_positive_and_map_excludes_it(caplog):
    scores, targets = _random_case(300, 6, 9, levels=10)
    targets[:, 2] = 0.0
    targets[:, 4] = 0.0
    ap = average_precision(scores, targets)
    assert math.isnan(float(ap[2])) and math.isnan(float(ap[4]))
    keep = [0, 1, 3, 5]
    sk = _sk_ap(scores[:, keep], targets[:, keep])
    np.testing.assert_allclose(ap[keep].numpy(), sk, rtol=0, atol=1e-12)
    with caplog.at_level(logging.WARNING, logger="balancemix_timm.metrics"):
        m = mean_average_precision(scores, targets)
    assert m == pytest.approx(100.0 * sk.mean(), abs=1e-10)
    assert "2 of 6 classes" in caplog.text


def test_mean_average_precision_matches_sklearn_macro_and_all_nan():
    scores, targets = _random_case(500, 9, 10, levels=None)
    expected = 100.0 * average_precision_score(targets.numpy(), scores.numpy(), average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-10)
    assert math.isnan(mean_average_precision(scores, torch.zeros_like(targets)))
    assert math.isnan(mean_average_precision(torch.zeros(0, 3), torch.zeros(0, 3)))


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (torch.rand(5, 3), torch.ones(5, 4), "same shape"),
        (torch.rand(5), torch.ones(5), "scores must have 2"),
        (torch.tensor([[0.1], [float("nan")]]), torch.ones(2, 1), "scores"),
        (torch.tensor([[0.1], [float("inf")]]), torch.ones(2, 1), "scores"),
        (torch.rand(4, 2), torch.full((4, 2), 0.5), "targets"),
        (np.ones((4, 2)), torch.ones(4, 2), "scores"),
        (torch.ones(4, 2, dtype=torch.bool), torch.ones(4, 2), "scores"),
    ],
)
def test_average_precision_validation(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        average_precision(scores, targets)


# --------------------------------------------------------------------------------------------
# class groups
# --------------------------------------------------------------------------------------------
def test_class_groups_boundaries():
    counts = torch.tensor([10001, 10000, 1000, 999, 0, 5000, 20000])
    g = class_groups(counts)
    assert g["many"].tolist() == [0, 6]
    assert g["medium"].tolist() == [1, 2, 5]
    assert g["few"].tolist() == [3, 4]
    assert all(v.dtype == torch.int64 for v in g.values())
    g2 = class_groups(torch.tensor([5.0, 10.0, 50.0, 51.0]), many=50, few=10)
    assert (g2["many"].tolist(), g2["medium"].tolist(), g2["few"].tolist()) == ([3], [1, 2], [0])


@pytest.mark.parametrize(
    "counts, kwargs, match",
    [
        (torch.tensor([1, 2]), {"many": 10, "few": 10}, "many"),
        (torch.tensor([1, 2]), {"many": 5, "few": 10}, "many"),
        (torch.tensor([1, -2]), {}, "positive_counts"),
        (torch.ones(2, 2), {}, "positive_counts"),
        (torch.tensor([1.0, float("nan")]), {}, "positive_counts"),
        ([1, 2], {}, "positive_counts"),
    ],
)
def test_class_groups_validation(counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_groups(counts, **kwargs)


@pytest.mark.parametrize(
    "num_train, expected",
    [(82081, (10000, 1000)), (3000, (365, 37)), (5011, (610, 61)), (160, (19, 2)), (10, (2, 1))],
)
def test_scaled_group_thresholds_scale_coco_to_any_size(num_train, expected):
    from balancemix_timm.metrics import scaled_group_thresholds

    assert scaled_group_thresholds(num_train) == expected
    many, few = expected
    assert many > few >= 1


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "3000"])
def test_scaled_group_thresholds_rejects_bad_sizes(bad):
    from balancemix_timm.metrics import scaled_group_thresholds

    with pytest.raises(ValueError, match="num_train"):
        scaled_group_thresholds(bad)


def test_group_absence_reasons_name_the_empty_groups_and_the_rule():
    from balancemix_timm.metrics import group_absence_reasons

    counts = torch.tensor([40, 120, 300])  # a 3,000-image set with COCO's unscaled thresholds
    groups = class_groups(counts, many=10000, few=1000)
    reasons = group_absence_reasons(groups, many=10000, few=1000)
    assert reasons == {
        "many": "no class has > 10000 positives",
        "medium": "no class has 1000-10000 positives",
    }
    assert group_absence_reasons(class_groups(counts, many=200, few=50), many=200, few=50) == {}


def test_group_mean_average_precision_against_sklearn():
    scores, targets = _random_case(600, 10, 11, levels=None)
    targets[:, 9] = 0.0  # no positive: excluded everywhere
    groups = {
        "many": torch.tensor([0, 3, 9]),
        "medium": torch.tensor([1, 2, 4, 5]),
        "few": torch.tensor([6, 7, 8]),
        "empty": torch.tensor([], dtype=torch.long),
        "none_valid": torch.tensor([9]),
        "mask": torch.tensor([True, True] + [False] * 8),
    }
    out = group_mean_average_precision(scores, targets, groups)
    sk = _sk_ap(scores[:, :9], targets[:, :9])
    assert out["all"] == pytest.approx(100 * sk.mean(), abs=1e-10)
    assert out["many"] == pytest.approx(100 * sk[[0, 3]].mean(), abs=1e-10)
    assert out["medium"] == pytest.approx(100 * sk[[1, 2, 4, 5]].mean(), abs=1e-10)
    assert out["few"] == pytest.approx(100 * sk[[6, 7, 8]].mean(), abs=1e-10)
    assert out["mask"] == pytest.approx(100 * sk[[0, 1]].mean(), abs=1e-10)
    assert math.isnan(out["empty"]) and math.isnan(out["none_valid"])
    # groups from class_groups on counts
    counts = targets.sum(0) * 100
    out2 = group_mean_average_precision(scores, targets, class_groups(counts))
    assert set(out2) == {"all", "many", "medium", "few"}


def test_group_mean_average_precision_validation():
    scores, targets = _random_case(50, 4, 12, levels=None)
    with pytest.raises(ValueError, match="outside"):
        group_mean_average_precision(scores, targets, {"g": torch.tensor([4])})
    with pytest.raises(ValueError, match="integer"):
        group_mean_average_precision(scores, targets, {"g": torch.tensor([0.0])})
    with pytest.raises(ValueError, match="mask"):
        group_mean_average_precision(scores, targets, {"g": torch.tensor([True, False])})
    with pytest.raises(ValueError, match="all"):
        group_mean_average_precision(scores, targets, {"all": torch.tensor([0])})


# --------------------------------------------------------------------------------------------
# Eq. 12 and Eq. 13 against brute-force loops
# --------------------------------------------------------------------------------------------
def _brute_precision_recall(sel, noisy, true):
    hit = n_sel = n_correct = 0
    for s_row, n_row, t_row in zip(sel.tolist(), noisy.tolist(), true.tolist()):
        for s, a, b in zip(s_row, n_row, t_row):
            if a == b:
                n_correct += 1
            if s:
                n_sel += 1
                if a == b:
                    hit += 1
    return hit / n_sel, hit / n_correct


def _brute_relabel(rel, refined, true):
    n_r = hit = total = 0
    for r_row, f_row, t_row in zip(rel.tolist(), refined.tolist(), true.tolist()):
        for r, a, b in zip(r_row, f_row, t_row):
            total += 1
            if r:
                n_r += 1
                if a == b:
                    hit += 1
    return n_r / total, hit / n_r


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_precision_recall_brute_force(seed):
    g = _gen(seed)
    true = (torch.rand(150, 7, generator=g) < 0.3).float()
    flip = torch.rand(150, 7, generator=g) < 0.2
    noisy = torch.where(flip, 1 - true, true)
    # selection correlated with correctness but imperfect
    selected = torch.rand(150, 7, generator=g) < torch.where(flip, 0.3, 0.8)
    p, r = label_precision_recall(selected, noisy.long(), true.bool())
    bp, br = _brute_precision_recall(selected, noisy, true)
    assert p == pytest.approx(bp, abs=1e-15) and r == pytest.approx(br, abs=1e-15)


def test_label_precision_recall_hand_worked_and_empty():
    true = torch.tensor([[1, 0, 1, 0]])
    noisy = torch.tensor([[1, 1, 0, 0]])  # correct: labels 0 and 3
    sel = torch.tensor([[1, 1, 0, 0]])  # selected: 0 (correct), 1 (wrong)
    assert label_precision_recall(sel, noisy, true) == (0.5, 0.5)
    p, r = label_precision_recall(torch.zeros(1, 4), noisy, true)
    assert math.isnan(p) and r == 0.0
    p, r = label_precision_recall(sel, 1 - true, true)  # nothing correct
    assert p == 0.0 and math.isnan(r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relabel_statistics_brute_force(seed):
    g = _gen(seed)
    true = (torch.rand(120, 9, generator=g) < 0.3).float()
    refined = torch.where(torch.rand(120, 9, generator=g) < 0.15, 1 - true, true)
    relabeled = torch.rand(120, 9, generator=g) < 0.25
    prop, acc = relabel_statistics(relabeled.to(torch.int8), refined, true)
    bp, ba = _brute_relabel(relabeled, refined, true)
    assert prop == pytest.approx(bp, abs=1e-15) and acc == pytest.approx(ba, abs=1e-15)


def test_relabel_statistics_hand_worked_and_empty():
    true = torch.tensor([[1, 0], [0, 1]])
    refined = torch.tensor([[1, 1], [0, 1]])
    rel = torch.tensor([[1, 1], [0, 0]])  # 2 of 4 re-labeled, one right
    assert relabel_statistics(rel, refined, true) == (0.5, 0.5)
    prop, acc = relabel_statistics(torch.zeros(2, 2), refined, true)
    assert prop == 0.0 and math.isnan(acc)
    prop, acc = relabel_statistics(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2))
    assert math.isnan(prop) and math.isnan(acc)


@pytest.mark.parametrize("fn", [label_precision_recall, relabel_statistics])
def test_eq12_eq13_validation(fn):
    ok = torch.ones(3, 2)
    with pytest.raises(ValueError, match="same shape"):
        fn(ok, ok, torch.ones(3, 3))
    with pytest.raises(ValueError, match="binary"):
        fn(ok, torch.full((3, 2), 0.5), ok)
    with pytest.raises(ValueError, match="torch.Tensor"):
        fn(ok.tolist(), ok, ok)


def test_average_precision_ignore_mask_is_the_voc_protocol():
    # Image 1 holds the class only as a difficult object and is scored highest: counted as a
    # negative it halves the AP; the VOC protocol leaves it out (AP 1).
    scores = torch.tensor([[0.8], [0.9], [0.1], [0.2]])
    targets = torch.tensor([[1], [0], [0], [0]])
    ignore = torch.tensor([[False], [True], [False], [False]])
    assert float(average_precision(scores, targets)[0]) == pytest.approx(0.5)
    assert float(average_precision(scores, targets, ignore)[0]) == pytest.approx(1.0)
    assert mean_average_precision(scores, targets, ignore) == pytest.approx(100.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_ignore_matches_sklearn_on_kept_rows(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (40, 3), generator=g).double()   # ties included
    targets = torch.randint(0, 2, (40, 3), generator=g)
    ignore = torch.rand(40, 3, generator=g) < 0.3
    ap = average_precision(scores, targets, ignore)
    for k in range(3):
        keep = ~ignore[:, k].numpy()
        want = average_precision_score(targets[keep, k].numpy(), scores[keep, k].numpy())
        assert float(ap[k]) == pytest.approx(want, abs=1e-12)


def test_average_precision_ignore_validation():
    scores, targets = torch.rand(4, 2), torch.ones(4, 2)
    with pytest.raises(ValueError, match="ignore"):
        average_precision(scores, targets, torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="ignore"):
        average_precision(scores, targets, torch.full((4, 2), 0.5))
