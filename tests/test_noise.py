"""Tests of balancemix_timm.noise: the three label-noise protocols of BalanceMix (Eq. 11)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chi2

from balancemix_timm.noise import (
    NOISE_KINDS,
    apply_noise,
    mislabel,
    noise_rate_report,
    random_flip,
    single_positive,
)

N_ROWS, N_CLASSES = 20000, 10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _long_tailed(n: int = N_ROWS, k: int = N_CLASSES, seed: int = 0) -> torch.Tensor:
    """Independent Bernoulli labels with a long-tailed class prior 0.4 * 0.6**k."""
    prior = 0.4 * 0.6 ** torch.arange(k, dtype=torch.float64)
    return (torch.rand(n, k, generator=_gen(seed), dtype=torch.float64) < prior).float()


def _chi2_pvalue(observed: torch.Tensor, expected: torch.Tensor) -> float:
    observed = observed.double()
    expected = expected.double()
    stat = float(((observed - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, df=observed.numel() - 1))


def _binomial_ok(successes: int, trials: int, p: float, z: float = 4.5) -> bool:
    sd = math.sqrt(trials * p * (1 - p))
    return abs(successes - trials * p) <= z * sd + 1


# --------------------------------------------------------------------------------------------
# validation, dtype, purity, determinism
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan")])
@pytest.mark.parametrize("fn", [mislabel, random_flip])
def test_tau_out_of_range_raises(fn, tau):
    with pytest.raises(ValueError, match="tau"):
        fn(torch.ones(3, 4), tau, _gen(0))
    with pytest.raises(ValueError, match="tau"):
        apply_noise(torch.ones(3, 4), "mislabel", tau, _gen(0))


@pytest.mark.parametrize(
    "bad",
    [torch.full((3, 4), 0.5), torch.ones(4), torch.ones(2, 3, 4), [[0, 1]]],
    ids=["non_binary", "1d", "3d", "list"],
)
@pytest.mark.parametrize("fn", ["mislabel", "random_flip", "single_positive"])
def test_bad_labels_raise(fn, bad):
    with pytest.raises(ValueError, match="labels"):
        apply_noise(bad, fn, 0.2, _gen(0))


def test_bad_options_raise():
    y = torch.ones(3, 4)
    with pytest.raises(ValueError, match="kind"):
        apply_noise(y, "symmetric", 0.2)
    with pytest.raises(ValueError, match="destination"):
        mislabel(y, 0.2, _gen(0), destination="positive")
    with pytest.raises(ValueError, match="generator"):
        mislabel(y, 0.2, 0)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
)
@pytest.mark.parametrize("kind", ["mislabel", "random_flip", "single_positive", "clean"])
def test_dtype_preserved_and_input_untouched(kind, dtype):
    labels = _long_tailed(500, 6, seed=1).to(dtype)
    before = labels.clone()
    out = apply_noise(labels, kind, 0.4, _gen(2))
    assert out.dtype == dtype
    assert out.shape == labels.shape
    assert out.data_ptr() != labels.data_ptr()
    assert torch.equal(labels, before)
    assert bool(((out == 0) | (out == 1)).all())
    if kind != "clean":
        assert not torch.equal(out, labels)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("destination", ["negative", "any"])
def test_mislabel_input_untouched(exact, destination):
    labels = _long_tailed(300, 5, seed=3)
    before = labels.clone()
    mislabel(labels, 0.5, _gen(0), exact=exact, destination=destination)
    assert torch.equal(labels, before)


@pytest.mark.parametrize(
    "call",
    [
        lambda y, g: mislabel(y, 0.3, g),
        lambda y, g: mislabel(y, 0.3, g, exact=True),
        lambda y, g: mislabel(y, 0.3, g, destination="any"),
        lambda y, g: random_flip(y, 0.3, g),
        lambda y, g: single_positive(y, g),
    ],
    ids=["mislabel", "mislabel_exact", "mislabel_any", "random_flip", "single_positive"],
)
def test_deterministic_given_generator(call):
    labels = _long_tailed(2000, 8, seed=4)
    a = call(labels, _gen(123))
    b = call(labels, _gen(123))
    c = call(labels, _gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_none_uses_default_rng():
    labels = _long_tailed(200, 5, seed=5)
    torch.manual_seed(7)
    a = mislabel(labels, 0.3)
    torch.manual_seed(7)
    b = mislabel(labels, 0.3)
    assert torch.equal(a, b)


def test_tau_zero_is_identity_and_empty_inputs():
    labels = _long_tailed(300, 5, seed=6)
    for kind in ("mislabel", "random_flip"):
        assert torch.equal(apply_noise(labels, kind, 0.0, _gen(0)), labels)
    assert torch.equal(mislabel(labels, 0.0, _gen(0), exact=True), labels)
    zeros = torch.zeros(10, 4)
    assert torch.equal(mislabel(zeros, 0.5, _gen(0)), zeros)
    assert torch.equal(single_positive(zeros, _gen(0)), zeros)
    assert single_positive(torch.zeros(0, 3), _gen(0)).shape == (0, 3)


# --------------------------------------------------------------------------------------------
# mislabel (Eq. 11)
# --------------------------------------------------------------------------------------------
def test_mislabel_moves_fraction_tau_and_preserves_counts():
    tau = 0.3
    clean = _long_tailed(seed=10).bool()
    noisy = mislabel(clean.float(), tau, _gen(11)).bool()
    removed = clean & ~noisy
    added = ~clean & noisy
    # every change is a move within the image: one positive out, one positive in
    assert torch.equal(removed.sum(1), added.sum(1))
    assert torch.equal(clean.sum(1), noisy.sum(1))
    # rows where every positive surely has a destination: fraction moved ~ tau (binomial)
    room = clean.sum(1) <= (~clean).sum(1)
    trials = int(clean[room].sum())
    moved = int(removed[room].sum())
    assert trials > 5000
    assert _binomial_ok(moved, trials, tau), (moved / trials, tau)
    # per source class: sum_j rho_{i->j} = tau for every class i (class-independent rate)
    for i in range(N_CLASSES):
        t_i = int(clean[room, i].sum())
        if t_i >= 50:
            assert _binomial_ok(int(removed[room, i].sum()), t_i, tau), i


def test_mislabel_destination_proportional_to_class_counts():
    """Single-positive images: destination j of a moved class-i label has p = N_j / (N - N_i)."""
    tau = 0.5
    clean = _long_tailed(seed=12).bool()
    noisy = mislabel(clean.float(), tau, _gen(13)).bool()
    counts = clean.sum(0).double()  # N_j (all rows)
    total = counts.sum()
    single = clean.sum(1) == 1
    c, z = clean[single], noisy[single]
    moved_rows = (c & ~z).any(1)
    src = c[moved_rows].float().argmax(1)
    dst = (z & ~c)[moved_rows].float().argmax(1)
    assert moved_rows.sum() > 2000
    observed = torch.bincount(dst, minlength=N_CLASSES).double()
    expected = torch.zeros(N_CLASSES, dtype=torch.float64)
    for i in range(N_CLASSES):
        n_i = int((src == i).sum())
        p = counts / (total - counts[i])
        p[i] = 0.0
        expected += n_i * p
    assert abs(float(observed.sum() - expected.sum())) < 1e-6
    assert _chi2_pvalue(observed, expected) > 1e-3
    # the test has power: uniform destinations are rejected outright
    uniform = torch.full_like(expected, float(observed.sum()) / N_CLASSES)
    assert _chi2_pvalue(observed, uniform) < 1e-12
    # no self-moves
    assert not bool((src == dst).any())


def test_mislabel_two_movers_follow_sequential_draw_without_replacement():
    """Images {0,1} with tau=1: the destination pair is a sequential draw ~ N_j among {2,3,4}."""
    w = {2: 1500, 3: 600, 4: 150}
    rows = [[1, 1, 0, 0, 0]] * 4000
    for j, n_j in w.items():
        rows += [[1 if c == j else 0 for c in range(5)]] * n_j
    clean = torch.tensor(rows, dtype=torch.float32)
    noisy = mislabel(clean, 1.0, _gen(14))
    pair_rows = noisy[:4000]
    assert bool((pair_rows[:, :2] == 0).all())  # both positives moved
    assert bool((pair_rows.sum(1) == 2).all())
    pairs = list(itertools.combinations(w, 2))
    observed = torch.tensor(
        [float(((pair_rows[:, a] == 1) & (pair_rows[:, b] == 1)).sum()) for a, b in pairs]
    )
    tot = sum(w.values())
    prob = [w[a] / tot * w[b] / (tot - w[a]) + w[b] / tot * w[a] / (tot - w[b]) for a, b in pairs]
    expected = 4000 * torch.tensor(prob, dtype=torch.float64)
    assert abs(sum(prob) - 1.0) < 1e-12
    assert _chi2_pvalue(observed, expected) > 1e-3


def test_mislabel_without_destinations_keeps_labels():
    # row 0: every class positive -> no destination, unchanged
    # row 1: 4 of 5 positive, tau = 1 -> exactly one (random) positive moves, into class 4
    # row 2: one positive, tau = 1 -> it moves
    base = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    seen_sources = set()
    for seed in range(40):
        noisy = mislabel(base, 1.0, _gen(seed))
        assert torch.equal(noisy[0], base[0])
        assert float(noisy[1].sum()) == 4.0 and float(noisy[1, 4]) == 1.0
        seen_sources.add(int((base[1] - noisy[1]).clamp(min=0).argmax()))
        assert float(noisy[2].sum()) == 1.0 and float(noisy[2, 0]) == 0.0
    # the mover that actually moves is chosen at random among the four
    assert seen_sources == {0, 1, 2, 3}


def test_mislabel_zero_count_class_never_destination():
    clean = _long_tailed(3000, 6, seed=15)
    clean[:, 5] = 0
    noisy = mislabel(clean, 0.8, _gen(16))
    assert float(noisy[:, 5].sum()) == 0.0
    noisy_any = mislabel(clean, 0.8, _gen(16), destination="any")
    assert float(noisy_any[:, 5].sum()) == 0.0


@pytest.mark.parametrize("tau", [0.2, 0.4, 1.0])
def test_mislabel_exact_count(tau):
    clean = _long_tailed(5000, 10, seed=17).bool()
    # make sure every positive has a destination: at most 5 positives per row
    clean[clean.sum(1) > 5] = False
    noisy = mislabel(clean, tau, _gen(18), exact=True)
    assert noisy.dtype == torch.bool
    n_pos = int(clean.sum())
    removed = clean & ~noisy
    assert int(removed.sum()) == math.floor(tau * n_pos + 0.5)
    assert torch.equal(clean.sum(1), noisy.sum(1))
    if tau < 1.0:
        # chosen uniformly among positives: per class moved fraction ~ tau (hypergeometric,
        # binomial bound is conservative)
        for i in range(10):
            t_i = int(clean[:, i].sum())
            if t_i >= 50:
                assert _binomial_ok(int(removed[:, i].sum()), t_i, tau), i


def test_mislabel_any_matches_eq11_on_single_positive_images():
    tau = 0.4
    clean = _long_tailed(seed=19).bool()
    noisy = mislabel(clean.float(), tau, _gen(20), destination="any").bool()
    counts = clean.sum(0).double()
    total = counts.sum()
    single = clean.sum(1) == 1
    c, z = clean[single], noisy[single]
    trials = int(c.sum())
    moved_rows = (c & ~z).any(1)
    assert _binomial_ok(int(moved_rows.sum()), trials, tau)
    src = c[moved_rows].float().argmax(1)
    dst = (z & ~c)[moved_rows].float().argmax(1)
    expected = torch.zeros(N_CLASSES, dtype=torch.float64)
    for i in range(N_CLASSES):
        p = counts / (total - counts[i])
        p[i] = 0.0
        expected += int((src == i).sum()) * p
    observed = torch.bincount(dst, minlength=N_CLASSES).double()
    assert _chi2_pvalue(observed, expected) > 1e-3


def test_mislabel_any_merges_into_existing_positives():
    """Row {0,1}, K=3, tau=1, destination='any': outcome law by enumeration of both draws."""
    n0, n2 = 3000, 1000  # n0 rows {0, 1}, n2 rows {2}
    rows = [[1, 1, 0]] * n0 + [[0, 0, 1]] * n2
    clean = torch.tensor(rows, dtype=torch.float32)
    counts = clean.sum(0).tolist()  # [3000, 3000, 1000]
    noisy = mislabel(clean, 1.0, _gen(21), destination="any")[:n0]
    # 0 -> 1 with N1/(N1+N2), 1 -> 0 with N0/(N0+N2); outcome = set of destinations
    p01 = counts[1] / (counts[1] + counts[2])
    p10 = counts[0] / (counts[0] + counts[2])
    law = {
        (1, 1, 0): p01 * p10,
        (0, 1, 1): p01 * (1 - p10),
        (1, 0, 1): (1 - p01) * p10,
        (0, 0, 1): (1 - p01) * (1 - p10),
    }
    keys = list(law)
    observed = torch.tensor(
        [float((noisy == torch.tensor(k, dtype=torch.float32)).all(1).sum()) for k in keys]
    )
    assert float(observed.sum()) == n0
    expected = n0 * torch.tensor([law[k] for k in keys], dtype=torch.float64)
    assert _chi2_pvalue(observed, expected) > 1e-3


def test_mislabel_coco_prior_preserves_row_sums():
    # COCO's 80 classes and long-tailed prior on fewer rows; benchmarks/bench_noise.py times the
    # full 82,081 rows.
    prior = torch.linspace(0.25, 0.002, 80)
    labels = (torch.rand(5000, 80, generator=_gen(22)) < prior).float()
    noisy = mislabel(labels, 0.4, _gen(23))
    assert torch.equal(noisy.sum(1), labels.sum(1))


# --------------------------------------------------------------------------------------------
# random flipping and single positive
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.1, 0.4])
def test_random_flip_rate_on_positives_and_negatives(tau):
    clean = _long_tailed(seed=24).bool()
    noisy = random_flip(clean.float(), tau, _gen(25)).bool()
    flipped = clean ^ noisy
    n_pos = int(clean.sum())
    n_neg = clean.numel() - n_pos
    assert _binomial_ok(int(flipped[clean].sum()), n_pos, tau)
    assert _binomial_ok(int(flipped[~clean].sum()), n_neg, tau)


def test_random_flip_extremes():
    clean = _long_tailed(100, 4, seed=26)
    assert torch.equal(random_flip(clean, 1.0, _gen(0)), 1 - clean)
    assert torch.equal(random_flip(clean, 0.0, _gen(0)), clean)


def test_single_positive_keeps_one_original_positive():
    clean = _long_tailed(5000, 10, seed=27).bool()
    noisy = single_positive(clean.to(torch.int64), _gen(28)).bool()
    has_pos = clean.any(1)
    assert bool((noisy.sum(1)[has_pos] == 1).all())
    assert not bool(noisy[~has_pos].any())
    assert not bool((noisy & ~clean).any())


def test_single_positive_uniform_choice():
    clean = torch.zeros(6000, 8)
    clean[:, [1, 4, 7]] = 1.0
    noisy = single_positive(clean, _gen(29))
    observed = noisy[:, [1, 4, 7]].sum(0)
    assert float(observed.sum()) == 6000
    assert _chi2_pvalue(observed, torch.full((3,), 2000.0)) > 1e-3


# --------------------------------------------------------------------------------------------
# dispatcher and report
# --------------------------------------------------------------------------------------------
def test_apply_noise_dispatch_matches_direct_calls():
    labels = _long_tailed(1000, 6, seed=30)
    assert set(NOISE_KINDS) == {"clean", "mislabel", "random_flip", "single_positive"}
    assert torch.equal(apply_noise(labels, "clean", 0.3, _gen(1)), labels)
    assert torch.equal(
        apply_noise(labels, "mislabel", 0.3, _gen(1)), mislabel(labels, 0.3, _gen(1))
    )
    assert torch.equal(
        apply_noise(labels, "mislabel", 0.3, _gen(1), exact=True),
        mislabel(labels, 0.3, _gen(1), exact=True),
    )
    assert torch.equal(
        apply_noise(labels, "random_flip", 0.3, _gen(1)), random_flip(labels, 0.3, _gen(1))
    )
    assert torch.equal(
        apply_noise(labels, "single_positive", 0.3, _gen(1)), single_positive(labels, _gen(1))
    )


def test_noise_rate_report_hand_worked():
    clean = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]])
    noisy = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]])
    r = noise_rate_report(noisy, clean)
    assert r["num_labels"] == 12
    assert r["clean_positives"] == 4 and r["noisy_positives"] == 5
    assert r["positives_removed"] == 1 and r["positives_added"] == 2
    assert r["changed"] == 3
    assert r["changed_fraction"] == pytest.approx(3 / 12)
    assert r["removed_fraction"] == pytest.approx(1 / 4)
    assert r["added_fraction"] == pytest.approx(2 / 8)
    assert r["images_changed_fraction"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same shape"):
        noise_rate_report(noisy[:2], clean)
    empty = noise_rate_report(torch.zeros(0, 3), torch.zeros(0, 3))
    assert math.isnan(empty["changed_fraction"])
