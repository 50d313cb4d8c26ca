"""Each BalanceMix option is declared once (``balancemix_timm.options``) and every front end
follows that declaration: the trainer's config, the ML-Decoder flags, the engine's keyword
defaults, the GMM's, and the presets."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest
import torch

from balancemix_timm.config import TrainConfig, load_config
from balancemix_timm.engine import BalanceMixEngine
from balancemix_timm.gmm import LabelGMM
from balancemix_timm.integrations import ml_decoder as bm
from balancemix_timm.integrations.ml_decoder_flags import option_values_from_args
from balancemix_timm.options import (
    ENGINE_OPTIONS,
    OPTION_DEFAULTS,
    PRESETS,
    BalanceMixOptions,
    check_option,
    option_spec,
    option_specs,
)
from balancemix_timm.recipe import BalanceMixRecipe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    bm.add_args(p)
    return p


def test_train_config_has_one_field_per_option_with_its_type_and_default():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for spec in option_specs():
        assert spec.name in fields, spec.name
        assert str(fields[spec.name].type) == spec.type
        assert getattr(TrainConfig(), spec.name) == spec.default
    assert TrainConfig().balancemix_options() == BalanceMixOptions()


def test_every_option_is_an_ml_decoder_flag_with_its_default_and_choices():
    p = _parser()
    actions = {a.dest: a for a in p._actions}
    for spec in option_specs():
        a = actions["bm_" + spec.name]
        assert a.default is None and f"(default {spec.default}," in a.help, spec.name  # None: not given
        assert a.option_strings[0] == "--bm-" + spec.name.replace("_", "-")
        if spec.choices is not None:
            assert tuple(a.choices) == spec.choices
    args = p.parse_args([])
    assert option_values_from_args(args) == {k: v for k, v in OPTION_DEFAULTS.items() if k != "confidence_input"}


def test_engine_and_gmm_keyword_defaults_are_the_declared_ones():
    engine = inspect.signature(BalanceMixEngine.__init__).parameters
    for name in ENGINE_OPTIONS:
        assert engine[name].default == OPTION_DEFAULTS[name], name
    gmm = inspect.signature(LabelGMM.__init__).parameters
    for spec in option_specs():
        if spec.group == "gmm":
            assert gmm[spec.name[len("gmm_"):]].default == spec.default, spec.name


def test_default_preset_is_the_declared_defaults():
    assert PRESETS["default"] == {k: OPTION_DEFAULTS[k] for k in PRESETS["default"]}
    assert set(PRESETS["paper"]) == set(PRESETS["default"])


@pytest.mark.parametrize("name, bad", [
    ("eps", 0.5), ("eps", 1.01), ("alpha", -1.0), ("alpha", float("inf")), ("warmup_epochs", 1.5),
    ("warmup_epochs", True), ("record_momentum", 1.0), ("num_views", 0), ("view_fraction", 0.0),
    ("label_management", "half"), ("clean_if_agrees", "yes"), ("gmm_min_group_size", 1), ("gmm_tol", -1e-3),
    ("sampler_temperature", 0.0),
])
def test_bad_values_are_refused_naming_the_option(name, bad):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        check_option(name, bad)
    with pytest.raises(ValueError, match=f"config {name} must be"):
        load_config(None, {name: bad})
    with pytest.raises(ValueError, match=name):
        BalanceMixOptions(**{name: bad})


def test_describe_states_the_allowed_values():
    assert option_spec("eps").describe() == "a number in (0.5, 1]"
    assert option_spec("num_views").describe() == "an integer >= 1"
    assert option_spec("managed_labels").describe() == "one of ('all', 'negative')"
    with pytest.raises(ValueError, match="not a BalanceMix option"):
        option_spec("epsilon")


def test_preset_applies_to_every_flag_not_given_and_a_given_flag_wins_even_at_its_default():
    paper = PRESETS["paper"]
    args = _parser().parse_args(["--bm-preset", "paper"])
    assert option_values_from_args(args)["clean_if_agrees"] is paper["clean_if_agrees"]
    # --bm-clean-if-agrees repeats the default (True) and is given: it wins over the preset.
    args = _parser().parse_args(["--bm-preset", "paper", "--bm-clean-if-agrees"])
    assert option_values_from_args(args)["clean_if_agrees"] is True
    args = _parser().parse_args(["--bm-preset", "paper", "--bm-managed-labels", "all", "--bm-eps", "0.9"])
    values = option_values_from_args(args)
    assert (values["managed_labels"], values["eps"], values["clean_if_agrees"]) == ("all", 0.9, False)


def test_recipe_builds_the_engine_the_options_describe():
    labels = (torch.rand(40, 5, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    options = BalanceMixOptions(alpha=2.0, eps=0.8, warmup_epochs=3, managed_labels="negative", gmm_tol=1e-3,
                                confidence_input="views", num_views=3)
    recipe = BalanceMixRecipe(labels, options, seed=5)
    eng = recipe.engine
    assert (eng.alpha, eng.eps, eng.warmup_epochs, eng.managed_labels, eng.seed) == (2.0, 0.8, 3, "negative", 5)
    assert eng.gmm_options["tol"] == 1e-3 and eng.gmm_options["min_group_size"] == OPTION_DEFAULTS["gmm_min_group_size"]
    assert recipe.num_extra_views == 3 and not recipe.image_view
    assert recipe.view_transforms("t", "e") == ["t", "t", "t"]
    image = BalanceMixRecipe(labels, options.replace(confidence_input="image"))
    assert image.view_transforms("t", "e") == ["t", "t", "t", "e"] and image.num_extra_views == 4
    epoch_pass = BalanceMixRecipe(labels, options.replace(label_source="epoch_pass"))
    assert epoch_pass.num_extra_views == 0


def test_recipe_records_views_then_image_and_the_first_ceil_f_b_instances():
    labels = torch.zeros(10, 3, dtype=torch.uint8)
    recipe = BalanceMixRecipe(labels, BalanceMixOptions(view_fraction=0.25, num_views=2))
    views = torch.rand(3, 8, 3, 4, 4)  # 2 views + the image, 8 random instances

    class Batch:
        index_r = torch.arange(8)
        view_r = views

    seen = {}

    def predict(v: torch.Tensor, count: int | None) -> torch.Tensor:
        seen["shape"], seen["count"] = tuple(v.shape), count
        probs = torch.stack([torch.full((8, 3), 0.1), torch.full((8, 3), 0.3), torch.full((8, 3), 0.9)])
        return probs[:, :count]

    recipe.record_batch(Batch(), predict)
    assert seen == {"shape": (3, 8, 3, 4, 4), "count": 2}  # ceil(0.25 * 8) = 2
    eng = recipe.engine
    assert eng.seen.tolist() == [True, True] + [False] * 8
    assert torch.allclose(eng.probs[:2], torch.full((2, 3), 0.9))  # f(x): the image
    assert torch.allclose(eng.view_mean[:2], torch.full((2, 3), 0.2))  # Eq. 9: the views' mean


def test_training_docs_list_every_option_as_declared():
    from pathlib import Path

    from balancemix_timm.options import options_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    block = text.split("<!-- options-table:start -->\n", 1)[1].split("<!-- options-table:end -->", 1)[0]
    assert block == options_markdown(), "docs/training.md's table differs from options_markdown(): paste it again"


def test_recipe_refuses_a_wrong_number_of_recorded_views_and_an_epoch_without_its_pass():
    labels = (torch.rand(12, 3, generator=torch.Generator().manual_seed(1)) < 0.4).to(torch.uint8)
    recipe = BalanceMixRecipe(labels, BalanceMixOptions(num_views=2, warmup_epochs=0))  # 2 views + the image
    with pytest.raises(ValueError, match=r"V = 3 \(2 views then the image\), got shape \(4, 12, 3\)"):
        recipe.record(torch.arange(12), torch.rand(4, 12, 3))  # the trained view passed along too
    epoch_pass = BalanceMixRecipe(labels, BalanceMixOptions(label_source="epoch_pass", warmup_epochs=0))
    assert epoch_pass.extra_view_transforms("t", "e") == [] and epoch_pass.view_transforms("t", "e") == ["t", "t", "e"]
    epoch_pass.set_epoch(0)
    with pytest.raises(RuntimeError, match="record_epoch_pass"):
        epoch_pass.end_epoch(0)
    order = list(epoch_pass.epoch_pass_sampler(12, 0))
    assert sorted(order) == list(range(12))
    batches = [(torch.rand(3, 6, 3, 4, 4), torch.tensor(part)) for part in (order[:6], order[6:])]
    epoch_pass.record_epoch_pass(batches, lambda views, count: torch.rand(views.shape[0], views.shape[1], 3))
    report, _ = epoch_pass.end_epoch(0)
    assert report.unseen == 0 and report.applied


def test_options_normalise_numbers_and_check_options_together():
    import numpy as np

    o = BalanceMixOptions(warmup_epochs=np.int64(3), alpha=2, gmm_max_iter=np.int32(5))
    assert (type(o.warmup_epochs), type(o.alpha), type(o.gmm_max_iter)) == (int, float, int)
    with pytest.raises(ValueError, match="view_fraction < 1 applies to label_source='views' only"):
        BalanceMixOptions(label_source="epoch_pass", view_fraction=0.5)
    with pytest.raises(ValueError, match="config view_fraction < 1"):
        load_config(None, {"label_source": "epoch_pass", "view_fraction": 0.5})
