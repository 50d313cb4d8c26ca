"""Unaugmented training forwards one recorded input per item: the recipe's ``identical_views``
records exactly what the views-and-image records of the same tensor give, and the trainer
uses it when neither RandAugment nor Cutout is on."""

from __future__ import annotations

import pytest
import torch

from balancemix_timm import BalanceMixOptions, BalanceMixRecipe
from balancemix_timm.config import load_config
from balancemix_timm.trainer import Trainer
from tests._tiny import tiny

TABLES = ("probs", "view_mean", "seen")


@pytest.mark.parametrize("confidence_input", ["views", "image"])
@pytest.mark.parametrize("record_momentum", [0.0, 0.5])
def test_one_recorded_input_equals_every_view_and_the_image_of_it(confidence_input, record_momentum):
    gen = torch.Generator().manual_seed(3)
    labels = (torch.rand(30, 4, generator=gen) < 0.3).to(torch.uint8)
    options = BalanceMixOptions(num_views=2, confidence_input=confidence_input, record_momentum=record_momentum)
    every = BalanceMixRecipe(labels, options)
    one = BalanceMixRecipe(labels, options, identical_views=True)
    assert one.num_recorded_views == one.num_extra_views == 1 and one.view_transforms("t", "e") == ["e"]
    for _ in range(3):  # records over records (momentum)
        index = torch.randperm(30, generator=gen)[:12]
        p = torch.rand(1, 12, 4, generator=gen)
        every.record(index, p.expand(every.num_recorded_views, -1, -1))
        one.record(index, p)
    for name in TABLES:
        assert torch.equal(getattr(every.engine, name), getattr(one.engine, name)), name
    with pytest.raises(ValueError, match=r"V = 1 \(the image, which stands for every view"):
        one.record(torch.arange(3), torch.rand(3, 3, 4))


def _fit(tmp_path, name, monkeypatch=None, **overrides):
    cfg = load_config(None, tiny(data_root=str(tmp_path / "demo"), output_dir=str(tmp_path / "runs"), run_name=name,
                                 method="balancemix", epochs=1, warmup_epochs=1, randaugment=False, cutout=False,
                                 device="cpu", label_diagnostics=False, **overrides))
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("label_source", ["views", "epoch_pass"])
def test_unaugmented_training_records_the_image_once(tmp_path, monkeypatch, label_source):
    one = _fit(tmp_path, "one", label_source=label_source)
    recipe = one.method.recipe
    assert one.unaugmented_training and recipe.identical_views and recipe.num_recorded_views == 1
    if label_source == "views":
        assert one.train_set.transform.transforms == [one._eval_tf, one._eval_tf]  # trained view, then the image
    else:
        assert len(one.method.view_set.transform.transforms) == 1
    import balancemix_timm.methods.standard as standard

    monkeypatch.setattr(standard, "BalanceMixRecipe",  # every view forwarded
                        lambda *args, **kwargs: BalanceMixRecipe(*args, **{**kwargs, "identical_views": False}))
    every = _fit(tmp_path, "every", label_source=label_source)
    assert every.method.recipe.num_recorded_views == 3
    # Same inputs, forwarded in batches of another size: equal up to float rounding.
    for name in ("probs", "view_mean"):
        torch.testing.assert_close(getattr(one.method.engine, name), getattr(every.method.engine, name),
                                   rtol=0, atol=1e-5)
    assert torch.equal(one.method.engine.seen, every.method.engine.seen)
