"""Tests for balancemix_timm.sampling (Eq. 2-4 of BalanceMix and the epoch-seeded samplers)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from balancemix_timm.sampling import (
    MinoritySampler,
    PairedBatchSampler,
    PairedSampler,
    ShardedRandomSampler,
    class_confidences,
    instance_scores,
    minority_sampling_probs,
    weight_spread,
)

try:  # optional: exact chi-square tail
    from scipy import stats as _stats
except ImportError:  # pragma: no cover
    _stats = None


# --------------------------------------------------------------------------------------------
# Independent reference: plain Python loops over the definition of Eq. 2-4
# --------------------------------------------------------------------------------------------
def brute_force_probs(probs, labels, score="paper", temperature=1.0):
    n, k = len(probs), len(probs[0])
    conf_p, conf_a = [], []
    for c in range(k):
        pos = [probs[i][c] for i in range(n) if labels[i][c] == 1]
        neg = [1.0 - probs[i][c] for i in range(n) if labels[i][c] == 0]
        conf_p.append(sum(pos) / len(pos) if pos else 0.0)  # undefined mean contributes 0
        conf_a.append(sum(neg) / len(neg) if neg else 0.0)
    scores = []
    for i in range(n):
        if score == "paper":
            s = 0.0
            for c in range(k):
                s += conf_p[c] if labels[i][c] == 1 else conf_a[c]
        else:
            pos = [conf_p[c] for c in range(k) if labels[i][c] == 1]
            neg = [conf_a[c] for c in range(k) if labels[i][c] == 0]
            s = sum(pos) / len(pos) if pos else sum(neg) / len(neg)
        scores.append(s)
    inv = [s ** (-temperature) for s in scores]
    total = sum(inv)
    return [v / total for v in inv]


# Hand-made 4 x 3 example.
#   probs                 labels
#   [0.9, 0.2, 0.1]       [1, 0, 0]
#   [0.6, 0.7, 0.3]       [1, 1, 0]
#   [0.2, 0.2, 0.8]       [0, 0, 1]
#   [0.3, 0.5, 0.6]       [0, 1, 1]
# Eq. 2:
#   P(0) = (0.9 + 0.6) / 2 = 0.75     A(0) = ((1-0.2) + (1-0.3)) / 2 = (0.8 + 0.7) / 2 = 0.75
#   P(1) = (0.7 + 0.5) / 2 = 0.60     A(1) = ((1-0.2) + (1-0.2)) / 2 = 0.80
#   P(2) = (0.8 + 0.6) / 2 = 0.70     A(2) = ((1-0.1) + (1-0.3)) / 2 = (0.9 + 0.7) / 2 = 0.80
# Eq. 3:
#   S0 = P0 + A1 + A2 = 0.75 + 0.80 + 0.80 = 2.35
#   S1 = P0 + P1 + A2 = 0.75 + 0.60 + 0.80 = 2.15
#   S2 = A0 + A1 + P2 = 0.75 + 0.80 + 0.70 = 2.25
#   S3 = A0 + P1 + P2 = 0.75 + 0.60 + 0.70 = 2.05
# Eq. 4: p_n = (1/S_n) / sum(1/S) = (100/235, 100/215, 100/225, 100/205) / sum
#   = 79335/339856, 86715/339856, 82861/339856, 90945/339856
#   ~ 0.233437, 0.255152, 0.243812, 0.267599
# Positives-only score: S0 = P0 = 0.75, S1 = (P0 + P1)/2 = 0.675, S2 = P2 = 0.70,
#   S3 = (P1 + P2)/2 = 0.65.
HAND_PROBS = torch.tensor(
    [[0.9, 0.2, 0.1], [0.6, 0.7, 0.3], [0.2, 0.2, 0.8], [0.3, 0.5, 0.6]], dtype=torch.float64
)
HAND_LABELS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])
HAND_P = [Fraction(79335, 339856), Fraction(86715, 339856), Fraction(82861, 339856), Fraction(90945, 339856)]


def test_hand_worked_example() -> None:
    conf_p, conf_a = class_confidences(HAND_PROBS, HAND_LABELS)
    torch.testing.assert_close(conf_p, torch.tensor([0.75, 0.60, 0.70], dtype=torch.float64))
    torch.testing.assert_close(conf_a, torch.tensor([0.75, 0.80, 0.80], dtype=torch.float64))
    torch.testing.assert_close(
        instance_scores(HAND_PROBS, HAND_LABELS), torch.tensor([2.35, 2.15, 2.25, 2.05], dtype=torch.float64)
    )
    p = minority_sampling_probs(HAND_PROBS, HAND_LABELS)
    assert p.dtype == torch.float64 and p.shape == (4,)
    torch.testing.assert_close(p, torch.tensor([float(f) for f in HAND_P], dtype=torch.float64), rtol=0, atol=1e-12)
    assert abs(float(p.sum()) - 1.0) < 1e-12


def test_hand_worked_positive_score_and_label_dtypes() -> None:
    expected_scores = torch.tensor([0.75, 0.675, 0.70, 0.65], dtype=torch.float64)
    for labels in (HAND_LABELS, HAND_LABELS.bool(), HAND_LABELS.float()):
        torch.testing.assert_close(instance_scores(HAND_PROBS, labels, score="positive"), expected_scores)
        inv = 1.0 / expected_scores
        torch.testing.assert_close(minority_sampling_probs(HAND_PROBS, labels, score="positive"), inv / inv.sum())
    # float32 probabilities give the same result up to float32 rounding
    torch.testing.assert_close(
        minority_sampling_probs(HAND_PROBS.float(), HAND_LABELS),
        torch.tensor([float(f) for f in HAND_P], dtype=torch.float64),
        rtol=0, atol=1e-7,
    )


@pytest.mark.parametrize("case", range(8))
@pytest.mark.parametrize("score", ["paper", "positive"])
def test_random_cases_match_brute_force(case: int, score: str) -> None:
    g = torch.Generator().manual_seed(100 + case)
    n = int(torch.randint(1, 30, (1,), generator=g))
    k = int(torch.randint(1, 12, (1,), generator=g))
    probs = torch.rand(n, k, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, k, generator=g) < 0.3).long()
    if case % 2 == 0 and k >= 2:  # a class with no positive and a class with no negative
        labels[:, 0] = 0
        labels[:, 1] = 1
    if case == 3:
        labels[0] = 0  # an image with no positive (fallback of the positive score)
    expected = brute_force_probs(probs.tolist(), labels.tolist(), score)
    got = minority_sampling_probs(probs, labels, score=score)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    for t in (0.5, 2.0, 7.0):
        expected_t = brute_force_probs(probs.tolist(), labels.tolist(), score, temperature=t)
        got_t = minority_sampling_probs(probs, labels, score=score, temperature=t)
        torch.testing.assert_close(got_t, torch.tensor(expected_t, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    assert torch.equal(minority_sampling_probs(probs, labels, score=score, temperature=1.0), got)


def test_undefined_class_contributes_nothing() -> None:
    # Class 1 has no positive (P(1) undefined) and class 2 no negative (A(2) undefined).
    probs = torch.tensor([[0.8, 0.1, 0.5], [0.4, 0.3, 0.9]], dtype=torch.float64)
    labels = torch.tensor([[1, 0, 1], [0, 0, 1]])
    conf_p, conf_a = class_confidences(probs, labels)
    assert math.isnan(float(conf_p[1])) and math.isnan(float(conf_a[2]))
    # P = (0.8, -, 0.7), A = (0.6, 0.8, -): S0 = 0.8 + 0.8 + 0.7 = 2.3, S1 = 0.6 + 0.8 + 0.7 = 2.1
    s = instance_scores(probs, labels)
    torch.testing.assert_close(s, torch.tensor([2.3, 2.1], dtype=torch.float64))
    p = minority_sampling_probs(probs, labels)
    torch.testing.assert_close(p, torch.tensor([2.1 / 4.4, 2.3 / 4.4], dtype=torch.float64))


def test_zero_score_takes_all_mass() -> None:
    # One class; rows 0 and 2 are positives predicted 0 -> P = 0 -> score 0 for them.
    probs = torch.tensor([[0.0], [0.5], [0.0]], dtype=torch.float64)
    labels = torch.tensor([[1], [0], [1]])
    p = minority_sampling_probs(probs, labels)
    torch.testing.assert_close(p, torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64))


def test_temperature_sharpens_near_uniform_weights() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(200, 20, generator=g, dtype=torch.float64)
    labels = (torch.rand(200, 20, generator=g) < 0.1).long()
    r1 = weight_spread(minority_sampling_probs(probs, labels))["max_over_min"]
    r4 = weight_spread(minority_sampling_probs(probs, labels, temperature=4.0))["max_over_min"]
    assert r4 == pytest.approx(r1**4, rel=1e-9)


@pytest.mark.parametrize(
    "probs, labels, kwargs, match",
    [
        (torch.tensor([[1.2, 0.5]]), torch.tensor([[1, 0]]), {}, "probs"),
        (torch.tensor([[float("nan"), 0.5]]), torch.tensor([[1, 0]]), {}, "probs"),
        (torch.tensor([[0.2, 0.5]]), torch.tensor([[2, 0]]), {}, "labels"),
        (torch.tensor([[0.2, 0.5]]), torch.tensor([[1, 0, 1]]), {}, "same shape"),
        (torch.tensor([0.2, 0.5]), torch.tensor([1, 0]), {}, "probs"),
        (torch.zeros(0, 3), torch.zeros(0, 3), {}, "probs"),
        (torch.tensor([[0.2, 0.5]]), torch.tensor([[1, 0]]), {"temperature": 0.0}, "temperature"),
        (torch.tensor([[0.2, 0.5]]), torch.tensor([[1, 0]]), {"temperature": -1.0}, "temperature"),
        (torch.tensor([[0.2, 0.5]]), torch.tensor([[1, 0]]), {"temperature": float("inf")}, "temperature"),
        (torch.tensor([[0.2, 0.5]]), torch.tensor([[1, 0]]), {"score": "mean"}, "score"),
        ([[0.2, 0.5]], torch.tensor([[1, 0]]), {}, "probs"),
    ],
)
def test_probs_validation(probs, labels, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        minority_sampling_probs(probs, labels, **kwargs)


def test_weight_spread() -> None:
    uniform = weight_spread(torch.full((5,), 0.2))
    for key in ("max_over_min", "max_n", "min_n", "ess_fraction"):
        assert uniform[key] == pytest.approx(1.0)
    # p = (1, 1, 2) / 4: max/min = 2, max*N = 1.5, min*N = 0.75, ESS = 1 / (3 * 6/16) = 8/9
    s = weight_spread(torch.tensor([1.0, 1.0, 2.0]))
    assert s == pytest.approx({"max_over_min": 2.0, "max_n": 1.5, "min_n": 0.75, "ess_fraction": 8 / 9})
    assert weight_spread(torch.tensor([0.0, 1.0]))["max_over_min"] == math.inf
    with pytest.raises(ValueError, match="p"):
        weight_spread(torch.tensor([-1.0, 2.0]))


# --------------------------------------------------------------------------------------------
# MinoritySampler / ShardedRandomSampler
# --------------------------------------------------------------------------------------------
def test_minority_sampler_epoch_determinism() -> None:
    s = MinoritySampler(50, seed=3)
    s.update(torch.arange(1, 51, dtype=torch.float32))
    s.set_epoch(2)
    a = list(s)
    b = list(s)
    s.set_epoch(3)
    c = list(s)
    s.set_epoch(2)
    assert a == b == list(s)
    assert a != c
    other = MinoritySampler(50, seed=4)
    other.update(torch.arange(1, 51, dtype=torch.float32))
    other.set_epoch(2)
    assert list(other) != a
    assert len(a) == len(s) == 50 and all(0 <= i < 50 for i in a)


def test_minority_sampler_uniform_until_update() -> None:
    s = MinoritySampler(7)
    assert torch.equal(s.weights, torch.ones(7, dtype=torch.float64))


def test_minority_sampler_frequencies_match_weights() -> None:
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 0.0])
    n_draws = 100_000
    s = MinoritySampler(6, n_draws, seed=11)
    s.update(weights)
    counts = torch.bincount(torch.tensor(list(s)), minlength=6).double()
    assert counts[5] == 0  # zero weight never drawn
    expected = weights[:5].double() / weights.sum() * n_draws
    chi2 = float(((counts[:5] - expected) ** 2 / expected).sum())
    if _stats is not None:
        assert _stats.chi2.sf(chi2, df=4) > 1e-4, chi2
    assert chi2 < 25.0, chi2  # df = 4: P(chi2 > 25) ~ 5e-5


def test_minority_sampler_without_replacement() -> None:
    s = MinoritySampler(10, 10, seed=1, replacement=False)
    s.update(torch.linspace(0.1, 1.0, 10))
    assert sorted(s) == list(range(10))
    with pytest.raises(ValueError, match="positive entries"):
        s.update(torch.tensor([0.0] * 5 + [1.0] * 5))
    with pytest.raises(ValueError, match="num_samples"):
        MinoritySampler(5, 6, replacement=False)


@pytest.mark.parametrize("cls", [MinoritySampler, ShardedRandomSampler])
@pytest.mark.parametrize("num_samples", [1, 2, 7, 10, 11])
@pytest.mark.parametrize("num_replicas", [1, 2, 3])
def test_rank_shards_disjoint_and_covering(cls, num_samples: int, num_replicas: int) -> None:
    data_size = 10
    samplers = [
        cls(data_size, num_samples, seed=5, num_replicas=num_replicas, rank=r) for r in range(num_replicas)
    ]
    reference = cls(data_size, num_samples, seed=5)  # one process: the unpadded global draw
    for epoch in (0, 1):
        for s in samplers + [reference]:
            s.set_epoch(epoch)
            if isinstance(s, MinoritySampler):
                s.update(torch.arange(1, data_size + 1, dtype=torch.float64))
        draw = list(reference)
        assert len(draw) == num_samples
        per_rank = math.ceil(num_samples / num_replicas)
        shards = [list(s) for s in samplers]
        assert all(len(sh) == per_rank == len(s) for sh, s in zip(shards, samplers))
        # every rank sees the same global stream
        streams = [s.global_indices().tolist() for s in samplers]
        assert all(st == streams[0] for st in streams)
        # the global stream is the unpadded draw followed by wrap-around padding
        total = per_rank * num_replicas
        padded = (draw * (total // num_samples + 1))[:total]
        assert streams[0] == padded
        # positions: rank r owns positions r, r + R, ...; together they rebuild the stream exactly
        rebuilt = [None] * total
        for r, sh in enumerate(shards):
            for j, idx in enumerate(sh):
                pos = r + j * num_replicas
                assert rebuilt[pos] is None  # disjoint in position
                rebuilt[pos] = idx
        assert rebuilt == padded  # covering
        if cls is ShardedRandomSampler and num_samples <= data_size:
            assert len(set(draw)) == num_samples  # a permutation prefix: no repeats


def test_sharded_random_sampler_permutation_and_epochs() -> None:
    s = ShardedRandomSampler(20, seed=0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e0) == sorted(e1) == list(range(20))
    assert e0 != e1
    long = ShardedRandomSampler(6, 15, seed=0)
    drawn = list(long)
    assert sorted(drawn[:6]) == sorted(drawn[6:12]) == list(range(6)) and len(drawn) == 15


def test_random_and_minority_streams_differ_with_same_seed() -> None:
    r = ShardedRandomSampler(100, seed=0)
    m = MinoritySampler(100, 100, seed=0, replacement=False)
    assert list(r) != list(m)


def test_state_dict_round_trip_resumes_identically() -> None:
    a = MinoritySampler(40, 25, seed=9, num_replicas=2, rank=1)
    a.update(torch.rand(40, generator=torch.Generator().manual_seed(1)) + 0.01)
    a.set_epoch(6)
    state = a.state_dict()
    b = MinoritySampler(40, 25, seed=0, num_replicas=2, rank=1)
    b.load_state_dict(state)
    assert list(a) == list(b)
    assert torch.equal(a.weights, b.weights) and b.epoch == 6 and b.seed == 9
    a.set_epoch(7)
    b.set_epoch(7)
    assert list(a) == list(b)
    # the stored weights are a copy
    state["weights"].zero_()
    assert float(b.weights.sum()) > 0
    # resuming with another world size keeps the global stream
    c = MinoritySampler(40, 25, num_replicas=3, rank=0)
    c.load_state_dict(a.state_dict())
    assert c.global_indices()[:25].tolist() == a.global_indices()[:25].tolist()
    with pytest.raises(ValueError, match="data_size"):
        MinoritySampler(41, 25).load_state_dict(a.state_dict())
    r1 = ShardedRandomSampler(30, seed=2)
    r1.set_epoch(4)
    r2 = ShardedRandomSampler(30)
    r2.load_state_dict(r1.state_dict())
    assert list(r1) == list(r2)


def test_update_validation() -> None:
    s = MinoritySampler(4)
    for bad, match in [
        (torch.ones(3), "length 4"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "non-finite"),
        (torch.tensor([1.0, -0.1, 1.0, 1.0]), "non-negative"),
        (torch.zeros(4), "positive sum"),
        (torch.ones(2, 2), "dimensions"),
        ([1.0, 1.0, 1.0, 1.0], "torch.Tensor"),
    ]:
        with pytest.raises(ValueError, match=match):
            s.update(bad)
    s.update(torch.tensor([0, 1, 2, 3]))  # integer weights are fine
    assert s.weights.dtype == torch.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"data_size": 0}, "data_size"),
        ({"data_size": 5, "num_samples": 0}, "num_samples"),
        ({"data_size": 5, "num_replicas": 0}, "num_replicas"),
        ({"data_size": 5, "num_replicas": 2, "rank": 2}, "rank"),
        ({"data_size": 5, "rank": -1}, "rank"),
        ({"data_size": 5.0}, "data_size"),
        ({"data_size": True}, "data_size"),
        ({"data_size": 2**24 + 1}, "2\\^24"),
    ],
)
def test_sampler_argument_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        MinoritySampler(**kwargs)


def test_sampler_set_epoch_validation() -> None:
    with pytest.raises(ValueError, match="epoch"):
        ShardedRandomSampler(3).set_epoch(1.5)


# --------------------------------------------------------------------------------------------
# PairedSampler / PairedBatchSampler
# --------------------------------------------------------------------------------------------
def test_paired_sampler_zips_and_forwards() -> None:
    r = ShardedRandomSampler(10, seed=1)
    m = MinoritySampler(10, 7, seed=2)
    p = PairedSampler(r, m)
    p.set_epoch(3)
    assert r.epoch == m.epoch == 3
    pairs = list(p)
    assert len(p) == 7 == len(pairs)
    assert [a for a, _ in pairs] == list(r)[:7] and [b for _, b in pairs] == list(m)
    w = torch.arange(10, dtype=torch.float64) + 1
    p.update(w)
    assert torch.equal(m.weights, w)
    state = p.state_dict()
    q = PairedSampler(ShardedRandomSampler(10), MinoritySampler(10, 7))
    q.load_state_dict(state)
    assert list(q) == list(p)


@pytest.mark.parametrize("n, batch, drop_last, expected", [(10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3),
                                                           (9, 3, True, 3), (2, 5, False, 1), (2, 5, True, 0)])
def test_paired_batch_sampler_len(n: int, batch: int, drop_last: bool, expected: int) -> None:
    p = PairedSampler(ShardedRandomSampler(n, seed=0), MinoritySampler(n, seed=0))
    bs = PairedBatchSampler(p, batch, drop_last=drop_last)
    batches = list(bs)
    assert len(bs) == expected == len(batches)
    flat = [pair for b in batches for pair in b]
    assert flat == list(p)[: len(flat)]
    assert all(len(b) == batch for b in batches[:-1])
    if drop_last:
        assert all(len(b) == batch for b in batches)
    with pytest.raises(ValueError, match="batch_size"):
        PairedBatchSampler(p, 0)


# --------------------------------------------------------------------------------------------
# One-sample tails: merged into the batch before them, on every rank
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("n, batch", [(33, 32), (65, 32), (7, 3), (10, 3), (9, 3), (2, 5), (5, 2), (4, 4)])
def test_tail_merging_never_yields_a_batch_of_one(n: int, batch: int, world: int) -> None:
    from balancemix_timm.sampling import TailMergingBatchSampler, num_batches

    per_rank = -(-n // world)
    if per_rank < 2:
        pytest.skip("a rank with one sample cannot avoid a batch of one (the trainer refuses it)")
    steps = set()
    for rank in range(world):
        for kind in ("plain", "paired"):
            kw = dict(num_replicas=world, rank=rank)
            if kind == "plain":
                sampler = ShardedRandomSampler(n, seed=3, **kw)
                bs = TailMergingBatchSampler(sampler, batch)
            else:
                sampler = PairedSampler(ShardedRandomSampler(n, seed=3, **kw), MinoritySampler(n, seed=4, **kw))
                bs = PairedBatchSampler(sampler, batch, merge_single_tail=True)
            batches = list(bs)
            assert all(len(b) >= 2 for b in batches), [len(b) for b in batches]
            assert all(len(b) <= batch + 1 for b in batches)
            # every item of the rank's stream is in exactly one batch, in order
            assert [x for b in batches for x in b] == list(sampler)
            assert len(bs) == len(batches) == num_batches(per_rank, batch, merge_single_tail=True)
            steps.add(len(batches))
    assert len(steps) == 1   # every rank takes the same number of steps


def test_num_batches_rules() -> None:
    from balancemix_timm.sampling import num_batches

    assert num_batches(33, 32) == 2 and num_batches(33, 32, merge_single_tail=True) == 1
    assert num_batches(34, 32, merge_single_tail=True) == 2
    assert num_batches(1, 32, merge_single_tail=True) == 1   # nothing to merge into
    assert num_batches(33, 32, drop_last=True) == 1
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(3, 0)
