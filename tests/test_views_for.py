"""``views_for="relabel"``: augmented views forwarded only for Eq. 9's candidates.

Checked against independent computations: which instances are candidates in each epoch, which
inputs reach the model and where each probability is recorded, and the refresh's rule for the
instances recorded without views (their labels that are not clean wait, as given and ambiguous).
"""

from __future__ import annotations

import pytest
import torch

from balancemix_timm.config import load_config
from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.options import BalanceMixOptions
from balancemix_timm.recipe import BalanceMixRecipe
from balancemix_timm.refine import LabelState, refine_labels

CLEAN, AMBIGUOUS, RELABELED = int(LabelState.CLEAN), int(LabelState.AMBIGUOUS), int(LabelState.RELABELED)


def _labels(n: int = 12, k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=g) < 0.4).to(torch.uint8)


@pytest.mark.parametrize("management", ["none", "clean"])
def test_no_candidates_without_relabeling(management):
    eng = BalanceMixEngine(_labels(), warmup_epochs=2, label_management=management)
    for epoch in range(4):
        eng.set_epoch(epoch)
        assert not eng.view_candidates(torch.arange(12)).any()


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_candidates_by_epoch(warmup):
    eng = BalanceMixEngine(_labels(), warmup_epochs=warmup)
    state = torch.zeros(12, 3, dtype=torch.int8)
    state[[1, 5], 2] = AMBIGUOUS
    state[7, 0] = RELABELED
    eng.state = state
    index = torch.tensor([0, 1, 5, 7, 9])
    first = max(warmup - 1, 0)
    for epoch in range(warmup + 3):
        eng.set_epoch(epoch)
        got = eng.view_candidates(index).tolist()
        if epoch < first:
            assert got == [False] * 5
        elif epoch == first:  # the first applied refresh sees every instance's views
            assert got == [True] * 5
        else:  # an instance with a label that is not clean
            assert got == [False, True, True, True, False]


def test_refresh_keeps_unviewed_labels_as_given_and_ambiguous():
    n, k = 40, 3
    labels = _labels(n, k, seed=1)
    g = torch.Generator().manual_seed(2)
    image = torch.rand(n, k, generator=g)
    views = torch.rand(2, n, k, generator=g)
    opts = dict(warmup_epochs=0, clean_if_agrees=False, eps=0.7, gmm_options=dict(min_group_size=2))
    full = BalanceMixEngine(labels, **opts)
    part = BalanceMixEngine(labels, **opts)
    unviewed = torch.zeros(n, dtype=torch.bool)
    unviewed[::3] = True
    full.record(torch.arange(n), views, image_probs=image)
    part.record(torch.arange(n)[~unviewed], views[:, ~unviewed], image_probs=image[~unviewed])
    part.record_image(torch.arange(n)[unviewed], image[unviewed])
    full.refresh(epoch=0)
    part.refresh(epoch=0)
    # Eq. 6-8 read f(x) only: the clean probabilities agree
    assert torch.equal(full.clean_prob, part.clean_prob)
    # independent rule: Eq. 9 on the views where recorded; elsewhere the unclean labels wait
    refined, state = refine_labels(labels, full.clean_prob, views.mean(0), 0.7)
    wait = unviewed[:, None] & (state != CLEAN)
    assert wait.any() and (state[~unviewed] == RELABELED).any()
    expect_state = torch.where(wait, torch.full_like(state, AMBIGUOUS), state)
    expect_refined = torch.where(wait, labels, refined)
    assert torch.equal(part.state, expect_state)
    assert torch.equal(part.refined_labels, expect_refined)
    assert torch.equal(full.state, state)
    # f(x) recorded for every instance; view means untouched where no views were recorded
    assert torch.equal(part.probs, image)
    assert bool((part.view_mean[unviewed] == 0.5).all())


def test_record_image_follows_the_record_momentum():
    labels = _labels(4, 2)
    eng = BalanceMixEngine(labels, record_momentum=0.75)
    first, second = torch.full((4, 2), 0.2), torch.full((4, 2), 0.6)
    eng.record_image(torch.arange(4), first)
    eng.record_image(torch.arange(4), second)
    assert torch.allclose(eng.probs, 0.75 * first + 0.25 * second)


class _Batch:
    def __init__(self, index: torch.Tensor, views: torch.Tensor) -> None:
        self.index_r, self.view_r = index, views


def test_recipe_forwards_the_image_of_all_and_the_views_of_candidates_in_one_call():
    n, k, b = 10, 3, 6
    recipe = BalanceMixRecipe(_labels(n, k), BalanceMixOptions(views_for="relabel", warmup_epochs=1))
    eng = recipe.engine
    eng.state[[2, 4], 1] = AMBIGUOUS
    recipe.set_epoch(1)  # after warm-up: candidates from the state
    index = torch.tensor([0, 2, 3, 4, 6, 8])
    # each input's pixels hold (which input, which instance): predict reads them back
    views = torch.zeros(3, b, 1, 2, 2)
    for v in range(3):
        for i in range(b):
            views[v, i] = 10 * v + i
    calls = []

    def predict(x: torch.Tensor, count: int | None) -> torch.Tensor:
        calls.append((tuple(x.shape), count))
        code = x[0, :, 0, 0, 0]  # (n_inputs,)
        return (code / 100.0)[None, :, None].expand(1, -1, k).clone()

    recipe.record_batch(_Batch(index, views), predict)
    assert calls == [((1, b + 2 * 2, 1, 2, 2), None)]  # 6 images + 2 views x 2 candidates
    image_code = (20 + torch.arange(b)) / 100.0
    assert torch.allclose(eng.probs[index], image_code[:, None].expand(b, k))
    # instances 2 and 4 (positions 1 and 3): the mean of their two views
    for pos, i in ((1, 2), (3, 4)):
        assert torch.allclose(eng.view_mean[i], torch.full((k,), ((0 + pos) + (10 + pos)) / 200.0))
    viewed = eng._epoch_viewed.nonzero().squeeze(1).tolist()
    assert viewed == [2, 4] and eng._epoch_seen[index].all()


def test_recipe_all_candidates_records_what_views_for_all_records():
    n, k, b = 10, 3, 5
    views = torch.rand(3, b, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    index = torch.tensor([1, 3, 5, 7, 9])

    def predict(x: torch.Tensor, count: int | None) -> torch.Tensor:  # per input, batch-independent
        return torch.sigmoid(x.flatten(2).sum(-1, keepdim=True) * torch.tensor([1.0, -0.5, 2.0]))[:, :count]

    records = []
    for views_for in ("all", "relabel"):
        recipe = BalanceMixRecipe(_labels(n, k), BalanceMixOptions(views_for=views_for, warmup_epochs=2))
        recipe.set_epoch(1)  # the last warm-up epoch: every instance is a candidate
        recipe.record_batch(_Batch(index, views), predict)
        records.append((recipe.engine.probs.clone(), recipe.engine.view_mean.clone()))
    assert torch.allclose(records[0][0], records[1][0]) and torch.allclose(records[0][1], records[1][1])


def test_recipe_no_candidates_forwards_the_images_only():
    recipe = BalanceMixRecipe(_labels(), BalanceMixOptions(views_for="relabel", warmup_epochs=3))
    recipe.set_epoch(0)
    shapes = []

    def predict(x: torch.Tensor, count: int | None) -> torch.Tensor:
        shapes.append(tuple(x.shape[:2]))
        return torch.full((x.shape[0], x.shape[1], 3), 0.3)

    recipe.record_batch(_Batch(torch.arange(4), torch.rand(3, 4, 1, 2, 2)), predict)
    assert shapes == [(1, 4)]
    assert not recipe.engine._epoch_viewed.any() and recipe.engine._epoch_seen[:4].all()


def test_views_for_needs_per_step_views_and_image_confidence():
    with pytest.raises(ValueError, match="views_for='relabel' applies to label_source='views'"):
        BalanceMixOptions(views_for="relabel", label_source="epoch_pass")
    with pytest.raises(ValueError, match="needs confidence_input='image'"):
        BalanceMixOptions(views_for="relabel", confidence_input="views")
    with pytest.raises(ValueError, match="config views_for"):
        load_config(None, {"views_for": "relabel", "confidence_input": "views"})
    with pytest.raises(ValueError, match="needs record_momentum=0"):
        BalanceMixOptions(views_for="relabel", record_momentum=0.5)
    with pytest.raises(ValueError, match="views_for"):
        BalanceMixOptions(views_for="some")


def _sync_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        eng = BalanceMixEngine(_labels(8, 2))
        value = 0.2 + 0.5 * rank
        # rank 0: views of 0-2, the image of 3; rank 1: the image of 2 and 4, views of 5
        viewed, imaged = ([0, 1, 2], [3]) if rank == 0 else ([5], [2, 4])
        eng.record(torch.tensor(viewed), torch.full((2, len(viewed), 2), value),
                   image_probs=torch.full((len(viewed), 2), value + 0.05))
        eng.record_image(torch.tensor(imaged), torch.full((len(imaged), 2), value + 0.05))
        eng.sync_records()
        torch.save(dict(probs=eng.probs, view_mean=eng.view_mean, seen=eng._epoch_seen, viewed=eng._epoch_viewed),
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_merges_views_from_the_ranks_that_recorded_them(tmp_path):
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_sync_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # f(x): the mean over the ranks that recorded it (sample 2 on both); views: only where viewed
    assert torch.allclose(a["probs"][:, 0], torch.tensor([0.25, 0.25, 0.5, 0.25, 0.75, 0.75, 0.5, 0.5]))
    assert torch.allclose(a["view_mean"][:, 0], torch.tensor([0.2, 0.2, 0.2, 0.5, 0.5, 0.7, 0.5, 0.5]))
    assert a["seen"].tolist() == [True] * 6 + [False] * 2
    assert a["viewed"].tolist() == [True, True, True, False, False, True, False, False]
