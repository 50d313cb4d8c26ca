"""Tests of the element-wise BCE / ASL losses and of the BalanceMix loss (Eq. 10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from balancemix_timm.loss import (
    BalanceMixLoss,
    asl_elementwise,
    balancemix_loss,
    bce_elementwise,
    label_weights,
)

C, R, U = 0, 1, 2


def _batch(b=6, k=5, seed=0, dtype=torch.float64, soft=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g, dtype=dtype) * 3
    if soft:
        targets = torch.rand(b, k, generator=g, dtype=dtype)
        targets[0, 0], targets[0, 1] = 0.0, 1.0
    else:
        targets = (torch.rand(b, k, generator=g) < 0.4).to(dtype)
    state = torch.randint(0, 3, (b, k), generator=g, dtype=torch.int8)
    clean_prob = torch.rand(b, k, generator=g, dtype=dtype)
    return logits, targets, state, clean_prob


# ---------------------------------------------------------------- independent references
def _bce_ref(x: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _asl_ref_np(x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8):
    """Our soft-target ASL in numpy float64: y interpolates the positive and negative terms."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    pm = np.maximum(p - clip, 0.0)
    pos = (1 - p) ** gamma_pos * np.log(np.maximum(p, eps))
    neg = pm ** gamma_neg * np.log(np.maximum(1 - pm, eps))
    return -(y * pos + (1 - y) * neg)


def _asl_mldecoder_form_np(x, y, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8):
    """ASL written as in the ASL paper / ML-Decoder: one weight (1 - p_t)^gamma_t on the sum."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    xs_neg = np.minimum(1 - p + clip, 1.0)
    ce = y * np.log(np.maximum(p, eps)) + (1 - y) * np.log(np.maximum(xs_neg, eps))
    pt = p * y + xs_neg * (1 - y)
    gamma = gamma_pos * y + gamma_neg * (1 - y)
    return -(ce * (1 - pt) ** gamma)


def _weight_ref(s: int, cp: float, mode: str) -> float:
    if s in (C, R):
        return 1.0
    return {"weight": cp, "drop": 0.0, "keep": 1.0}[mode]


def _balancemix_ref(logits, targets, state, clean_prob, mode="weight", elem=_bce_ref,
                    reduction="mean"):
    """Eq. 10 with a double loop over (b, k)."""
    x, y = logits.tolist(), targets.tolist()
    s, cp = state.tolist(), clean_prob.tolist()
    per_sample = []
    for b in range(len(x)):
        total = 0.0
        for k in range(len(x[0])):
            total += _weight_ref(int(s[b][k]), cp[b][k], mode) * elem(x[b][k], y[b][k])
        per_sample.append(total)
    if reduction == "mean":
        return sum(per_sample) / len(per_sample)
    if reduction == "sum":
        return sum(per_sample)
    return per_sample


# ---------------------------------------------------------------- BCE
def test_bce_matches_torch():
    logits, targets, _, _ = _batch(8, 6, seed=1)
    got = bce_elementwise(logits, targets)
    want = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_bce_hand_values():
    x = torch.tensor([[2.0, -1.0, 0.0, 100.0, -100.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.3, 0.0, 0.0, 1.0]], dtype=torch.float64)
    # log(1+e^-2); 0.3 + log(1+e^-1); log 2; stable at |x| = 100.
    want = torch.tensor([[0.1269280110429725, 0.6132616875182229, 0.6931471805599453,
                          100.0, 100.0]], dtype=torch.float64)
    assert torch.allclose(bce_elementwise(x, y), want, rtol=1e-12, atol=1e-12)
    # float32 with extreme logits stays finite.
    out32 = bce_elementwise(torch.tensor([[1e4, -1e4]]), torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(out32, torch.tensor([[1e4, 1e4]]))


def test_bce_accepts_integer_and_bool_targets():
    x = torch.tensor([[0.5, -0.5]])
    want = torch.tensor([[_bce_ref(0.5, 1), _bce_ref(-0.5, 0)]])
    for y in (torch.tensor([[1, 0]]), torch.tensor([[True, False]])):
        assert torch.allclose(bce_elementwise(x, y), want)


def test_bce_half_precision_computed_in_float32():
    logits, targets, _, _ = _batch(4, 3, seed=2, dtype=torch.float32)
    for dtype in (torch.float16, torch.bfloat16):
        out = bce_elementwise(logits.to(dtype), targets.to(dtype))
        assert out.dtype == torch.float32
        want = F.binary_cross_entropy_with_logits(logits.to(dtype).float(),
                                                  targets.to(dtype).float(), reduction="none")
        assert torch.allclose(out, want, atol=1e-6)


# ---------------------------------------------------------------- ASL
def test_asl_hand_values():
    ln3 = math.log(3.0)  # sigmoid(ln 3) = 0.75
    x = torch.tensor([[0.0, 0.0, -3.0, ln3, ln3]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.4]], dtype=torch.float64)
    want = torch.tensor([[
        0.6931471805599453,   # y=1, gamma_pos=0: -log 0.5
        0.02451505351223516,  # y=0: p_m = 0.45, 0.45^4 * -log 0.55
        0.0,                  # y=0: p = 0.047 < clip, p_m = 0
        0.2890738703186572,   # y=0: p_m = 0.7, 0.7^4 * -log 0.3
        0.4 * 0.2876820724517809 + 0.6 * 0.2890738703186572,  # soft target 0.4
    ]], dtype=torch.float64)
    assert torch.allclose(asl_elementwise(x, y), want, rtol=1e-12, atol=1e-14)
    # gamma_pos = 1: (1 - 0.75) * -log 0.75
    got = asl_elementwise(torch.tensor([ln3], dtype=torch.float64),
                          torch.tensor([1.0], dtype=torch.float64), gamma_pos=1.0)
    assert math.isclose(got.item(), 0.07192051811294523, rel_tol=1e-12)


@pytest.mark.parametrize("kw", [
    {},
    {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.1},
    {"gamma_pos": 0.0, "gamma_neg": 0.0, "clip": 0.0},
    {"gamma_pos": 0.5, "gamma_neg": 3.0, "clip": 0.0},
])
def test_asl_matches_numpy_reference(kw):
    logits, targets, _, _ = _batch(10, 7, seed=3)
    got = asl_elementwise(logits, targets, **kw).numpy()
    want = _asl_ref_np(logits.numpy(), targets.numpy(), **kw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.1}])
def test_asl_binary_targets_equal_mldecoder_form(kw):
    logits, targets, _, _ = _batch(10, 7, seed=4, soft=False)
    got = asl_elementwise(logits, targets, **kw).numpy()
    want = _asl_mldecoder_form_np(logits.numpy(), targets.numpy(), **kw)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_asl_soft_targets_differ_from_mldecoder_form():
    # Documented: the soft-target form interpolates the two terms; ML-Decoder's does not.
    x = np.array([math.log(3.0)])
    y = np.array([0.4])
    ours = asl_elementwise(torch.tensor(x), torch.tensor(y)).numpy()
    assert not np.allclose(ours, _asl_mldecoder_form_np(x, y))


def test_asl_without_focusing_or_clip_is_bce():
    logits, targets, _, _ = _batch(6, 4, seed=5)
    got = asl_elementwise(logits, targets, gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
    want = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(got, want, atol=1e-10)


def test_asl_log_clamped_at_eps():
    # log(sigmoid(-200)) underflows in float32: the clamp caps the loss at -log(eps).
    got = asl_elementwise(torch.tensor([[-200.0]]), torch.tensor([[1.0]]), eps=1e-8)
    assert math.isclose(got.item(), -math.log(1e-8), rel_tol=1e-5)


def test_asl_gradient_focal_weight_detached_by_default():
    ln3 = math.log(3.0)
    x = torch.tensor([ln3, ln3], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    asl_elementwise(x, y, gamma_pos=1.0).sum().backward()
    # p = 0.75, dp/dx = 0.1875. Negative: weight 0.7^4 constant: 0.2401 * 0.1875 / 0.3.
    # Positive: weight (1-p) constant: -(0.25) * (1 - p) = -0.0625.
    want = torch.tensor([0.2401 * 0.1875 / 0.3, -0.25 * 0.25], dtype=torch.float64)
    assert torch.allclose(x.grad, want, rtol=1e-12)


def test_asl_gradient_through_focal_weight():
    ln3 = math.log(3.0)
    x = torch.tensor([ln3], dtype=torch.float64, requires_grad=True)
    asl_elementwise(x, torch.tensor([0.0], dtype=torch.float64), focal_grad=True).backward()
    # d/dx[-p_m^4 log(1-p_m)] = 0.1875 * (4 p_m^3 * -log 0.3 + p_m^4 / 0.3), p_m = 0.7
    want = 0.1875 * (4 * 0.7 ** 3 * -math.log(0.3) + 0.7 ** 4 / 0.3)
    assert math.isclose(x.grad.item(), want, rel_tol=1e-12)
    logits, targets, _, _ = _batch(3, 4, seed=6)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: asl_elementwise(z, targets, gamma_pos=1.0, focal_grad=True), (logits,))


@pytest.mark.parametrize("kw,name", [
    ({"gamma_neg": -1.0}, "gamma_neg"), ({"gamma_pos": float("nan")}, "gamma_pos"),
    ({"clip": 1.0}, "clip"), ({"clip": -0.1}, "clip"), ({"eps": 0.0}, "eps"),
])
def test_asl_bad_options(kw, name):
    with pytest.raises(ValueError, match=name):
        asl_elementwise(torch.zeros(2, 2), torch.zeros(2, 2), **kw)


# ---------------------------------------------------------------- label weights
def test_label_weights_hand_example():
    state = torch.tensor([[C, R, U], [U, C, R]], dtype=torch.int8)
    cp = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.7, 0.4]])
    assert torch.equal(label_weights(state, cp), torch.tensor([[1, 1, 0.3], [0.2, 1, 1]]))
    assert label_weights(state, cp, ambiguous="drop").tolist() == [[1, 1, 0], [0, 1, 1]]
    assert label_weights(state, None, ambiguous="keep").tolist() == [[1, 1, 1], [1, 1, 1]]
    assert label_weights(state.long(), cp.double()).dtype == torch.float64


def test_label_weights_errors():
    state = torch.tensor([[C, R, U]])
    with pytest.raises(ValueError, match="clean_prob"):
        label_weights(state, None)
    with pytest.raises(ValueError, match="state"):
        label_weights(torch.tensor([[0, 3, 1]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="ambiguous"):
        label_weights(state, torch.zeros(1, 3), ambiguous="soft")
    with pytest.raises(ValueError, match="clean_prob"):
        label_weights(state, torch.zeros(1, 2))


# ---------------------------------------------------------------- Eq. 10
@pytest.mark.parametrize("mode", ["weight", "drop", "keep"])
@pytest.mark.parametrize("seed", [0, 1])
def test_balancemix_loss_matches_double_loop(mode, seed):
    logits, targets, state, clean_prob = _batch(7, 5, seed=seed)
    got = balancemix_loss(logits, targets, state, clean_prob, ambiguous=mode)
    want = _balancemix_ref(logits, targets, state, clean_prob, mode)
    assert math.isclose(got.item(), want, rel_tol=1e-12)


def test_balancemix_loss_modes_differ_as_expected():
    logits, targets, state, clean_prob = _batch(7, 5, seed=2)
    w = balancemix_loss(logits, targets, state, clean_prob, ambiguous="weight").item()
    d = balancemix_loss(logits, targets, state, clean_prob, ambiguous="drop").item()
    k = balancemix_loss(logits, targets, state, clean_prob, ambiguous="keep").item()
    assert d < w < k
    # keep == no state at all == plain summed BCE averaged over the batch.
    plain = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item() / 7
    assert math.isclose(k, plain, rel_tol=1e-12)
    assert math.isclose(balancemix_loss(logits, targets).item(), plain, rel_tol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_balancemix_loss_reductions(reduction):
    logits, targets, state, clean_prob = _batch(5, 4, seed=3)
    got = balancemix_loss(logits, targets, state, clean_prob, reduction=reduction)
    want = _balancemix_ref(logits, targets, state, clean_prob, reduction=reduction)
    assert torch.allclose(got, torch.as_tensor(want, dtype=torch.float64), rtol=1e-12)
    if reduction == "none":
        assert got.shape == (5,)


def test_balancemix_loss_asl_sum_is_mldecoder_criterion():
    # All labels clean + ASL + reduction="sum" == ML-Decoder's summed ASL (binary targets).
    logits, targets, _, _ = _batch(6, 5, seed=4, soft=False)
    state = torch.zeros(6, 5, dtype=torch.int8)
    got = balancemix_loss(logits, targets, state, None, base_loss="asl", reduction="sum",
                          ambiguous="drop")
    want = _asl_mldecoder_form_np(logits.numpy(), targets.numpy()).sum()
    assert math.isclose(got.item(), float(want), rel_tol=1e-10)


def test_balancemix_loss_asl_weighted_matches_double_loop():
    logits, targets, state, clean_prob = _batch(6, 5, seed=5)
    kw = {"gamma_neg": 2.0, "clip": 0.1}
    got = balancemix_loss(logits, targets, state, clean_prob, base_loss="asl",
                          base_loss_kwargs=kw)
    want = _balancemix_ref(logits, targets, state, clean_prob,
                           elem=lambda x, y: float(_asl_ref_np(x, y, **kw)))
    assert math.isclose(got.item(), want, rel_tol=1e-10)


def _hill_ref(x, y, lamb=1.5, margin=1.0, gamma=2.0):
    """Hill (Zhang et al. 2021) for one entry from its printed formulas, linear in a soft target."""
    p, p_m = 1 / (1 + math.exp(-x)), 1 / (1 + math.exp(-(x - margin)))
    return y * -((1 - p_m) ** gamma) * math.log(p_m) + (1 - y) * (lamb - p) * p * p


@pytest.mark.parametrize("kw", [{}, {"lamb": 2.0, "margin": 0.5, "gamma": 1.0}])
def test_balancemix_loss_hill_weighted_matches_double_loop(kw):
    logits, targets, state, clean_prob = _batch(6, 5, seed=7)
    got = balancemix_loss(logits, targets, state, clean_prob, base_loss="hill", base_loss_kwargs=kw)
    want = _balancemix_ref(logits, targets, state, clean_prob, elem=lambda x, y: _hill_ref(float(x), float(y), **kw))
    assert math.isclose(got.item(), want, rel_tol=1e-10)
    with pytest.raises(ValueError, match="Hill option"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss="hill", base_loss_kwargs={"lambda": 1.5})
    with pytest.raises(ValueError, match="lamb"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss="hill", base_loss_kwargs={"lamb": 0.5})


def test_balancemix_loss_callable_base_loss():
    logits, targets, state, clean_prob = _batch(4, 3, seed=6)
    got = balancemix_loss(logits, targets, state, clean_prob, base_loss=lambda x, y: (x - y) ** 2)
    want = _balancemix_ref(logits, targets, state, clean_prob, elem=lambda x, y: (x - y) ** 2)
    assert math.isclose(got.item(), want, rel_tol=1e-12)
    with pytest.raises(ValueError, match="base_loss"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss=lambda x, y: x.sum())


def test_gradients_flow_only_through_logits():
    logits, targets, state, clean_prob = _batch(5, 4, seed=7)
    logits.requires_grad_(True)
    targets.requires_grad_(True)
    clean_prob.requires_grad_(True)
    balancemix_loss(logits, targets, state, clean_prob).backward()
    assert targets.grad is None and clean_prob.grad is None
    # d/dx of w * BCE(x, y) averaged over B rows is w * (sigmoid(x) - y) / B.
    w = torch.where(state == U, clean_prob.detach(), torch.ones_like(clean_prob))
    want = w * (torch.sigmoid(logits.detach()) - targets.detach()) / 5
    assert torch.allclose(logits.grad, want, rtol=1e-12, atol=1e-15)


def test_half_precision_logits_and_cpu_state():
    logits, targets, state, clean_prob = _batch(4, 6, seed=8, dtype=torch.float32)
    out = balancemix_loss(logits.half(), targets, state, clean_prob)
    assert out.dtype == torch.float32
    want = _balancemix_ref(logits.half().float(), targets, state, clean_prob)
    assert math.isclose(out.item(), want, rel_tol=1e-5)


def test_module_wrapper():
    logits, targets, state, clean_prob = _batch(5, 4, seed=9)
    crit = BalanceMixLoss(base_loss="asl", ambiguous="drop", reduction="sum",
                          base_loss_kwargs={"gamma_neg": 2.0})
    got = crit(logits, targets, state, clean_prob)
    want = _balancemix_ref(logits, targets, state, clean_prob, mode="drop", reduction="sum",
                           elem=lambda x, y: float(_asl_ref_np(x, y, gamma_neg=2.0)))
    assert math.isclose(got.item(), want, rel_tol=1e-10)
    assert "asl" in repr(crit) and "drop" in repr(crit)
    assert len(crit.state_dict()) == 0
    with pytest.raises(ValueError, match="ambiguous"):
        BalanceMixLoss(ambiguous="bad")
    with pytest.raises(ValueError, match="reduction"):
        BalanceMixLoss(reduction="avg")
    with pytest.raises(ValueError, match="base_loss"):
        BalanceMixLoss(base_loss="focal")


def test_bad_inputs_raise():
    logits, targets, state, clean_prob = _batch(3, 4, seed=10)
    bad_logits = logits.clone()
    bad_logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logits"):
        balancemix_loss(bad_logits, targets, state, clean_prob)
    bad_logits[1, 2] = float("inf")
    with pytest.raises(ValueError, match="logits"):
        balancemix_loss(bad_logits, targets, state, clean_prob)
    with pytest.raises(ValueError, match="logits"):
        balancemix_loss(logits[0], targets[0], state[0], clean_prob[0])
    with pytest.raises(ValueError, match="logits"):
        balancemix_loss(logits.long(), targets, state, clean_prob)
    with pytest.raises(ValueError, match="targets"):
        balancemix_loss(logits, targets[:, :3], state, clean_prob)
    with pytest.raises(ValueError, match="targets"):
        balancemix_loss(logits, targets + 1, state, clean_prob)
    with pytest.raises(ValueError, match="state"):
        balancemix_loss(logits, targets, state[:2], clean_prob)
    with pytest.raises(ValueError, match="state"):
        balancemix_loss(logits, targets, state + 3, clean_prob)
    with pytest.raises(ValueError, match="state"):
        balancemix_loss(logits, targets, state.bool(), clean_prob)
    with pytest.raises(ValueError, match="clean_prob"):
        balancemix_loss(logits, targets, state, clean_prob[:, :2])
    with pytest.raises(ValueError, match="clean_prob"):
        balancemix_loss(logits, targets, state, clean_prob * 2)
    with pytest.raises(ValueError, match="clean_prob"):
        balancemix_loss(logits, targets, state, None)
    with pytest.raises(ValueError, match="ambiguous"):
        balancemix_loss(logits, targets, state, clean_prob, ambiguous="soft")
    with pytest.raises(ValueError, match="reduction"):
        balancemix_loss(logits, targets, state, clean_prob, reduction="avg")
    with pytest.raises(ValueError, match="base_loss"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss="ce")
    with pytest.raises(ValueError, match="base_loss_kwargs"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss_kwargs={"gamma_neg": 2})
    with pytest.raises(ValueError, match="base_loss_kwargs"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss="asl",
                        base_loss_kwargs={"gama_neg": 2})
    with pytest.raises(ValueError, match="gamma_neg"):
        balancemix_loss(logits, targets, state, clean_prob, base_loss="asl",
                        base_loss_kwargs={"gamma_neg": -2})
    with pytest.raises(ValueError, match="empty"):
        balancemix_loss(logits[:0], targets[:0], state[:0], clean_prob[:0])
    with pytest.raises(ValueError, match="logits"):
        bce_elementwise(torch.tensor([[float("nan")]]), torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="targets"):
        asl_elementwise(torch.zeros(1, 2), torch.tensor([[0, 2]]))


def test_validate_false_skips_value_checks():
    logits, targets, state, clean_prob = _batch(3, 4, seed=11)
    logits[0, 0] = float("nan")
    out = balancemix_loss(logits, targets, state, clean_prob, validate=False)
    assert torch.isnan(out)
    with pytest.raises(ValueError, match="state"):  # shapes are always checked
        balancemix_loss(logits, targets, state[:1], clean_prob, validate=False)


@pytest.mark.gpu
def test_cuda_logits_with_cpu_state():
    logits, targets, state, clean_prob = _batch(4, 5, seed=12, dtype=torch.float32)
    out = balancemix_loss(logits.cuda(), targets.cuda(), state, clean_prob)
    want = _balancemix_ref(logits, targets, state, clean_prob)
    assert out.device.type == "cuda"
    assert math.isclose(out.item(), want, rel_tol=1e-5)
