"""Hill and SPLC (Zhang et al., arXiv:2112.07368): losses against hand computations from the
paper's formulas (NumPy float64, written with probabilities and logarithms, not with the
implementation's softplus form), gradients, SPLC's correction schedule, and 1-epoch runs."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from balancemix_timm.config import TrainConfig, load_config
from balancemix_timm.losses_mlml import (
    focal_margin_positive,
    hill_elementwise,
    hill_negative,
    splc_corrected,
    splc_elementwise,
)
from balancemix_timm.methods import METHODS, MethodContext
from balancemix_timm.methods.hill import HillMethod
from balancemix_timm.methods.splc import SPLCMethod
from balancemix_timm.trainer import train
from tests._tiny import tiny

# Logits with edge cases: 0 (p = 1/2), the margin (p_m = 1/2), large |x| both ways.
X = np.array([-40.0, -8.0, -1.0, 0.0, 0.3, 1.0, 2.5, 8.0, 40.0])
TAU = 0.6


# ---------------------------------------------------------------------------- hand formulas
def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def focal_margin_np(x, m=1.0, g=2.0):
    """-(1 - p_m)^gamma log(p_m), p_m = sigmoid(x - m) (the paper's focal margin loss)."""
    x = np.asarray(x, dtype=np.float64)
    pm, one_minus_pm = sig(x - m), sig(m - x)  # 1 - sigmoid(z) = sigmoid(-z), exact in float64
    return -(one_minus_pm ** g) * np.log(pm)


def hill_neg_np(x, lamb=1.5):
    """(lambda - p) p^2 (the paper's Hill loss of a negative)."""
    p = sig(x)
    return (lamb - p) * p ** 2


def focal_neg_np(x, g=2.0):
    """-p^gamma log(1 - p) (focal loss of a negative, SPLC's negative term)."""
    return -(sig(x) ** g) * np.log(sig(-np.asarray(x, dtype=np.float64)))


def splc_np(x, y, tau=TAU, m=1.0, g=2.0, correct=True, corrected_margin=True):
    """Per-entry loop: y L+ + (1 - y) [L+ if correct and p > tau else L-_focal]."""
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    out = np.empty(x.shape)
    for i in np.ndindex(x.shape):
        p = float(sig(x[i]))
        pos = float(focal_margin_np(x[i], m, g))
        if correct and y[i] < 1 and p > tau:
            neg = pos if corrected_margin else float(-(sig(-x[i]) ** g) * math.log(p))
        else:
            neg = float(focal_neg_np(x[i], g))
        out[i] = y[i] * pos + (1 - y[i]) * neg
    return out


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def close(got, want, rel=1e-9, abs_=1e-12):
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=rel, atol=abs_)


# ---------------------------------------------------------------------------- Hill
def test_focal_margin_positive_matches_the_formula():
    close(focal_margin_positive(t64(X)), focal_margin_np(X))
    close(focal_margin_positive(t64(X), margin=0.5, gamma=0.0), -np.log(sig(X - 0.5)))
    # at x = m: p_m = 1/2, loss = 0.25 log 2
    assert float(focal_margin_positive(t64([1.0]))) == pytest.approx(0.25 * math.log(2), rel=1e-12)
    # no -inf / nan far on the wrong side (the reference's log(sigmoid) underflows in float32)
    far = focal_margin_positive(torch.tensor([-200.0]))
    assert torch.isfinite(far).all() and float(far) == pytest.approx(201.0, rel=1e-6)


def test_hill_negative_matches_the_formula_and_its_range():
    close(hill_negative(t64(X)), hill_neg_np(X))
    close(hill_negative(t64(X), lamb=2.0), hill_neg_np(X, 2.0))
    assert float(hill_negative(t64([0.0]))) == pytest.approx((1.5 - 0.5) * 0.25, rel=1e-12)  # 0.25
    assert float(hill_negative(t64([-40.0]))) == pytest.approx(0.0, abs=1e-30)
    assert float(hill_negative(t64([40.0]))) == pytest.approx(0.5, rel=1e-12)  # (1.5 - 1) * 1


@pytest.mark.parametrize("y", [0.0, 1.0, 0.3, 0.75])
def test_hill_elementwise_binary_and_soft_targets(y):
    got = hill_elementwise(t64(X), t64(np.full_like(X, y)))
    close(got, y * focal_margin_np(X) + (1 - y) * hill_neg_np(X))


def test_hill_options_reach_the_loss_and_are_checked():
    y = np.array([1.0, 0.0, 0.5] * 3)
    got = hill_elementwise(t64(X), t64(y), lamb=2.0, margin=0.5, gamma=1.0)
    close(got, y * focal_margin_np(X, 0.5, 1.0) + (1 - y) * hill_neg_np(X, 2.0))
    with pytest.raises(ValueError, match="lamb"):
        hill_elementwise(t64(X), t64(y), lamb=0.5)
    with pytest.raises(ValueError, match="margin"):
        hill_elementwise(t64(X), t64(y), margin=-1.0)
    with pytest.raises(ValueError, match="targets"):
        hill_elementwise(t64(X), t64(y + 1.0))


def test_hill_negative_gradient_is_hill_shaped():
    """d/dx (1.5 - p) p^2 = 3 p^2 (1 - p)^2: zero at p = 0, largest at p = 1/2, below BCE's p."""
    x = torch.linspace(-12, 12, 2401, dtype=torch.float64, requires_grad=True)
    hill_negative(x).sum().backward()
    p = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, 3 * p ** 2 * (1 - p) ** 2, rtol=1e-10, atol=1e-15)
    assert float(x.grad[0]) < 1e-9  # p ~ 6e-6: no push on confident negatives' absence of signal
    assert float(x.grad[-1]) < 1e-9  # p ~ 1: likely missing positives are hardly pushed down
    assert abs(float(x.detach()[x.grad.argmax()])) < 0.011  # the top of the hill at p = 1/2
    assert float(x.grad.max()) == pytest.approx(3 / 16, rel=1e-6)
    # rises then falls: one maximum
    d = torch.diff(x.grad)
    top = int(x.grad.argmax())
    assert (d[:top] >= 0).all() and (d[top:] <= 0).all()
    # other lambda: (2 lambda p - 3 p^2) p (1 - p)
    x2 = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    hill_negative(x2, lamb=2.0).sum().backward()
    p2 = torch.sigmoid(x2.detach())
    torch.testing.assert_close(x2.grad, (4 * p2 - 3 * p2 ** 2) * p2 * (1 - p2), rtol=1e-10, atol=1e-15)


def test_focal_margin_weight_is_differentiated():
    """d/dx [q^g softplus(m - x)], q = sigmoid(m - x) = -q^g [g (1 - q) softplus(m - x) + q]:
    the focal weight is not detached (as in the reference code)."""
    x = t64(X).requires_grad_(True)
    focal_margin_positive(x).sum().backward()
    q = sig(1.0 - X)
    s = -np.log(sig(X - 1.0))
    close(x.grad, -(q ** 2) * (2 * (1 - q) * s + q))


# ---------------------------------------------------------------------------- SPLC
@pytest.mark.parametrize("y", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("correct", [False, True])
def test_splc_matches_the_formula(y, correct):
    yy = np.full_like(X, y)
    got = splc_elementwise(t64(X), t64(yy), correct=correct)
    close(got, splc_np(X, yy, correct=correct))


def test_splc_reference_code_variant_without_margin_on_corrected():
    y = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0])
    got = splc_elementwise(t64(X), t64(y), corrected_margin=False)
    close(got, splc_np(X, y, corrected_margin=False))
    assert not np.allclose(splc_np(X, y), splc_np(X, y, corrected_margin=False))  # the test can tell them apart


def test_splc_correction_switches_at_tau():
    t = math.log(TAU / (1 - TAU))  # logit of tau
    x = t64([t - 1e-6, t + 1e-6, t - 1e-6, t + 1e-6, t + 1e-6])
    y = t64([0.0, 0.0, 1.0, 1.0, 0.4])
    mask = splc_corrected(x, y, tau=TAU)
    assert mask.tolist() == [False, True, False, False, True]  # positives are never "corrected"
    got = splc_elementwise(x, y)
    pos, neg = focal_margin_np(x.numpy()), focal_neg_np(x.numpy())
    close(got[:2], [neg[0], pos[1]])  # a jump from the negative to the positive loss at tau
    xg = x[:2].clone().requires_grad_(True)
    splc_elementwise(xg, y[:2]).sum().backward()
    assert float(xg.grad[0]) > 0 > float(xg.grad[1])  # below tau pushed down, above tau pulled up
    close(got[4:], [pos[4]])  # soft target: the negative share moves to the positive loss
    close(splc_elementwise(x, y, tau=1.0), splc_np(x.numpy(), y.numpy(), correct=False))  # tau=1: never
    close(splc_elementwise(x, y, correct=False), splc_np(x.numpy(), y.numpy(), correct=False))


def test_splc_indicator_carries_no_gradient():
    x = t64([-2.0, 0.2, 0.5, 3.0]).requires_grad_(True)
    splc_elementwise(x, torch.zeros(4, dtype=torch.float64)).sum().backward()
    xp = t64([0.5, 3.0]).requires_grad_(True)
    focal_margin_positive(xp).sum().backward()
    xn = t64([-2.0, 0.2]).requires_grad_(True)
    focal_margin_positive(-xn, margin=0.0).sum().backward()  # sigmoid(x)^2 softplus(x)
    torch.testing.assert_close(x.grad, torch.cat([xn.grad, xp.grad]))


def test_half_precision_logits_give_float32():
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float16)
    y = torch.tensor([[1.0, 0.0]])
    assert hill_elementwise(x, y).dtype == torch.float32
    assert splc_elementwise(x, y).dtype == torch.float32


# ---------------------------------------------------------------------------- methods
def _stub_context(labels: torch.Tensor, method: str, **options) -> MethodContext:
    """What a method is built from, without a trainer (no data set, no model)."""
    cfg = TrainConfig(method=method, method_options=dict(options))
    model = torch.nn.Identity()
    return MethodContext(
        cfg=cfg, model=model, ddp_model=model, device=torch.device("cpu"), given_labels=labels,
        clean_labels=labels, true_labels_known=True, num_classes=labels.shape[1],
    )


def _batch(index_r, index_m, lam):
    return SimpleNamespace(
        index_r=torch.tensor(index_r), index_m=torch.tensor(index_m), lam=torch.full((len(index_r),), float(lam))
    )


LOGITS = t64([[1.5, -0.3, 2.0], [-1.0, 0.2, -4.0]])
SOFT = t64([[1.0, 0.0, 0.3], [0.0, 1.0, 0.7]])
LABELS = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.uint8)


def test_methods_registered():
    assert METHODS["hill"] is HillMethod and METHODS["splc"] is SPLCMethod


def test_hill_method_sums_labels_and_averages_the_batch():
    method = HillMethod(_stub_context(LABELS, "hill"))
    assert (method.lamb, method.margin, method.gamma) == (1.5, 1.0, 2.0)
    x, y = LOGITS.numpy(), SOFT.numpy()
    want = (y * focal_margin_np(x) + (1 - y) * hill_neg_np(x)).sum(1).mean()
    assert float(method.mixed_loss(LOGITS, SOFT, None)) == pytest.approx(want, rel=1e-10)
    method = HillMethod(_stub_context(LABELS, "hill", lamb=2, margin=0.5, gamma=0))
    want = (y * focal_margin_np(x, 0.5, 0.0) + (1 - y) * hill_neg_np(x, 2.0)).sum(1).mean()
    assert float(method.mixed_loss(LOGITS, SOFT, None)) == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="lamb"):
        HillMethod(_stub_context(LABELS, "hill", lamb=0.9))
    with pytest.raises(ValueError, match="does not take"):
        HillMethod(_stub_context(LABELS, "hill", tau=0.6))


def test_splc_method_corrects_only_from_change_epoch_on():
    method = SPLCMethod(_stub_context(LABELS, "splc", change_epoch=2))
    assert (method.tau, method.margin, method.gamma, method.corrected_margin) == (0.6, 1.0, 2.0, True)
    x, y = LOGITS.numpy(), SOFT.numpy()
    off = splc_np(x, y, correct=False).sum(1).mean()
    on = splc_np(x, y, correct=True).sum(1).mean()
    assert off != pytest.approx(on)  # logit 2.0 with target 0.3 (p = 0.88 > tau) is corrected
    batch = _batch([0, 1], [1, 0], 0.7)
    for epoch, want, active in ((0, off, 0), (1, off, 0), (2, on, 1), (5, on, 1)):
        method.set_epoch(epoch)
        assert float(method.mixed_loss(LOGITS, SOFT, batch)) == pytest.approx(want, rel=1e-10), epoch
        stats = method.end_epoch(epoch)
        assert stats["splc_active"] == active
        # corrected: entry (0, 2) (y = 0.3, p = 0.88); (0, 0) is a full positive
        assert stats["splc_corrected"] == (1 if active else 0)
        if active:  # label 2 of instance 0 is negative, of instance 1 positive: a true positive of the mix
            assert stats["splc_corrected_precision"] == 1.0
    default = SPLCMethod(_stub_context(LABELS, "splc"))
    assert default.change_epoch == 1 and not default.correcting
    default.set_epoch(1)
    assert default.correcting
    with pytest.raises(ValueError, match="tau"):
        SPLCMethod(_stub_context(LABELS, "splc", tau=1.5))
    with pytest.raises(ValueError, match="corrected_margin"):
        SPLCMethod(_stub_context(LABELS, "splc", corrected_margin=1))


# ---------------------------------------------------------------------------- through the trainer
TINY = tiny(epochs=1, max_steps_per_epoch=2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("demo"))


@pytest.mark.parametrize(
    "method, options",
    [("hill", {}), ("splc", {"change_epoch": 0, "tau": 0.5})],
)
def test_one_epoch_run(data_root, tmp_path: Path, method, options):
    cfg = load_config(None, dict(TINY, data_root=data_root, output_dir=str(tmp_path), run_name=method,
                                 method=method, method_options=options))
    last = train(cfg)["last"]
    assert last["epoch"] == 1
    assert math.isfinite(last["train_loss"]) and last["train_loss"] > 0 and 0.0 <= last["mAP"] <= 100.0
    if method == "splc":
        assert last["splc_active"] == 1 and last["splc_corrected"] > 0
        assert 0.0 <= last["splc_corrected_precision"] <= 1.0


def test_benchmark_titles_and_budgets():
    """Hill and SPLC have table titles and run in the weak pre-trained budgets, Hill in the strong
    full grid (SPLC leaves it: the weak page shows it dominated); the from-scratch budgets run
    exactly the paper's methods."""
    from balancemix_timm.benchmark import BUDGETS, METHOD_TITLES

    assert METHOD_TITLES["hill"] == "Hill" and METHOD_TITLES["splc"] == "SPLC"
    # "balancemix_paper" is BalanceMix under preset=paper (a grid method, not a trainer method).
    assert set(METHOD_TITLES) - {"balancemix_paper"} <= set(METHODS)
    paper = ("bce", "mixup", "coteaching", "asl", "testimator", "llr", "llct", "balancemix")
    for name, budget in BUDGETS.items():
        if budget.pretrain is None:
            assert budget.methods == paper, name
        elif name.startswith("weak_"):
            assert set(budget.methods) == set(paper) | {"hill", "splc", "balancemix_paper"}, name
    assert set(BUDGETS["strong_full"].methods) == set(paper) | {"hill"}
    assert set(BUDGETS["strong_quick"].methods) == {"bce", "mixup", "balancemix"}
