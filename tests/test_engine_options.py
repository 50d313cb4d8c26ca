"""Engine options beyond the paper's text: f(x) of the image, clean-if-agrees, record momentum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.options import PRESETS, engine_preset
from balancemix_timm.refine import LabelState, clean_if_agrees


def _labels(n: int = 300, k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=g) < torch.tensor([0.5, 0.3, 0.1])[:k]).to(torch.uint8)


# ------------------------------------------------------------------ clean_if_agrees
def test_clean_if_agrees_matches_loss_below_ln2():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(50, 4, generator=g) < 0.4).to(torch.uint8)
    probs = torch.rand(50, 4, generator=g)
    probs[0, 0], probs[1, 1] = 0.5, 0.5  # exactly 0.5 agrees with nothing
    clean_prob = torch.rand(50, 4, generator=g)
    out = clean_if_agrees(clean_prob, probs, labels)
    # Independent computation: the BCE loss of the label is below ln 2.
    y, p = labels.numpy().astype(float), probs.double().numpy()
    loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    expect = np.where(loss < math.log(2) - 1e-12, 1.0, clean_prob.numpy())
    np.testing.assert_allclose(out.numpy(), expect)
    assert out[0, 0] == clean_prob[0, 0] and out[1, 1] == clean_prob[1, 1]
    assert out.dtype == clean_prob.dtype


def test_clean_if_agrees_rejects_bad_inputs():
    labels = torch.ones(2, 2)
    with pytest.raises(ValueError, match="probs"):
        clean_if_agrees(torch.ones(2, 2), torch.full((2, 2), 1.5), labels)
    with pytest.raises(ValueError, match="labels"):
        clean_if_agrees(torch.ones(2, 2), torch.ones(2, 2), torch.full((2, 2), 2.0))
    with pytest.raises(ValueError, match="shape"):
        clean_if_agrees(torch.ones(2, 3), torch.ones(2, 2), labels)


def test_engine_clean_if_agrees_keeps_agreeing_labels_of_a_noise_free_group():
    """A group without noise: every prediction agrees, yet the GMM splits the small losses."""
    labels = _labels()
    g = torch.Generator().manual_seed(2)
    conf = 0.55 + 0.44 * torch.rand(labels.shape, generator=g)  # all on the label's side
    probs = torch.where(labels.bool(), conf, 1 - conf)
    plain = BalanceMixEngine(labels, warmup_epochs=0, **engine_preset("paper"))
    ruled = BalanceMixEngine(labels, warmup_epochs=0, clean_if_agrees=True)
    for eng in (plain, ruled):
        eng.set_epoch(0)
        eng.record(torch.arange(len(labels)), probs[None])
        eng.refresh()
    assert (plain.state != LabelState.CLEAN).float().mean() > 0.1  # the paper's GMMs split it
    assert bool((ruled.state == LabelState.CLEAN).all())
    assert bool((ruled.clean_prob == 1).all())


def test_engine_clean_if_agrees_leaves_disagreeing_labels_to_the_gmm():
    labels = _labels()
    g = torch.Generator().manual_seed(3)
    noisy = torch.rand(labels.shape, generator=g) < 0.15
    conf = 0.9 + 0.09 * torch.rand(labels.shape, generator=g)
    probs = torch.where(labels.bool() ^ noisy, conf, 1 - conf)  # disagree exactly on the noise
    plain = BalanceMixEngine(labels, warmup_epochs=0, eps=1.0, clean_if_agrees=False)
    ruled = BalanceMixEngine(labels, warmup_epochs=0, eps=1.0, clean_if_agrees=True)
    for eng in (plain, ruled):
        eng.set_epoch(0)
        eng.record(torch.arange(len(labels)), probs[None])
        eng.refresh()
    torch.testing.assert_close(ruled.clean_prob[noisy], plain.clean_prob[noisy])
    assert bool((ruled.clean_prob[~noisy] == 1).all())


# ------------------------------------------------------------------ f(x) of the image
def test_image_probs_feed_the_gmm_and_sampler_views_feed_eq9():
    labels = _labels()
    n, k = labels.shape
    g = torch.Generator().manual_seed(4)
    image = torch.rand(n, k, generator=g)
    views = torch.rand(2, n, k, generator=g)
    eng = BalanceMixEngine(labels, warmup_epochs=0, eps=0.6, clean_if_agrees=False)
    eng.set_epoch(0)
    eng.record(torch.arange(n), views, image_probs=image)
    torch.testing.assert_close(eng.probs, image)
    torch.testing.assert_close(eng.view_mean, views.mean(0))
    eng.refresh()
    # Eq. 6: the losses are the image's BCE against the given labels.
    y = labels.double()
    expect = -(y * image.double().clamp(1e-7, 1 - 1e-7).log() + (1 - y) * (1 - image.double()).clamp(1e-7, 1).log())
    torch.testing.assert_close(eng.losses.double(), expect, atol=1e-5, rtol=1e-5)
    # Eq. 9: a re-labeled label follows the views' mean, never the image.
    relabeled = eng.state == LabelState.RELABELED
    assert bool(relabeled.any())
    vm = views.mean(0)
    assert bool(((vm[relabeled] > 0.6) | (vm[relabeled] < 0.4)).all())
    torch.testing.assert_close(eng.refined_labels[relabeled].float(), (vm[relabeled] > 0.5).float())


def test_image_probs_shape_is_checked():
    eng = BalanceMixEngine(_labels(n=10), warmup_epochs=0)
    with pytest.raises(ValueError, match="image_probs"):
        eng.record(torch.arange(4), torch.rand(2, 4, 3), image_probs=torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="image_probs"):
        eng.record(torch.arange(4), torch.rand(2, 4, 3), image_probs=torch.rand(4, 2))


# ------------------------------------------------------------------ record momentum
def test_record_momentum_is_an_ema_over_records():
    labels = _labels(n=6)
    eng = BalanceMixEngine(labels, warmup_epochs=0, record_momentum=0.75)
    idx = torch.tensor([1, 4])
    a, b = torch.rand(2, 3), torch.rand(2, 3)
    ia, ib = torch.rand(2, 3), torch.rand(2, 3)
    eng.record(idx, a[None], image_probs=ia)
    torch.testing.assert_close(eng.view_mean[idx], a)  # the first record is stored as is
    eng.record(idx, b[None], image_probs=ib)
    torch.testing.assert_close(eng.view_mean[idx], 0.75 * a + 0.25 * b)
    torch.testing.assert_close(eng.probs[idx], 0.75 * ia + 0.25 * ib)
    # Another sample's first record is not blended with the 0.5 placeholder.
    eng.record(torch.tensor([0]), b[:1][None])
    torch.testing.assert_close(eng.view_mean[0], b[0])


@pytest.mark.parametrize("m", [-0.1, 1.0, True, "0.5"])
def test_record_momentum_must_be_in_unit_interval(m):
    with pytest.raises(ValueError, match="record_momentum"):
        BalanceMixEngine(_labels(n=5), record_momentum=m)


# ------------------------------------------------------------------ checkpoints
def test_new_options_round_trip_and_a_state_without_them_is_refused():
    labels = _labels(n=20)
    eng = BalanceMixEngine(labels, warmup_epochs=0, clean_if_agrees=True, record_momentum=0.5)
    eng.set_epoch(0)
    eng.record(torch.arange(20), torch.rand(2, 20, 3), image_probs=torch.rand(20, 3))
    eng.refresh()
    sd = eng.state_dict()
    other = BalanceMixEngine(labels, warmup_epochs=0, clean_if_agrees=True, record_momentum=0.5)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.view_mean, eng.view_mean)
    torch.testing.assert_close(other.probs, eng.probs)
    with pytest.raises(ValueError, match="clean_if_agrees"):
        BalanceMixEngine(labels, warmup_epochs=0, clean_if_agrees=False, record_momentum=0.5).load_state_dict(sd)
    # A state without these options' keys is another configuration.
    older = eng.state_dict()
    del older["config"]["record_momentum"]
    with pytest.raises(ValueError, match="record_momentum: checkpoint None"):
        BalanceMixEngine(labels, warmup_epochs=0, clean_if_agrees=True, record_momentum=0.5).load_state_dict(older)


# ------------------------------------------------------------------ managed labels
def test_managed_labels_negative_never_touches_given_positives():
    labels = _labels()
    g = torch.Generator().manual_seed(5)
    noisy = torch.rand(labels.shape, generator=g) < 0.2
    conf = 0.9 + 0.09 * torch.rand(labels.shape, generator=g)
    probs = torch.where(labels.bool() ^ noisy, conf, 1 - conf)
    both = BalanceMixEngine(labels, warmup_epochs=0, eps=0.55, managed_labels="all")
    neg = BalanceMixEngine(labels, warmup_epochs=0, eps=0.55, managed_labels="negative")
    for eng in (both, neg):
        eng.set_epoch(0)
        eng.record(torch.arange(len(labels)), probs[None])
        eng.refresh()
    pos = labels.bool()
    assert bool((both.state[pos & noisy] != LabelState.CLEAN).any())  # the paper re-labels positives
    assert bool((neg.state[pos] == LabelState.CLEAN).all()) and bool((neg.clean_prob[pos] == 1).all())
    assert torch.equal(neg.refined_labels[pos], labels[pos])
    # Negatives are managed as before.
    torch.testing.assert_close(neg.clean_prob[~pos], both.clean_prob[~pos])
    assert torch.equal(neg.state[~pos], both.state[~pos])
    with pytest.raises(ValueError, match="managed_labels"):
        BalanceMixEngine(labels, managed_labels="positive")


def test_presets_are_the_defaults_of_every_front_end():
    """One declaration: the engine's, the trainer's and the ML-Decoder flags' defaults are the
    default preset's; the paper preset is the literal paper."""
    import argparse
    import inspect

    from balancemix_timm.config import TrainConfig
    from balancemix_timm.integrations import ml_decoder

    default = PRESETS["default"]
    sig = inspect.signature(BalanceMixEngine)
    for key, value in engine_preset("default").items():
        assert sig.parameters[key].default == value, key
    cfg = TrainConfig()
    for key, value in default.items():
        assert getattr(cfg, key) == value, key
    p = argparse.ArgumentParser()
    ml_decoder.add_args(p)
    from balancemix_timm.integrations.ml_decoder_flags import option_values_from_args

    values = option_values_from_args(p.parse_args([]))
    for key, value in default.items():
        if key != "confidence_input":  # left to the plugin, which falls back without an image transform
            assert values[key] == value, key
    assert PRESETS["paper"] == dict(confidence_input="image", clean_if_agrees=False, record_momentum=0.0,
                                    managed_labels="all")


def test_trainer_preset_paper_and_explicit_keys_win():
    from balancemix_timm.config import load_config

    cfg = load_config(None, {"preset": "paper"})
    assert {k: getattr(cfg, k) for k in PRESETS["paper"]} == PRESETS["paper"]
    cfg = load_config(None, {"preset": "paper", "clean_if_agrees": True})
    assert cfg.clean_if_agrees is True and cfg.managed_labels == "all"
    with pytest.raises(ValueError, match="preset"):
        load_config(None, {"preset": "best"})
