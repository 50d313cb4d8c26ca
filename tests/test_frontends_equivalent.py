"""The trainer's BalanceMix method and the ML-Decoder plugin train the same thing.

Both front ends drive the same engine (:class:`~balancemix_timm.engine.BalanceMixEngine`) but build
their own loaders, view sets, loss scaling and record calls. This runs both on the same tiny
demo set, from the same initial weights, with the same seeds and the same non-default options
(``clean_if_agrees``, ``record_momentum``, ``managed_labels``, ``confidence_input="image"``;
``views_for`` both ways, ``"relabel"`` without the momentum it refuses),
and checks that the engine states and the model weights agree after two epochs.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from balancemix_timm.config import load_config
from balancemix_timm.data import transforms as bm_transforms
from balancemix_timm.data.datasets import CocoMultiLabel
from balancemix_timm.integrations import ml_decoder as bm
from balancemix_timm.trainer import Trainer
from balancemix_timm.utils import epoch_seed, seed_everything
from tests._tiny import tiny

#: The options both front ends are given (trainer config field -> plugin flag).
OPTIONS: dict[str, Any] = dict(
    epochs=2,
    warmup_epochs=1,  # the refresh after epoch 1 applies label management to epoch 2
    eps=0.6,  # low enough that Eq. 9 re-labels on the tiny set
    alpha=4.0,
    num_views=2,
    clean_if_agrees=True,
    record_momentum=0.5,
    managed_labels="negative",
    confidence_input="image",
)

#: Per ``views_for``: what it changes in :data:`OPTIONS` (``"relabel"`` needs ``record_momentum=0``).
_VIEWS_FOR: dict[str, dict[str, Any]] = {"all": {}, "relabel": {"record_momentum": 0.0}}

ENGINE_TABLES = ("given_labels", "refined_labels", "state", "clean_prob", "probs", "view_mean", "losses", "seen")


class _Flip:
    """Horizontal flip of a PIL image: a deterministic augmentation (consumes no RNG)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return TF.hflip(img)


def _flipped_train_transform(image_size: int, *, normalize: Any = None, **_: Any) -> Callable[[Any], Any]:
    """Stand-in of :func:`~balancemix_timm.data.transforms.build_train_transform`: flip, then
    the evaluation transform. Deterministic, yet unlike the un-augmented image."""
    return bm_transforms.T.Compose([_Flip(), bm_transforms.build_eval_transform(image_size, normalize=normalize)])


def _plugin_args(cfg: Any) -> argparse.Namespace:
    """The patched ML-Decoder script's flags for ``cfg``'s options."""
    p = argparse.ArgumentParser()
    bm.add_args(p)
    return p.parse_args([
        "--balancemix", "--bm-alpha", str(cfg.alpha), "--bm-eps", str(cfg.eps),
        "--bm-warmup-epochs", str(cfg.warmup_epochs), "--bm-num-views", str(cfg.num_views),
        "--bm-reduction", "mean",  # the trainer's Eq. 10 is a batch mean (the plugin sums by default)
        "--bm-seed", str(cfg.seed), "--bm-device", "cpu", "--bm-checkpoint-dir", "",
        "--bm-clean-if-agrees" if cfg.clean_if_agrees else "--no-bm-clean-if-agrees",
        "--bm-record-momentum", str(cfg.record_momentum), "--bm-managed-labels", cfg.managed_labels,
        "--bm-confidence-input", cfg.confidence_input, "--bm-views-for", cfg.views_for,
    ])


def _optimizer(model: torch.nn.Module, cfg: Any, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """ML-Decoder's optimiser and schedule (Adam, decay only on >= 2-D weights, OneCycleLR)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.Adam([dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)],
                           lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                                                pct_start=cfg.onecycle_pct_start)
    return opt, sched


def _plugin_train(plugin: bm.BalanceMixPlugin, model: torch.nn.Module, cfg: Any) -> None:
    """The patched ML-Decoder loop (statement order of its ``train.py``) on the CPU, no AMP.

    The demo set's targets are already ``(B, K)``, so ML-Decoder's ``target.max(dim=1)[0]``
    collapse of its (3, K) targets is left out.
    """
    loader = plugin.train_loader(batch_size=cfg.batch_size)
    optimizer, scheduler = _optimizer(model, cfg, len(loader))
    plugin.attach(model, None, optimizer, scheduler, None)
    for epoch in range(cfg.epochs):
        seed_everything(epoch_seed(cfg.seed, epoch, 0))  # what the trainer does at an epoch start
        plugin.set_epoch(epoch)
        model.train()
        for input_data, target in loader:
            input_data, target = plugin.mix(input_data, target)
            output = model(input_data).float()
            loss = plugin.criterion(output, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            plugin.record()
        plugin.end_epoch(epoch)


@pytest.mark.parametrize("views_for", ["all", "relabel"])
def test_trainer_and_ml_decoder_plugin_train_the_same_thing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, views_for: str
) -> None:
    """Two epochs of the trainer (``Trainer.fit``) and of the plugin in the patched ML-Decoder
    loop give the same engine state and the same weights.

    Aligned on purpose, and why:

    * The training augmentation is a deterministic flip (the trainer's transform builder is
      replaced for this test), so the two front ends' loaders need not draw the global RNG in
      the same order (each builds its own view sets and worker seeding). The flip still differs
      from the un-augmented image (eval transform), so f(x) of the image (``engine.probs``) and
      the views' mean (``engine.view_mean``) are told apart and a swap would fail here.
    * The plugin runs with ``--bm-reduction mean``: the trainer's loss is Eq. 10's batch mean,
      the plugin's default is ML-Decoder's batch sum (a different gradient scale).
    * Same initial weights (a copy of the trainer's model), same optimiser and schedule (Adam,
      OneCycleLR, as ML-Decoder), EMA off, CPU, no AMP, one loader process.

    Everything else is each front end's own code: samplers, batch sampler, in-worker Mixup,
    the view sets, the no-grad view forward, the record and the refresh.
    """
    monkeypatch.setattr(bm_transforms, "build_train_transform", _flipped_train_transform)
    cfg = load_config(None, tiny(
        data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"), run_name="trainer",
        optimizer="adam", lr=1e-3, scheduler="onecycle", ema_decay=0.0, device="cpu", normalize="imagenet",
        label_diagnostics=False, **dict(OPTIONS, views_for=views_for, **_VIEWS_FOR[views_for]),
    ))
    trainer = Trainer(cfg)
    views = trainer.train_set.transform.transforms
    assert len(views) == 1 + cfg.num_views + 1 and isinstance(views[0].transforms[0], _Flip)
    assert not isinstance(views[-1].transforms[0], _Flip)  # the image: the eval transform
    model = copy.deepcopy(trainer.model)

    # The plugin's side: the same images with the training transform and the given labels.
    train_tf = _flipped_train_transform(cfg.image_size, normalize="imagenet")
    image_tf = bm_transforms.build_eval_transform(cfg.image_size, normalize="imagenet")
    root = Path(cfg.data_root)
    dataset = CocoMultiLabel(root / "train", root / "annotations" / "instances_train.json", transform=train_tf)
    dataset.set_labels(trainer.given_labels)  # the noisy labels the trainer injected
    plugin = bm.setup(_plugin_args(cfg), dataset, image_transform=image_tf)
    assert plugin is not None

    trainer.fit()
    _plugin_train(plugin, model, cfg)

    a, b = trainer.method.engine, plugin.engine
    assert a.config() == b.config()
    assert (b.clean_if_agrees, b.record_momentum, b.managed_labels) == (True, cfg.record_momentum, "negative")
    for name in ENGINE_TABLES:
        x, y = getattr(a, name), getattr(b, name)
        if x.dtype.is_floating_point:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(x, y), name
    torch.testing.assert_close(b.second_sampler.weights, a.second_sampler.weights, rtol=1e-5, atol=1e-7)
    assert [h["applied"] for h in a.history] == [h["applied"] for h in b.history] == [True, True]
    for ha, hb in zip(a.history, b.history):
        assert ha.keys() == hb.keys()
        for key in ha:
            assert hb[key] == pytest.approx(ha[key], rel=1e-5, abs=1e-7), key
    for (name, x), y in zip(trainer.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # The run exercised the options: f(x) of the image is not the views' mean, and label
    # management acted (on negatives only: every given positive is clean).
    assert not torch.allclose(a.probs, a.view_mean)
    # views_for="relabel": the last epoch forwarded the views of Eq. 9's candidates only
    assert torch.equal(a._epoch_viewed, b._epoch_viewed)
    assert bool(a._epoch_viewed.all()) == (views_for == "all")
    assert bool((a.clean_prob[a.given_labels == 1] == 1).all())
    assert int((a.state != 0).sum()) > 0
