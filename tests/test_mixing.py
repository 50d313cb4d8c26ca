"""Tests for balancemix_timm.mixing (Eq. 5 of BalanceMix)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from balancemix_timm.mixing import (
    MinorityMixup,
    MixedBatch,
    MixupCollate,
    PairedDataset,
    mix,
    mix_targets,
    sample_beta,
    sample_lambda,
    sample_lambdas,
)
from balancemix_timm.sampling import MinoritySampler, PairedBatchSampler, PairedSampler, ShardedRandomSampler

try:
    from scipy import stats as _stats
    from scipy.special import betainc as _betainc
except ImportError:  # pragma: no cover
    _stats = None


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# sample_lambda / sample_beta
# --------------------------------------------------------------------------------------------
def test_sample_lambda_range_and_type() -> None:
    g = _gen(0)
    for alpha in (0.05, 0.5, 1.0, 4.0, 50.0):
        for _ in range(50):
            lam = sample_lambda(alpha, g)
            assert isinstance(lam, float) and 0.5 <= lam <= 1.0


def test_sample_lambda_alpha_zero_is_one_without_draws() -> None:
    g = _gen(1)
    before = g.get_state()
    assert sample_lambda(0.0, g) == 1.0 and sample_lambda(0, g) == 1.0
    assert torch.equal(g.get_state(), before)
    assert torch.equal(sample_lambdas(0.0, 3, generator=g), torch.ones(3, dtype=torch.float64))


def test_sample_lambda_generator_reproducible_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    a = [sample_lambda(4.0, g) for g in [_gen(7)] for _ in range(5)]
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(999)  # the global seed must not matter
    b = [sample_lambda(4.0, g) for g in [_gen(7)] for _ in range(5)]
    assert a == b
    assert len(set(a)) == 5  # consecutive draws differ
    assert sample_lambda(4.0, _gen(8)) != a[0]
    # one draw of sample_lambdas(., 1) is the same stream as sample_lambda
    assert float(sample_lambdas(4.0, 1, generator=_gen(7))[0]) == a[0]


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf"), "four", True])
def test_sample_lambda_bad_alpha(alpha) -> None:
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(alpha, _gen(0))


def test_sample_beta_rejects_zero_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        sample_beta(0.0, 3)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 4.0])
def test_beta_moments_and_ks(alpha: float) -> None:
    n = 40_000
    b = sample_beta(alpha, n, generator=_gen(int(alpha * 10)))
    assert b.shape == (n,) and b.dtype == torch.float64
    assert bool(((b >= 0) & (b <= 1)).all())
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); standard errors of the sample moments
    var_theory = 1.0 / (4.0 * (2.0 * alpha + 1.0))
    assert abs(float(b.mean()) - 0.5) < 5 * math.sqrt(var_theory / n)
    # Var of the sample variance ~ (mu4 - sigma^4) / n; mu4 of Beta(a, a) below
    mu4 = 3.0 / (16.0 * (2 * alpha + 1) * (2 * alpha + 3))
    assert abs(float(b.var()) - var_theory) < 5 * math.sqrt((mu4 - var_theory**2) / n)
    lam = torch.maximum(b, 1 - b)
    if alpha == 1.0:  # Beta(1, 1) = U(0, 1) -> lambda ~ U(1/2, 1): mean 3/4, variance 1/48
        assert abs(float(lam.mean()) - 0.75) < 5 * math.sqrt(1 / 48 / n)
        assert abs(float(lam.var()) - 1 / 48) < 0.002
    if _stats is not None:
        assert _stats.kstest(b.numpy(), _stats.beta(alpha, alpha).cdf).pvalue > 1e-3
        # lambda = max(l, 1 - l) has CDF 2 I_x(a, a) - 1 on [1/2, 1]
        folded_cdf = lambda x: 2.0 * _betainc(alpha, alpha, x) - 1.0  # noqa: E731
        lams = sample_lambdas(alpha, n, generator=_gen(99)).numpy()
        assert _stats.kstest(lams, folded_cdf).pvalue > 1e-3


def test_tiny_and_large_alpha_are_finite() -> None:
    b = sample_beta(0.005, 2000, generator=_gen(3))
    assert bool(torch.isfinite(b).all())
    assert float((torch.maximum(b, 1 - b) > 0.999).float().mean()) > 0.9  # mass near {0, 1}
    big = sample_beta(200.0, 20_000, generator=_gen(4))
    assert abs(float(big.var()) - 1 / (4 * 401)) < 5e-5


# --------------------------------------------------------------------------------------------
# mix / mix_targets
# --------------------------------------------------------------------------------------------
def test_mix_hand_numbers_scalar_lambda() -> None:
    x_r = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x_m = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    y_r = torch.tensor([[1, 0, 0], [0, 1, 1]])
    y_m = torch.tensor([[0, 0, 1], [1, 1, 0]])
    x_r0, x_m0, y_r0, y_m0 = x_r.clone(), x_m.clone(), y_r.clone(), y_m.clone()
    x, y = mix(x_r, y_r, x_m, y_m, 0.75)
    # 0.75 * 1 + 0.25 * 5 = 2.0, 0.75 * 2 + 0.25 * 6 = 3.0, ...
    torch.testing.assert_close(x, torch.tensor([[2.0, 3.0], [4.0, 5.0]]))
    torch.testing.assert_close(y, torch.tensor([[0.75, 0.0, 0.25], [0.25, 1.0, 0.75]]))
    assert y.dtype == torch.get_default_dtype()
    assert torch.equal(x_r, x_r0) and torch.equal(x_m, x_m0) and torch.equal(y_r, y_r0) and torch.equal(y_m, y_m0)
    x1, y1 = mix(x_r, y_r, x_m, y_m, 1.0)
    assert torch.equal(x1, x_r) and torch.equal(y1, y_r.float())


def test_mix_soft_targets_and_per_sample_lambda() -> None:
    x_r = torch.ones(2, 3, 2, 2)
    x_m = torch.zeros(2, 3, 2, 2)
    x_m[1] = 4.0
    y_r = torch.tensor([[0.9, 0.1], [0.2, 0.6]], dtype=torch.float64)
    y_m = torch.tensor([[0.1, 0.3], [1.0, 0.0]], dtype=torch.float64)
    lam = torch.tensor([0.5, 0.8])
    x, y = mix(x_r, y_r, x_m, y_m, lam)
    # sample 0: 0.5*1 + 0.5*0 = 0.5 everywhere; sample 1: 0.8*1 + 0.2*4 = 1.6 everywhere
    torch.testing.assert_close(x[0], torch.full((3, 2, 2), 0.5))
    torch.testing.assert_close(x[1], torch.full((3, 2, 2), 1.6))
    # y0 = 0.5*(0.9, 0.1) + 0.5*(0.1, 0.3) = (0.5, 0.2); y1 = 0.8*(0.2, 0.6) + 0.2*(1, 0) = (0.36, 0.48)
    torch.testing.assert_close(y, torch.tensor([[0.5, 0.2], [0.36, 0.48]], dtype=torch.float64))
    assert y.dtype == torch.float64
    torch.testing.assert_close(mix_targets(y_r, y_m, lam), y)
    torch.testing.assert_close(mix_targets(y_r, y_m, torch.tensor(0.5)), (y_r + y_m) / 2)


@pytest.mark.parametrize(
    "shapes, lam, match",
    [
        (((2, 3), (2, 4), (2, 5), (2, 5)), 0.7, "x_r and x_m"),
        (((2, 3), (2, 3), (2, 5), (2, 4)), 0.7, "y_r and y_m"),
        (((3, 3), (3, 3), (2, 5), (2, 5)), 0.7, "batch size"),
        (((2, 3), (2, 3), (2, 5), (2, 5)), torch.tensor([0.6, 0.7, 0.8]), "lam"),
        (((2, 3), (2, 3), (2, 5), (2, 5)), torch.ones(2, 1), "lam"),
        (((2, 3), (2, 3), (2, 5), (2, 5)), 1.5, "lam"),
        (((2, 3), (2, 3), (2, 5), (2, 5)), torch.tensor([0.5, -0.1]), "lam"),
        (((2, 3), (2, 3), (2, 5), (2, 5)), "half", "lam"),
        (((), (), (), ()), 0.5, "x_r"),
    ],
)
def test_mix_shape_errors(shapes, lam, match) -> None:
    xr, xm, yr, ym = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        mix(xr, yr, xm, ym, lam)


def test_mix_targets_errors() -> None:
    with pytest.raises(ValueError, match="y_r and y_m"):
        mix_targets(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="y_m"):
        mix_targets(torch.zeros(2, 3), torch.full((2, 3), float("nan")), 0.5)


# --------------------------------------------------------------------------------------------
# MinorityMixup
# --------------------------------------------------------------------------------------------
def _batch(b: int = 6, k: int = 4):
    g = _gen(5)
    return (torch.rand(b, 3, 4, 4, generator=g), (torch.rand(b, k, generator=g) < 0.5).float(),
            torch.rand(b, 3, 4, 4, generator=g), (torch.rand(b, k, generator=g) < 0.5).float())


def test_minority_mixup_batch_mode() -> None:
    x_r, y_r, x_m, y_m = _batch()
    mixer = MinorityMixup(alpha=4.0, seed=17)
    assert mixer.last_lam is None
    x, y = mixer(x_r, y_r, x_m, y_m)
    lam = mixer.last_lam
    assert isinstance(lam, float) and 0.5 <= lam <= 1.0
    assert lam == sample_lambda(4.0, _gen(17))  # the same stream as a generator seeded with 17
    torch.testing.assert_close(x, lam * x_r + (1 - lam) * x_m)
    torch.testing.assert_close(y, lam * y_r + (1 - lam) * y_m)
    mixer(x_r, y_r, x_m, y_m)
    assert mixer.last_lam != lam


def test_minority_mixup_elem_mode() -> None:
    x_r, y_r, x_m, y_m = _batch(b=8)
    mixer = MinorityMixup(alpha=1.0, mode="elem", generator=_gen(2))
    x, y = mixer(x_r, y_r, x_m, y_m)
    lam = mixer.last_lam
    assert isinstance(lam, torch.Tensor) and lam.shape == (8,) and lam.dtype == torch.float32
    assert bool(((lam >= 0.5) & (lam <= 1)).all()) and len(set(lam.tolist())) == 8
    for i in range(8):
        li = float(lam[i])
        torch.testing.assert_close(x[i], li * x_r[i] + (1 - li) * x_m[i])
        torch.testing.assert_close(y[i], li * y_r[i] + (1 - li) * y_m[i])


def test_minority_mixup_prob() -> None:
    x_r, y_r, x_m, y_m = _batch()
    never = MinorityMixup(prob=0.0, seed=0)
    x, y = never(x_r, y_r, x_m, y_m)
    assert never.last_lam == 1.0 and torch.equal(x, x_r) and torch.equal(y, y_r)
    half = MinorityMixup(mode="elem", prob=0.5, seed=0)
    lam = half.sample_lam(4000)
    frac_mixed = float((lam < 1).float().mean())
    assert abs(frac_mixed - 0.5) < 0.04, frac_mixed
    batch_half = MinorityMixup(prob=0.3, seed=1)
    applied = sum(batch_half.sample_lam(2) < 1.0 for _ in range(2000)) / 2000
    assert abs(applied - 0.3) < 0.04, applied
    no_alpha = MinorityMixup(alpha=0.0, mode="elem")
    assert torch.equal(no_alpha.sample_lam(3), torch.ones(3))


def test_minority_mixup_state_dict_round_trip() -> None:
    mixer = MinorityMixup(alpha=4.0, mode="elem", seed=3)
    mixer.sample_lam(5)
    state = mixer.state_dict()
    a = [mixer.sample_lam(5) for _ in range(3)]
    other = MinorityMixup(alpha=1.0, seed=100)
    other.load_state_dict(state)
    assert other.mode == "elem" and other.alpha == 4.0
    b = [other.sample_lam(5) for _ in range(3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "pair"}, "mode"), ({"prob": 1.5}, "prob"), ({"alpha": -1.0}, "alpha"),
     ({"seed": 1, "generator": torch.Generator()}, "seed or generator")],
)
def test_minority_mixup_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        MinorityMixup(**kwargs)


# --------------------------------------------------------------------------------------------
# PairedDataset + MixupCollate in a real DataLoader
# --------------------------------------------------------------------------------------------
class TinyDataset(Dataset):
    """20 items: two 3x4x4 views (view 1 = view 0 + 100) and a 5-class multi-hot target."""

    def __init__(self, n: int = 20, k: int = 5, views: int = 2) -> None:
        g = _gen(42)
        self.images = torch.rand(n, 3, 4, 4, generator=g)
        self.targets = (torch.rand(n, k, generator=g) < 0.4).float()
        self.views = views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        image = tuple(img + 100.0 * v for v in range(self.views)) if self.views > 1 else img
        return image, self.targets[i], i


class TwoTupleDataset(TinyDataset):
    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def _loader(dataset, num_workers: int, collate: MixupCollate, epoch: int = 0) -> DataLoader:
    paired = PairedSampler(ShardedRandomSampler(len(dataset), seed=1), MinoritySampler(len(dataset), seed=2))
    paired.update(torch.arange(1, len(dataset) + 1, dtype=torch.float64))
    paired.set_epoch(epoch)
    batches = PairedBatchSampler(paired, 6)
    return DataLoader(PairedDataset(dataset), batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_collate_in_workers_matches_main_process(mode: str) -> None:
    ds = TinyDataset()
    main = list(_loader(ds, 0, MixupCollate(alpha=4.0, mode=mode, seed=5)))
    workers = list(_loader(ds, 2, MixupCollate(alpha=4.0, mode=mode, seed=5)))
    assert len(main) == len(workers) == 4  # ceil(20 / 6)
    for a, b in zip(main, workers):
        assert isinstance(a, MixedBatch) and isinstance(b, MixedBatch)
        for field in MixedBatch._fields:
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    # independent check of the contents against the raw dataset
    all_lams = []
    for batch in main:
        bsz = batch.index_r.numel()
        assert batch.lam.shape == (bsz,) and batch.lam.dtype == torch.float32
        assert bool(((batch.lam >= 0.5) & (batch.lam <= 1)).all())
        if mode == "batch":
            assert len(set(batch.lam.tolist())) == 1
        for i in range(bsz):
            r, m = int(batch.index_r[i]), int(batch.index_m[i])
            lam = float(batch.lam[i])
            torch.testing.assert_close(batch.input[i], lam * ds.images[r] + (1 - lam) * ds.images[m])
            assert torch.equal(batch.target_r[i], ds.targets[r]) and torch.equal(batch.target_m[i], ds.targets[m])
            assert torch.equal(batch.view_r[0, i], ds.images[r] + 100.0)
        assert batch.view_r.shape == (1, bsz, 3, 4, 4)
        all_lams.extend(batch.lam.tolist())
    assert len(set(all_lams)) > 1  # lambdas differ between batches


def test_collate_lambda_depends_on_batch_indices_and_epoch() -> None:
    ds = TinyDataset(views=1)
    pd = PairedDataset(ds)
    collate = MixupCollate(seed=0)
    batch_a = [pd[(0, 1)], pd[(2, 3)]]
    batch_b = [pd[(4, 1)], pd[(2, 3)]]
    la = collate(batch_a).lam
    assert torch.equal(collate(batch_a).lam, la)  # a pure function of the indices
    assert not torch.equal(collate(batch_b).lam, la)
    collate.set_epoch(1)
    assert not torch.equal(collate(batch_a).lam, la)
    assert collate(batch_a).view_r is None
    assert not torch.equal(MixupCollate(seed=1)(batch_a).lam, la)
    assert torch.equal(MixupCollate(alpha=0.0)(batch_a).input, torch.stack([ds.images[0], ds.images[2]]))


def test_paired_dataset_appends_index_and_validates() -> None:
    ds = TwoTupleDataset()
    pd = PairedDataset(ds)
    (img_r, t_r, i_r), (img_m, t_m, i_m) = pd[(3, 7)]
    assert i_r == 3 and i_m == 7 and torch.equal(img_r, ds.images[3]) and torch.equal(t_m, ds.targets[7])
    assert len(pd) == 20
    with pytest.raises(ValueError, match="pair"):
        pd[3]
    out = MixupCollate(seed=0)([pd[(3, 7)], pd[(1, 2)]])
    assert out.index_r.tolist() == [3, 1] and out.index_m.tolist() == [7, 2]
    with pytest.raises(ValueError, match="batch"):
        MixupCollate()([])


def test_minority_items_read_without_views() -> None:
    """With a plain minority set, the random items keep their views and the minority items are
    single images: the same mixed batch as reading both through the views."""
    views, plain = TinyDataset(views=3), TinyDataset(views=1)
    both = PairedDataset(views)
    lean = PairedDataset(views, plain)
    (_, _, _), (img_m, t_m, i_m) = lean[(3, 7)]
    assert isinstance(img_m, torch.Tensor) and i_m == 7 and torch.equal(img_m, views.images[7])
    pairs = [(0, 5), (2, 3), (9, 9)]
    a = MixupCollate(seed=3)([both[p] for p in pairs])
    b = MixupCollate(seed=3)([lean[p] for p in pairs])
    for field in MixedBatch._fields:
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert b.view_r.shape == (2, 3, 3, 4, 4)
    with pytest.raises(ValueError, match="minority_dataset"):
        PairedDataset(views, TinyDataset(n=10))


def test_trainer_reads_minority_items_without_their_views(tmp_path) -> None:
    from balancemix_timm.config import load_config
    from balancemix_timm.trainer import Trainer
    from tests._tiny import tiny

    trainer = Trainer(load_config(None, tiny(data_root=str(tmp_path / "demo"), output_dir=str(tmp_path))))
    pairs = trainer._train_loader(0).dataset
    assert isinstance(pairs, PairedDataset)
    (img_r, _, _), (img_m, _, _) = pairs[(0, 1)]
    # training view + Eq. 9's two views + the un-augmented image (f(x) of Eq. 2 / 6)
    assert isinstance(img_r, tuple) and len(img_r) == 4
    # the minority item: the training view alone (its extra views would be dropped by the collate)
    assert isinstance(img_m, torch.Tensor) and img_m.shape == img_r[0].shape
    assert pairs.minority_dataset is trainer.minority_set and pairs.dataset is trainer.train_set


# --------------------------------------------------------------------------------------------
# One label dtype rule for the public API: bool, integer and floating {0, 1} labels
# --------------------------------------------------------------------------------------------
def _dense(y: torch.Tensor) -> torch.Tensor:
    return y if y.layout == torch.strided else y.to_dense()


def _in_layout_of(y: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``dense`` in ``y``'s layout (strided, sparse COO or CSR)."""
    return {torch.strided: dense, torch.sparse_coo: dense.to_sparse(),
            torch.sparse_csr: dense.to_sparse_csr()}[y.layout]


def _flip(y: torch.Tensor) -> torch.Tensor:
    """The rows of ``y`` in reverse order, in ``y``'s layout."""
    return _in_layout_of(y, _dense(y).flip(0))


def _label_calls() -> dict:
    """Every public function taking labels/targets, as ``labels -> result`` on fixed inputs."""
    from balancemix_timm import (
        BalanceMixEngine,
        BalanceMixLoss,
        BalanceMixOptions,
        BalanceMixRecipe,
        LabelGMM,
        asl_elementwise,
        balancemix_loss,
        bce_elementwise,
        clean_probability,
        minority_sampling_probs,
        refine_labels,
    )
    from balancemix_timm.losses_mlml import hill_elementwise, splc_corrected, splc_elementwise
    from balancemix_timm.methods.testimator import reweighted_bce_elementwise, select_clean, true_flip_rates
    from balancemix_timm.metrics import (
        average_precision,
        group_mean_average_precision,
        label_precision_recall,
        mean_average_precision,
        relabel_statistics,
    )
    from balancemix_timm.noise import mislabel, noise_rate_report, random_flip, single_positive
    from balancemix_timm.refine import clean_if_agrees
    from balancemix_timm.sampling.scores import class_confidences, instance_scores

    g = _gen(3)
    n, k = 48, 4
    truth = torch.rand(n, k, generator=g) < 0.4
    probs = torch.rand(n, k, generator=g)
    views = torch.rand(n, k, generator=g)
    logits = torch.randn(n, k, generator=g)
    losses = torch.rand(n, k, generator=g)
    state = torch.randint(0, 3, (n, k), generator=g)
    images = torch.rand(n, 3, 2, 2, generator=g)
    lam = torch.rand(n, generator=g) * 0.5 + 0.5
    idx = torch.arange(8)

    def t(x):
        return torch.as_tensor(x, dtype=torch.float64)

    return {
        "mix_targets": lambda y: mix_targets(y, _flip(y), lam),
        "mix": lambda y: mix(images, y, images.flip(0), _flip(y), 0.7)[1],
        "MinorityMixup": lambda y: MinorityMixup(alpha=4.0, seed=0)(images, y, images.flip(0), _flip(y))[1],
        "minority_sampling_probs": lambda y: minority_sampling_probs(probs, y),
        "refine_labels": lambda y: torch.stack([r.double() for r in refine_labels(y, probs, views, 0.7)]),
        "bce_elementwise": lambda y: bce_elementwise(logits, y),
        "asl_elementwise": lambda y: asl_elementwise(logits, y),
        "balancemix_loss": lambda y: balancemix_loss(logits, y, state, probs),
        "BalanceMixLoss": lambda y: BalanceMixLoss()(logits, y, state, probs),
        "reweighted_bce_elementwise": lambda y: reweighted_bce_elementwise(
            logits, y, torch.full((k,), 0.1), torch.full((k,), 0.2)),
        "clean_probability": lambda y: clean_probability(losses, y, min_group_size=2),
        "LabelGMM": lambda y: LabelGMM(min_group_size=2).fit_predict_clean_probability(losses, y),
        "select_clean": lambda y: select_clean(probs, y, min_group_size=2),
        "average_precision": lambda y: average_precision(probs, y),
        "mean_average_precision": lambda y: t(mean_average_precision(probs, y)),
        "group_mean_average_precision": lambda y: t(group_mean_average_precision(probs, y, {"a": idx[:2]})["a"]),
        "label_precision_recall": lambda y: t(label_precision_recall(y, y, truth)),
        "relabel_statistics": lambda y: t(relabel_statistics(y, y, truth)),
        "mislabel": lambda y: mislabel(y, 0.4, generator=_gen(1)),
        "random_flip": lambda y: random_flip(y, 0.4, generator=_gen(1)),
        "single_positive": lambda y: single_positive(y, generator=_gen(1)),
        "noise_rate_report": lambda y: t(list(noise_rate_report(y, truth).values())),
        "class_confidences": lambda y: torch.stack(class_confidences(probs, y)),
        "instance_scores": lambda y: instance_scores(probs, y, score="positive"),
        "clean_if_agrees": lambda y: clean_if_agrees(losses, probs, y),
        "true_flip_rates": lambda y: torch.stack(true_flip_rates(y, truth)),
        "hill_elementwise": lambda y: hill_elementwise(logits, y),
        "splc_elementwise": lambda y: splc_elementwise(logits, y),
        "splc_corrected": lambda y: splc_corrected(logits, y).double(),
        "BalanceMixEngine.bce_from_probs": lambda y: BalanceMixEngine.bce_from_probs(probs, y),
        "BalanceMixRecipe": lambda y: BalanceMixRecipe(y, BalanceMixOptions(), device="cpu").engine.mixed_targets(
            idx, idx.flip(0), 0.7),
        "BalanceMix": lambda y: BalanceMixEngine(y).mixed_targets(idx, idx.flip(0), 0.7),
        "BalanceMix.loss": lambda y: BalanceMixEngine(truth).loss(logits[:8], _in_layout_of(y, _dense(y)[:8]), idx),
    }, truth


_LABEL_DTYPES = [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float16, torch.float64]


def _sparse(layout: str):
    """``labels -> labels`` in the sparse ``layout`` (strided: unchanged)."""
    return {"strided": lambda y: y, "sparse_coo": lambda y: y.to_sparse(),
            "sparse_csr": lambda y: y.to_sparse_csr()}[layout]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["strided", "sparse_coo", "sparse_csr"])
@pytest.mark.parametrize("dtype", _LABEL_DTYPES)
def test_every_public_label_function_accepts_bool_integer_and_float_labels(dtype, layout) -> None:
    """Labels of every dtype, dense or sparse (densified), give the float32 labels' result."""
    calls, truth = _label_calls()
    tol = 1e-3 if dtype == torch.float16 else 1e-5  # half labels are mixed in half precision
    as_layout = _sparse(layout)
    for name, call in calls.items():
        expected = call(truth.float())
        got = call(as_layout(truth.to(dtype)))
        assert got.shape == expected.shape, name
        assert got.dtype.is_floating_point or got.dtype in (dtype, expected.dtype), name  # noise keeps it
        torch.testing.assert_close(got.double(), expected.double(), rtol=tol, atol=tol, msg=name)


def test_mixed_bool_labels_are_float() -> None:
    y_r = torch.tensor([[True, False], [False, False]])
    y_m = torch.tensor([[False, True], [True, True]])
    out = mix_targets(y_r, y_m, 0.75)
    assert out.dtype == torch.get_default_dtype()
    assert out.tolist() == [[0.75, 0.25], [0.25, 0.25]]
    with pytest.raises(ValueError, match="y_r must be real-valued"):
        mix_targets(torch.zeros(2, 2, dtype=torch.complex64), torch.zeros(2, 2), 0.5)
