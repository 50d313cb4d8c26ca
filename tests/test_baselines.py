"""The paper's baselines as trainer methods: defining behaviour on hand-made inputs, smoke runs
through the real trainer on a tiny demo set, and exact resume of Co-teaching's two networks."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from balancemix_timm.config import TrainConfig, load_config
from balancemix_timm.methods import METHODS, MethodContext
from balancemix_timm.methods.asl import ASLMethod
from balancemix_timm.methods.coteaching import (
    coteaching_forget_rate,
    coteaching_losses,
    num_remember,
    small_loss_selection,
)
from balancemix_timm.methods.large_loss import (
    LLCtMethod,
    LLRMethod,
    large_loss_count,
    large_loss_modification,
    large_loss_rate,
)
from balancemix_timm.methods.testimator import (
    TEstimatorMethod,
    estimate_flip_rates,
    reweighted_bce_elementwise,
    reweighting_weights,
    select_clean,
    true_flip_rates,
)
from balancemix_timm.trainer import Trainer, train
from tests._tiny import tiny


# ---------------------------------------------------------------------------- helpers
def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(x: float, y: float) -> float:
    """-[y log s(x) + (1 - y) log(1 - s(x))] = y softplus(-x) + (1 - y) softplus(x)."""
    return y * softplus(-x) + (1 - y) * softplus(x)


def _stub_context(labels: torch.Tensor, method: str, **options) -> MethodContext:
    """What a method is built from, without a trainer (no data set, no model)."""
    cfg = TrainConfig(method=method, method_options=dict(options))
    model = torch.nn.Identity()
    return MethodContext(
        cfg=cfg, model=model, ddp_model=model, device=torch.device("cpu"), given_labels=labels,
        clean_labels=labels, true_labels_known=False, num_classes=labels.shape[1],
    )


def _batch(index_r, index_m, lam):
    return SimpleNamespace(
        index_r=torch.tensor(index_r), index_m=torch.tensor(index_m), lam=torch.full((len(index_r),), float(lam))
    )


def test_all_baselines_registered():
    assert {"asl", "coteaching", "llr", "llct", "testimator"} <= set(METHODS)


# ---------------------------------------------------------------------------- ASL
def test_asl_method_equals_the_formula():
    labels = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.uint8)
    method = ASLMethod(_stub_context(labels, "asl"))
    assert (method.gamma_pos, method.gamma_neg, method.clip) == (0.0, 4.0, 0.05)
    logits = torch.tensor([[1.5, -0.3, 2.0], [-1.0, 0.2, -4.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.7]], dtype=torch.float64)  # soft (Mixup)
    got = method.mixed_loss(logits, targets, None)
    per_sample = []
    for i in range(2):
        s = 0.0
        for k in range(3):
            p = sigmoid(float(logits[i, k]))
            pm = max(p - 0.05, 0.0)
            y = float(targets[i, k])
            s += -(y * (1 - p) ** 0 * math.log(p) + (1 - y) * pm ** 4 * math.log(1 - pm))
        per_sample.append(s)
    assert float(got) == pytest.approx(sum(per_sample) / 2, rel=1e-9)
    # options reach the loss
    method = ASLMethod(_stub_context(labels, "asl", gamma_neg=0, clip=0))
    plain = sum(bce(float(logits[i, k]), float(targets[i, k])) for i in range(2) for k in range(3)) / 2
    assert float(method.mixed_loss(logits, targets, None)) == pytest.approx(plain, rel=1e-9)
    with pytest.raises(ValueError, match="clip"):
        ASLMethod(_stub_context(labels, "asl", clip=1.0))
    with pytest.raises(ValueError, match="does not take"):
        ASLMethod(_stub_context(labels, "asl", gamma=1))


# ---------------------------------------------------------------------------- Co-teaching
def test_coteaching_forget_rate_ramp():
    r = [coteaching_forget_rate(e, forget_rate=0.4, num_gradual=10) for e in (0, 1, 5, 10, 30)]
    assert r == pytest.approx([0.0, 0.04, 0.2, 0.4, 0.4])
    assert coteaching_forget_rate(0, forget_rate=0.3, num_gradual=0) == 0.3
    assert [num_remember(10, 1 - f) for f in (0.0, 0.1, 0.3, 0.35, 1.0)] == [10, 9, 7, 6, 1]


def test_coteaching_exchanges_the_small_loss_instances():
    # per-instance sums: net 1 -> [5, 1, 3, 2, 4], net 2 -> [1, 5, 2, 4, 3]
    l1 = torch.tensor([[4.0, 1.0], [0.5, 0.5], [1.0, 2.0], [2.0, 0.0], [3.0, 1.0]], requires_grad=True)
    l2 = torch.tensor([[0.5, 0.5], [2.5, 2.5], [1.0, 1.0], [3.0, 1.0], [1.5, 1.5]], requires_grad=True)
    up1, up2, keep1, keep2 = coteaching_losses(l1, l2, 0.6, selection="instance")  # keep 3 of 5
    assert keep1.tolist() == [False, True, True, True, False]  # net 1's three smallest: 1, 2, 3
    assert keep2.tolist() == [True, False, True, False, True]  # net 2's: 1, 2, 3
    assert float(up1.detach()) == pytest.approx((5 + 3 + 4) / 3)  # net 1 trained on net 2's choice
    assert float(up2.detach()) == pytest.approx((5 + 4 + 2) / 3)  # net 2 trained on net 1's choice
    up1.backward()
    rows_with_grad = (l1.grad.abs().sum(1) > 0).tolist()
    assert rows_with_grad == keep2.tolist()
    assert l2.grad is None


def test_coteaching_label_selection_is_per_column():
    losses = torch.tensor([[0.1, 9.0], [5.0, 0.2], [0.3, 0.4], [4.0, 0.3]])
    keep = small_loss_selection(losses, 0.5, selection="label")  # 2 of 4 per column
    assert keep.tolist() == [[True, False], [False, True], [True, False], [False, True]]
    other = torch.zeros_like(losses)
    up1, _, _, _ = coteaching_losses(losses, other, 0.5, selection="label")
    # net 2 (all zeros, stable ties) keeps rows 0, 1 in both columns: (0.1 + 5.0 + 9.0 + 0.2) / 2
    assert float(up1) == pytest.approx((0.1 + 5.0 + 9.0 + 0.2) / 2)


# ---------------------------------------------------------------------------- LL-R / LL-Ct
_LOGITS = torch.tensor([[-5.0, 3.0, -1.0, 0.5], [1.0, -2.0, 4.0, 2.5]], dtype=torch.float64)
_LABELS = torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.uint8)


def test_large_loss_schedule():
    assert [large_loss_rate(e, 0.2) for e in (0, 1, 5)] == pytest.approx([0.0, 0.002, 0.01])
    assert large_loss_count(8, 6, 0.25) == 2
    assert large_loss_count(640, 500, 0.002) == 2  # ceil(1.28)
    assert large_loss_count(8, 1, 0.5) == 1  # never more than the candidates
    assert large_loss_count(8, 6, 0.0) == 0


def test_large_loss_modification_picks_top_negative_losses():
    losses = torch.tensor([[9.0, 1.0, 3.0], [2.0, 8.0, 0.5]])
    cand = torch.tensor([[False, True, True], [True, False, True]])
    final, sel = large_loss_modification(losses, -torch.ones_like(losses), cand, 2 / 6, scheme="reject")
    assert sel.tolist() == [[False, False, True], [True, False, False]]  # 3.0 and 2.0, not 9 / 8
    assert final.tolist() == [[9.0, 1.0, 0.0], [0.0, 8.0, 0.5]]
    final, _ = large_loss_modification(losses, -torch.ones_like(losses), cand, 2 / 6, scheme="correct")
    assert final.tolist() == [[9.0, 1.0, -1.0], [-1.0, 8.0, 0.5]]
    _, sel = large_loss_modification(losses, losses, cand, 0.5, scheme="reject", count="negatives")
    assert int(sel.sum()) == 2  # ceil(4 * 0.5)


@pytest.mark.parametrize("cls", [LLRMethod, LLCtMethod])
def test_llr_zeroes_and_llct_flips_the_largest_negative_losses(cls):
    method = cls(_stub_context(_LABELS, cls.name, delta_rel=25.0))  # 25 % of 8 entries at epoch 1
    targets = _LABELS.double()
    batch = _batch([0, 1], [0, 1], 1.0)
    entries = {(i, k): bce(float(_LOGITS[i, k]), float(targets[i, k])) for i in range(2) for k in range(4)}
    method.set_epoch(0)  # first epoch: plain BCE, mean over the 8 entries
    assert float(method.mixed_loss(_LOGITS, targets, batch)) == pytest.approx(sum(entries.values()) / 8, rel=1e-12)
    method.set_epoch(1)
    # negatives' losses = softplus(logit): largest are (0, 1) [x=3] and (1, 3) [x=2.5]; the
    # positive (0, 0) with x=-5 has the largest loss of all but is never a candidate.
    expected = dict(entries)
    for ik in ((0, 1), (1, 3)):
        expected[ik] = 0.0 if cls is LLRMethod else bce(float(_LOGITS[ik]), 1.0)
    got = method.mixed_loss(_LOGITS, targets, batch)
    assert float(got) == pytest.approx(sum(expected.values()) / 8, rel=1e-12)
    assert method.end_epoch(1)["ll_selected"] == 2


def test_large_loss_negatives_under_mixup():
    y = torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.uint8)  # row 0 random, row 1 its partner
    lam = 0.7
    targets = torch.tensor([[0.0, 0.3, 0.7]], dtype=torch.float64)
    batch = _batch([0], [1], lam)
    both = LLCtMethod(_stub_context(y, "llct"))
    cand, corr = both.candidates_and_corrected(targets, batch)
    assert cand.tolist() == [[True, False, False]] and corr.tolist() == [[1.0, 1.0, 1.0]]
    rnd = LLCtMethod(_stub_context(y, "llct", negatives="random"))
    cand, corr = rnd.candidates_and_corrected(targets, batch)
    assert cand.tolist() == [[True, True, False]]
    assert corr[0].tolist() == pytest.approx([0.7, 1.0, 0.7])  # y_R set to 1: lam + (1 - lam) y_M


# ---------------------------------------------------------------------------- T-estimator
def _synthetic_noisy(n: int = 20000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 4, (n,), generator=g)  # latent scene type -> correlated labels
    table = torch.tensor([
        [0.8, 0.7, 0.1, 0.1, 0.2, 0.05], [0.1, 0.2, 0.8, 0.7, 0.1, 0.3],
        [0.2, 0.1, 0.2, 0.1, 0.8, 0.7], [0.05, 0.1, 0.1, 0.2, 0.1, 0.1],
    ])
    clean = (torch.rand(n, 6, generator=g) < table[z]).to(torch.uint8)
    rho_pos = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25, 0.05])
    rho_neg = torch.tensor([0.05, 0.02, 0.1, 0.08, 0.03, 0.12])
    u = torch.rand(n, 6, generator=g)
    flip = torch.where(clean == 1, u < rho_pos, u < rho_neg)
    noisy = torch.where(flip, 1 - clean, clean)
    logits = 3.0 * (2 * clean.float() - 1) + torch.randn(n, 6, generator=g)  # a model fit to the clean labels
    return clean, noisy, torch.sigmoid(logits)


def test_testimator_recovers_known_flip_rates():
    clean, noisy, probs = _synthetic_noisy()
    true_pos, true_neg = true_flip_rates(noisy, clean)
    # oracle selection (exactly the unflipped labels)
    rp, rn, valid = estimate_flip_rates(noisy, noisy == clean)
    assert valid.all()
    assert (rp - true_pos).abs().max() < 0.03 and (rn - true_neg).abs().max() < 0.03
    # GMM selection on the losses of a model that learned the clean labels
    selected = select_clean(probs, noisy)
    assert (selected == (noisy == clean)).float().mean() > 0.99
    rp, rn, valid = estimate_flip_rates(noisy, selected)
    assert valid.all()
    assert (rp - true_pos).abs().max() < 0.03 and (rn - true_neg).abs().max() < 0.03
    # no noise -> no flips
    rp, rn, _ = estimate_flip_rates(clean, torch.ones_like(clean, dtype=torch.bool))
    assert rp.abs().max() < 1e-9 and rn.abs().max() < 1e-9
    # uncorrelated labels: no estimate with the significance guard; exactly constant
    # co-occurrence (singular normal matrix) never gives one
    g = torch.Generator().manual_seed(1)
    indep = (torch.rand(5000, 3, generator=g) < 0.3).to(torch.uint8)
    all_clean = torch.ones_like(indep, dtype=torch.bool)
    assert estimate_flip_rates(indep, all_clean)[2].all()
    assert not estimate_flip_rates(indep, all_clean, min_z=4.0)[2].any()
    assert estimate_flip_rates(noisy, selected, min_z=4.0)[2].all()
    grid = torch.tensor([[a, b] for a in (0, 1) for b in (0, 1)] * 10, dtype=torch.uint8)  # exactly independent
    assert not estimate_flip_rates(grid, torch.ones_like(grid, dtype=torch.bool))[2].any()


def test_testimator_reweighting_matches_hand_computation():
    rho_pos, rho_neg = torch.tensor([0.2, 0.0]), torch.tensor([0.1, 0.3])
    logits = torch.tensor([[0.5, -1.2], [-2.0, 30.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.25, 1.0]], dtype=torch.float64)
    got = reweighted_bce_elementwise(logits, targets, rho_pos, rho_neg)
    for i in range(2):
        for k in range(2):
            x, y = float(logits[i, k]), float(targets[i, k])
            rp, rn = float(rho_pos[k]), float(rho_neg[k])
            p = sigmoid(x)
            noisy1 = (1 - p) * rn + p * (1 - rp)  # (T^T [1 - p, p])_1
            noisy0 = (1 - p) * (1 - rn) + p * rp  # (T^T [1 - p, p])_0
            want = y * (p / noisy1) * softplus(-x) + (1 - y) * ((1 - p) / noisy0) * softplus(x)
            assert float(got[i, k]) == pytest.approx(want, rel=1e-9), (i, k)
    # zero rates: weights 1, plain BCE; weights carry no gradient
    w1, w0 = reweighting_weights(logits, torch.zeros(2), torch.zeros(2))
    assert torch.allclose(w1, torch.ones_like(w1)) and torch.allclose(w0, torch.ones_like(w0))
    x = logits.clone().requires_grad_(True)
    reweighted_bce_elementwise(x, targets, rho_pos, rho_neg).sum().backward()
    w1, w0 = reweighting_weights(logits, rho_pos, rho_neg)
    p = torch.sigmoid(logits)
    assert torch.allclose(x.grad, -(targets * w1 * (1 - p)) + (1 - targets) * w0 * p, atol=1e-12)
    with pytest.raises(ValueError, match="rho"):
        reweighting_weights(logits, torch.tensor([1.0, 0.0]), torch.zeros(2))


def test_testimator_state_round_trip():
    labels = torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8)
    a = TEstimatorMethod(_stub_context(labels, "testimator", warmup_epochs=0))
    a.rho_pos, a.rho_neg, a.estimated_epoch = (torch.tensor([0.1, 0.2], dtype=torch.float64),
                                               torch.tensor([0.0, 0.3], dtype=torch.float64), 0)
    b = TEstimatorMethod(_stub_context(labels, "testimator", warmup_epochs=0))
    b.load_state_dict(a.state_dict())
    assert b.estimated and torch.equal(b.rho_pos, a.rho_pos) and torch.equal(b.rho_neg, a.rho_neg)


# ---------------------------------------------------------------------------- through the trainer
TINY = tiny(epochs=1, max_steps_per_epoch=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("demo"))


def _cfg(data_root: str, out: Path, **kw):
    values = dict(TINY, data_root=data_root, output_dir=str(out))
    values.update(kw)
    return load_config(None, values)


@pytest.mark.parametrize(
    "method, extra, keys",
    [
        ("asl", {}, ()),
        ("llr", dict(epochs=2, method_options={"delta_rel": 10}), ("ll_rate", "ll_selected", "ll_selected_precision")),
        ("llct", dict(epochs=2, method_options={"negatives": "random"}), ("ll_rate", "ll_selected")),
        ("testimator", dict(epochs=2, method_options={"warmup_epochs": 1}), ("te_estimated", "te_rho_pos_mae")),
        ("coteaching", dict(method_options={"selection": "label"}), ("ct_forget_rate", "ct_kept_clean")),
    ],
)
def test_smoke_run(data_root, tmp_path, method, extra, keys):
    summary = train(_cfg(data_root, tmp_path, run_name=method, method=method, **extra))
    last = summary["last"]
    assert last["epoch"] == extra.get("epochs", 1)
    assert math.isfinite(last["train_loss"]) and 0.0 <= last["mAP"] <= 100.0
    for key in keys:
        assert key in last, key
    if method == "llr":
        assert last["ll_rate"] == pytest.approx(0.1) and last["ll_selected"] > 0
    if method == "testimator":
        assert last["te_estimated"] == 1


def test_coteaching_resume_is_exact(data_root, tmp_path):
    kw = dict(method="coteaching", epochs=2, method_options={"num_gradual": 1})
    full = Trainer(_cfg(data_root, tmp_path, run_name="full", **kw))
    m1, m2 = full.model.state_dict(), full.method.model2.state_dict()
    assert any(not torch.equal(m1[k], m2[k]) for k in m1 if m1[k].is_floating_point())  # two different inits
    full.fit()
    assert full.metrics[-1]["ct_forget_rate"] == pytest.approx(0.4)  # noise rate, reached after T_k = 1 epoch
    Trainer(_cfg(data_root, tmp_path, run_name="part", **kw)).fit(stop_after=1)
    resumed = Trainer(_cfg(data_root, tmp_path, run_name="part", **kw))
    resumed.fit(resume=resumed.run_dir / "last.pth")
    for a, b in ((full.model, resumed.model), (full.method.model2, resumed.method.model2)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    # One optimiser and schedule train both networks (network 2 is the method's extra module).
    assert full.trained_modules[1] is full.method.model2
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    assert full.metrics[-1]["mAP"] == resumed.metrics[-1]["mAP"]
    assert full.metrics[-1]["train_loss"] == resumed.metrics[-1]["train_loss"]
