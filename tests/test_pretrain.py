"""Offline pre-training: the corpus (its own images and label set) and the cached backbone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")

from balancemix_timm.benchmark import BUDGETS, RunSpec, run_config  # noqa: E402
from balancemix_timm.data.demo import class_definitions  # noqa: E402
from balancemix_timm.data.pretrain_corpus import (  # noqa: E402
    HUE_FAMILIES,
    PAIR_CLASS_NAMES,
    PRETRAIN_CLASS_NAMES,
    make_pretrain_corpus,
)
from balancemix_timm.models import create_model  # noqa: E402
from balancemix_timm.pretrain import MANIFEST_NAME, PretrainRecipe, ensure_pretrained, pretrained_dir  # noqa: E402


def test_corpus_is_deterministic_and_labels_are_its_own():
    a = make_pretrain_corpus(num_train=40, num_val=10, image_size=32, seed=3)
    b = make_pretrain_corpus(num_train=40, num_val=10, image_size=32, seed=3)
    c = make_pretrain_corpus(num_train=40, num_val=10, image_size=32, seed=4)
    assert a.digest == b.digest and np.array_equal(a.train_images, b.train_images)
    assert a.digest != c.digest
    assert a.train_images.shape == (40, 32, 32, 3) and a.train_images.dtype == np.uint8
    assert a.train_labels.shape == (40, 16) and set(np.unique(a.train_labels)) <= {0.0, 1.0}
    # Every image holds a digit; a hue label needs a digit (hues only come with objects).
    assert (a.train_labels[:, :10].sum(1) >= 1).all()
    # The label set is not the demo / benchmark's colour-digit classes.
    demo_names = {f"{c}_{d}" for c, d in class_definitions(40)}
    assert not demo_names & set(PRETRAIN_CLASS_NAMES)
    assert len(PRETRAIN_CLASS_NAMES) == 10 + len(HUE_FAMILIES)


def test_pair_labels_name_each_coloured_digit_and_leave_the_images_alone():
    sep = make_pretrain_corpus(num_train=60, num_val=10, image_size=32, seed=3)
    pairs = make_pretrain_corpus(num_train=60, num_val=10, image_size=32, seed=3, labels="pairs")
    assert np.array_equal(sep.train_images, pairs.train_images)  # the label set changes no pixel
    assert np.array_equal(pairs.train_labels[:, :16], sep.train_labels)
    assert pairs.class_names == PRETRAIN_CLASS_NAMES + PAIR_CLASS_NAMES and pairs.train_labels.shape == (60, 76)
    assert pairs.options["labels"] == "pairs" and pairs.digest != sep.digest
    n_h = len(HUE_FAMILIES)
    pair = pairs.train_labels[:, 16:].reshape(-1, 10, n_h)
    # A pair label implies its digit and its hue family; each hue label comes with a pair in it.
    assert (pair.max(2) <= pairs.train_labels[:, :10]).all()
    assert (pair.max(1) <= pairs.train_labels[:, 10:16]).all()
    assert np.array_equal(pair.max(1), pairs.train_labels[:, 10:16])
    assert PAIR_CLASS_NAMES[3 * n_h + list(HUE_FAMILIES).index("blue")] == "digit_3_hue_blue"
    demo_names = {f"{c}_{d}" for c, d in class_definitions(40)}
    assert not demo_names & set(PAIR_CLASS_NAMES)
    with pytest.raises(ValueError, match="labels"):
        make_pretrain_corpus(num_train=4, num_val=2, labels="colours")


def test_recipe_digest_names_each_label_set_and_precision():
    assert PretrainRecipe().digest() == PretrainRecipe(labels="pairs", amp=True).digest()  # the defaults
    recipes = [PretrainRecipe(labels=labels, amp=amp) for labels in ("separate", "pairs") for amp in (False, True)]
    names = {r.digest() for r in recipes}
    assert len(names) == 4
    with pytest.raises(ValueError, match="labels"):
        PretrainRecipe(labels="x").validate()


def test_bfloat16_pretraining_runs_with_pair_labels(tmp_path):
    recipe = PretrainRecipe(num_train=32, num_val=16, epochs=1, batch_size=16, randaugment=False, labels="pairs",
                            amp=True)
    path = ensure_pretrained(recipe, tmp_path)
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert len(manifest["corpus"]["class_names"]) == 76 and math.isfinite(manifest["accuracy"]["mAP"])
    state = torch.load(path, weights_only=True)
    assert state["fc.weight"].shape[0] == 76 and all(v.dtype != torch.bfloat16 for v in state.values())


def test_corpus_options_are_checked():
    with pytest.raises(ValueError, match="image_size"):
        make_pretrain_corpus(num_train=4, num_val=2, image_size=8)
    with pytest.raises(ValueError, match="num_val"):
        make_pretrain_corpus(num_train=4, num_val=0)


def test_pretraining_is_cached_with_a_manifest_and_loads_as_pretrained_path(tmp_path, caplog):
    recipe = PretrainRecipe(num_train=64, num_val=32, epochs=1, batch_size=16, randaugment=False)
    path = ensure_pretrained(recipe, tmp_path)
    entry = pretrained_dir(recipe, tmp_path)
    assert path == entry / "backbone.pth" and path.is_file()
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    assert manifest["timm_model"] == "resnet10t" and manifest["recipe"]["epochs"] == 1
    assert len(manifest["corpus"]["sha256"]) == 64
    assert 0.0 <= manifest["accuracy"]["mAP"] <= 100.0 and len(manifest["history"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # A second call trains nothing: same file, same bytes.
    before = path.read_bytes()
    with caplog.at_level("INFO", logger="balancemix_timm.pretrain"):
        assert ensure_pretrained(recipe, tmp_path) == path
    assert "cached" in caplog.text and path.read_bytes() == before
    # The fine-tuning side loads the backbone (its 16-class classifier is ignored).
    state = torch.load(path, weights_only=True)
    model = create_model("resnet10t", num_classes=5, pretrained_path=path)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, state[k]) for k, v in body.items())


def test_pretraining_is_reproducible(tmp_path):
    recipe = PretrainRecipe(num_train=32, num_val=16, epochs=1, batch_size=16, randaugment=True)
    a = torch.load(ensure_pretrained(recipe, tmp_path / "a"), weights_only=True)
    b = torch.load(ensure_pretrained(recipe, tmp_path / "b"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cache_entry_of_another_recipe_is_refused(tmp_path):
    recipe = PretrainRecipe(num_train=32, num_val=16, epochs=1, batch_size=16, randaugment=False)
    entry = pretrained_dir(recipe, tmp_path)
    entry.mkdir(parents=True)
    (entry / "backbone.pth").write_bytes(b"")
    (entry / MANIFEST_NAME).write_text(json.dumps({"recipe": {"model": "other"}}))
    with pytest.raises(ValueError, match="another recipe"):
        ensure_pretrained(recipe, tmp_path)


def test_recipe_is_validated():
    with pytest.raises(ValueError, match="epochs"):
        PretrainRecipe(epochs=0).validate()


def test_pretrained_budget_runs_fine_tune_the_cached_backbone(tmp_path):
    spec = RunSpec("bce", "mislabel40", 0)
    values = run_config(spec, BUDGETS["strong_quick"], tmp_path, pretrain_cache=tmp_path / "cache")
    recipe = PretrainRecipe(**BUDGETS["strong_quick"].pretrain)
    assert values["pretrained_path"] == str(pretrained_dir(recipe, tmp_path / "cache") / "backbone.pth")
    assert values["demo_min_val_positives"] == 40
    assert "pretrained_path" not in run_config(spec, BUDGETS["scratch_quick"], tmp_path)


def test_offline_pretrained_path_resolves_to_the_cached_backbone(tmp_path):
    from balancemix_timm.pretrain import OFFLINE, resolve_pretrained_path

    assert resolve_pretrained_path(None, "resnet10t", 32) is None
    assert resolve_pretrained_path("/weights/x.pth", "resnet10t", 32) == "/weights/x.pth"
    # A cached entry of the default recipe for this model and size is what "offline" names.
    recipe = PretrainRecipe(model="resnet10t", image_size=32)
    entry = pretrained_dir(recipe, tmp_path)
    entry.mkdir(parents=True)
    torch.save(create_model("resnet10t", num_classes=16).state_dict(), entry / "backbone.pth")
    (entry / MANIFEST_NAME).write_text(json.dumps({"recipe": recipe.__dict__, "accuracy": {"mAP": 50.0}}))
    assert resolve_pretrained_path(OFFLINE, "resnet10t", 32, tmp_path) == str(entry / "backbone.pth")


def test_pretraining_gives_the_same_weights_whatever_the_thread_count(tmp_path):
    recipe = PretrainRecipe(num_train=48, num_val=16, epochs=1, batch_size=16, randaugment=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = torch.load(ensure_pretrained(recipe, tmp_path / "a"), weights_only=True)
        assert torch.get_num_threads() == 2  # restored
        torch.set_num_threads(1)
        b = torch.load(ensure_pretrained(recipe, tmp_path / "b"), weights_only=True)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a[k], b[k]) for k in a)
