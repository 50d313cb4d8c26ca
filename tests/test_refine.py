"""Tests of Eq. 9 of BalanceMix: clean / re-labeled / ambiguous label refinement."""

from __future__ import annotations

import pytest
import torch

from balancemix_timm.refine import LabelState, refine_labels, view_average

C, R, U = 0, 1, 2


def _brute_force(labels, clean_prob, view_probs, eps, clean_threshold=0.5):
    """Element-by-element reading of Eq. 8-9 with plain Python floats."""
    n, k = len(labels), len(labels[0])
    refined = [[None] * k for _ in range(n)]
    state = [[None] * k for _ in range(n)]
    for i in range(n):
        for j in range(k):
            y = int(labels[i][j])
            if float(clean_prob[i][j]) > clean_threshold:
                refined[i][j], state[i][j] = y, C
            elif float(view_probs[i][j]) > eps:
                refined[i][j], state[i][j] = 1, R
            elif float(view_probs[i][j]) < 1 - eps:
                refined[i][j], state[i][j] = 0, R
            else:
                refined[i][j], state[i][j] = y, U
    return refined, state


def _random_inputs(n, k, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, k, generator=g) < 0.3).to(torch.float32)
    clean_prob = torch.rand(n, k, generator=g, dtype=dtype)
    # Push many view probabilities towards 0 or 1 so that every branch is exercised.
    u = torch.rand(n, k, generator=g, dtype=dtype)
    view_probs = torch.where(torch.rand(n, k, generator=g) < 0.5, u, u.pow(8))
    flip = torch.rand(n, k, generator=g) < 0.5
    view_probs = torch.where(flip, 1 - view_probs, view_probs)
    return labels, clean_prob, view_probs


@pytest.mark.parametrize("eps", [0.975, 0.55, 0.8, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_loop(eps, seed):
    labels, clean_prob, view_probs = _random_inputs(40, 7, seed)
    refined, state = refine_labels(labels, clean_prob, view_probs, eps)
    want_refined, want_state = _brute_force(labels.tolist(), clean_prob.tolist(),
                                            view_probs.tolist(), eps)
    assert refined.tolist() == [[float(v) for v in row] for row in want_refined]
    assert state.tolist() == want_state
    assert state.dtype == torch.int8
    assert refined.dtype == labels.dtype


def test_brute_force_random_inputs_cover_every_branch():
    labels, clean_prob, view_probs = _random_inputs(40, 7, 0)
    _, state = refine_labels(labels, clean_prob, view_probs, 0.975)
    refined, _ = refine_labels(labels, clean_prob, view_probs, 0.975)
    relabeled = state == R
    assert (state == C).any() and relabeled.any() and (state == U).any()
    assert (refined[relabeled] == 1).any() and (refined[relabeled] == 0).any()
    # Some labels were "re-labeled" to their old value, some were actually flipped.
    assert (refined[relabeled] == labels[relabeled]).any()
    assert (refined[relabeled] != labels[relabeled]).any()


@pytest.mark.parametrize("clean_threshold", [0.3, 0.7])
def test_clean_threshold_option_matches_brute_force(clean_threshold):
    labels, clean_prob, view_probs = _random_inputs(30, 5, 7)
    refined, state = refine_labels(labels, clean_prob, view_probs, 0.9,
                                   clean_threshold=clean_threshold)
    want_refined, want_state = _brute_force(labels.tolist(), clean_prob.tolist(),
                                            view_probs.tolist(), 0.9, clean_threshold)
    assert state.tolist() == want_state
    assert refined.tolist() == [[float(v) for v in row] for row in want_refined]


def test_hand_worked_2x3_example():
    # eps = 0.9, so re-label to 1 above 0.9 and to 0 below 0.1 (non-clean labels only).
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    clean_prob = torch.tensor([[0.9, 0.2, 0.1], [0.5, 0.4, 0.51]])
    view_probs = torch.tensor([[0.01, 0.95, 0.5], [0.97, 0.05, 0.99]])
    refined, state = refine_labels(labels, clean_prob, view_probs, 0.9)
    # (0,0) clean (0.9 > 0.5): kept 1 although the views say 0.01.
    # (0,1) not clean, 0.95 > 0.9: re-labeled 0 -> 1.
    # (0,2) not clean, 0.1 <= 0.5 <= 0.9: ambiguous, keeps 1.
    # (1,0) clean_prob exactly 0.5 is NOT clean; 0.97 > 0.9: re-labeled 0 -> 1.
    # (1,1) not clean, 0.05 < 0.1: re-labeled 1 -> 0.
    # (1,2) clean (0.51 > 0.5): keeps 0 although the views say 0.99.
    assert refined.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert state.tolist() == [[C, R, U], [R, R, C]]
    assert refined.dtype == torch.int64


def test_relabel_to_same_value_counts_as_relabeled():
    labels = torch.tensor([[1.0, 0.0]])
    refined, state = refine_labels(labels, torch.tensor([[0.0, 0.0]]),
                                   torch.tensor([[0.99, 0.01]]), 0.975)
    assert refined.tolist() == [[1.0, 0.0]]
    assert state.tolist() == [[R, R]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundaries_are_strict(dtype):
    # clean_prob exactly 0.5 is not clean; view probability exactly eps or 1 - eps is not
    # re-labeled (also for eps = 0.975, whose float32 rounding must not flip the comparison).
    for eps in (0.75, 0.975):
        labels = torch.tensor([[0, 1, 0, 1]], dtype=torch.uint8)
        clean_prob = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=dtype)
        view = torch.tensor([[eps, 1 - eps, 0.5, 0.5]], dtype=dtype)
        refined, state = refine_labels(labels, clean_prob, view, eps)
        assert state.tolist() == [[U, U, U, U]], eps
        assert torch.equal(refined, labels)
    # Just beyond the thresholds they are re-labeled.
    labels = torch.tensor([[0, 1]])
    refined, state = refine_labels(labels, torch.tensor([[0.5, 0.5]]),
                                   torch.tensor([[0.7501, 0.2499]]), 0.75)
    assert state.tolist() == [[R, R]] and refined.tolist() == [[1, 0]]
    # And just above the clean threshold they are clean.
    _, state = refine_labels(labels, torch.tensor([[0.5001, 0.5001]]),
                             torch.tensor([[0.99, 0.01]]), 0.75)
    assert state.tolist() == [[C, C]]


def test_eps_one_disables_relabeling():
    labels, clean_prob, _ = _random_inputs(20, 4, 3)
    view = torch.tensor([0.0, 1.0]).repeat(20, 2).to(torch.float64)
    refined, state = refine_labels(labels, clean_prob, view, 1.0)
    assert not (state == R).any()
    assert torch.equal(refined, labels)
    assert torch.equal(state == C, clean_prob > 0.5)


def test_bool_labels_and_inputs_not_modified():
    labels = torch.tensor([[True, False, True], [False, False, True]])
    clean_prob = torch.tensor([[0.1, 0.1, 0.9], [0.1, 0.3, 0.2]])
    view = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.96, 0.02]])
    copies = [t.clone() for t in (labels, clean_prob, view)]
    refined, state = refine_labels(labels, clean_prob, view, 0.95)
    assert refined.dtype == torch.bool
    assert refined.tolist() == [[False, True, True], [False, True, False]]
    assert state.tolist() == [[R, R, C], [U, R, R]]
    for t, c in zip((labels, clean_prob, view), copies):
        assert torch.equal(t, c)
    assert refined.data_ptr() != labels.data_ptr()


def test_label_state_values():
    assert [int(s) for s in LabelState] == [0, 1, 2]
    assert LabelState.CLEAN == 0 and LabelState.RELABELED == 1 and LabelState.AMBIGUOUS == 2


@pytest.mark.parametrize("eps", [0.5, 0.3, 1.0001, 2.0, -1.0, float("nan"), "a"])
def test_bad_eps_raises(eps):
    labels, clean_prob, view = _random_inputs(3, 2, 0)
    with pytest.raises(ValueError, match="eps"):
        refine_labels(labels, clean_prob, view, eps)


@pytest.mark.parametrize("thr", [-0.1, 1.5])
def test_bad_clean_threshold_raises(thr):
    labels, clean_prob, view = _random_inputs(3, 2, 0)
    with pytest.raises(ValueError, match="clean_threshold"):
        refine_labels(labels, clean_prob, view, 0.9, clean_threshold=thr)


def test_bad_tensors_raise():
    labels, clean_prob, view = _random_inputs(3, 2, 0)
    with pytest.raises(ValueError, match="labels"):
        refine_labels(labels * 2, clean_prob, view, 0.9)
    with pytest.raises(ValueError, match="labels"):
        refine_labels(labels[0], clean_prob[0], view[0], 0.9)
    with pytest.raises(ValueError, match="clean_prob"):
        refine_labels(labels, clean_prob + 1, view, 0.9)
    with pytest.raises(ValueError, match="view_probs"):
        refine_labels(labels, clean_prob, view - 1, 0.9)
    with pytest.raises(ValueError, match="view_probs"):
        refine_labels(labels, clean_prob, view[:2], 0.9)
    with pytest.raises(ValueError, match="clean_prob"):
        refine_labels(labels, clean_prob.T, view, 0.9)
    with pytest.raises(ValueError, match="view_probs"):
        refine_labels(labels, clean_prob, torch.full_like(view, float("nan")), 0.9)
    with pytest.raises(ValueError, match="labels"):
        refine_labels(labels.tolist(), clean_prob, view, 0.9)


def test_view_average():
    p1 = torch.tensor([[0.2, 1.0], [0.0, 0.6]])
    p2 = torch.tensor([[0.4, 0.9], [0.0, 0.1]])
    assert torch.allclose(view_average(p1, p2), torch.tensor([[0.3, 0.95], [0.0, 0.35]]))
    with pytest.raises(ValueError, match="p2"):
        view_average(p1, torch.tensor([[0.2, 1.5], [0.0, 0.6]]))
    with pytest.raises(ValueError, match="p1"):
        view_average(p1[:1], p2)


def test_view_average_feeds_refinement():
    # Two views that disagree (0.99 and 0.96) average to 0.975 = eps: not re-labeled.
    p1 = torch.tensor([[0.99, 0.99]], dtype=torch.float64)
    p2 = torch.tensor([[0.96, 0.98]], dtype=torch.float64)
    avg = view_average(p1, p2)
    _, state = refine_labels(torch.tensor([[0, 0]]), torch.zeros(1, 2, dtype=torch.float64),
                             avg, 0.975)
    assert state.tolist() == [[U, R]]
