"""Tests of the offline demo data set (balancemix_timm.data.demo).

Every property is recomputed from the written PNG / JSON files (and scikit-learn's digits), not
from the generator's own bookkeeping.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from balancemix_timm.data.demo import (
    DemoDatasetInfo,
    class_definitions,
    demo_group_thresholds,
    demo_positive_counts,
    main,
    make_demo_dataset,
)

SMALL = dict(num_train=60, num_val=20, image_size=32)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def _positives(coco: dict) -> dict[int, set[int]]:
    """image id -> set of category ids, from the annotations alone."""
    out: dict[int, set[int]] = defaultdict(set)
    for ann in coco["annotations"]:
        out[ann["image_id"]].add(ann["category_id"])
    return out


def _class_counts(coco: dict) -> dict[int, int]:
    counts = {c["id"]: 0 for c in coco["categories"]}
    for cats in _positives(coco).values():
        for c in cats:
            counts[c] += 1
    return counts


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoDatasetInfo, float]:
    """The default-size set (2,000 + 500 images), generated once; with its CPU time."""
    root = tmp_path_factory.mktemp("demo_default")
    start = time.process_time()
    info = make_demo_dataset(root)
    return info, time.process_time() - start


def test_default_generation_is_fast(default_set):
    _, cpu_seconds = default_set
    assert cpu_seconds < 15.0


def test_files_are_valid_coco(default_set):
    info, _ = default_set
    for split, folder, n in (("train", info.train_images, 2000), ("val", info.val_images, 500)):
        coco = _load(info.root, split)
        assert set(coco) >= {"images", "annotations", "categories"}
        assert len(coco["images"]) == n
        image_ids = [im["id"] for im in coco["images"]]
        assert len(set(image_ids)) == n
        sizes = {}
        for im in coco["images"]:
            assert set(im) >= {"id", "file_name", "width", "height"}
            path = folder / im["file_name"]
            assert path.suffix == ".png" and path.is_file()
            sizes[im["id"]] = (im["width"], im["height"])
        # open a sample of the PNGs: RGB, size as recorded
        for im in coco["images"][:: max(1, n // 25)]:
            with Image.open(folder / im["file_name"]) as img:
                assert img.mode == "RGB"
                assert img.size == (im["width"], im["height"]) == (64, 64)
        assert len(list(folder.glob("*.png"))) == n
        cat_ids = [c["id"] for c in coco["categories"]]
        assert len(set(cat_ids)) == len(cat_ids)
        assert all(isinstance(c["name"], str) and c["name"] for c in coco["categories"])
        # non-contiguous ids, as COCO's
        assert sorted(cat_ids) != list(range(min(cat_ids), min(cat_ids) + len(cat_ids)))
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for a in coco["annotations"]:
            assert set(a) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            assert a["image_id"] in sizes and a["category_id"] in set(cat_ids)
            assert a["iscrowd"] == 0 and a["area"] > 0
            x, y, w, h = a["bbox"]
            width, height = sizes[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= width + 1e-6 and y + h <= height + 1e-6
            assert a["area"] <= w * h + 1e-6
        # every image carries at least one label (COCO loaders drop unlabelled images)
        assert set(_positives(coco)) == set(image_ids)


def test_class_count_and_names(default_set):
    info, _ = default_set
    coco = _load(info.root, "train")
    assert len(coco["categories"]) >= 20
    assert info.num_classes == len(coco["categories"])
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert names == info.class_names
    assert len(set(names)) == len(names)
    # every digit is used by some class, and some digit is shared by several colours
    digits = [int(n.split("_")[1]) for n in names]
    assert set(digits) == set(range(10))
    assert max(np.bincount(digits)) >= 2


def test_long_tail_and_labels_per_image(default_set):
    info, _ = default_set
    coco = _load(info.root, "train")
    counts = _class_counts(coco)
    assert min(counts.values()) >= 1
    assert max(counts.values()) / min(counts.values()) >= 50
    per_image = [len(c) for c in _positives(coco).values()]
    assert np.mean(per_image) >= 2.0
    assert max(per_image) >= 4  # a spread of label counts, not a constant
    # the info object reports the counts found in the files
    by_id = [counts[c] for c in info.category_ids]
    assert by_id == info.train_positive_counts
    # some image holds a class twice (repeated objects)
    pairs = [(a["image_id"], a["category_id"]) for a in coco["annotations"]]
    assert len(pairs) > len(set(pairs))


def test_groups_non_empty(default_set):
    info, _ = default_set
    many, few = demo_group_thresholds(2000)
    assert (many, few) == info.thresholds
    counts = list(_class_counts(_load(info.root, "train")).values())
    n_many = sum(c > many for c in counts)
    n_few = sum(c < few for c in counts)
    n_medium = len(counts) - n_many - n_few
    assert n_many > 0 and n_medium > 0 and n_few > 0
    groups = info.class_groups()
    assert (len(groups["many"]), len(groups["medium"]), len(groups["few"])) == (
        n_many, n_medium, n_few)


def test_val_floor_and_profile(default_set):
    info, _ = default_set
    val_counts = _class_counts(_load(info.root, "val"))
    assert min(val_counts.values()) >= 10  # min_val_positives
    train_counts = _class_counts(_load(info.root, "train"))
    # the validation split follows the training profile: the head class is the same
    assert max(train_counts, key=train_counts.get) == max(val_counts, key=val_counts.get)


def test_source_digits_disjoint_and_consistent(default_set):
    info, _ = default_set
    targets = load_digits().target
    sources = {}
    for split in ("train", "val"):
        coco = _load(info.root, split)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        sources[split] = {a["source_index"] for a in coco["annotations"]}
        # the annotated digit is the one the category names
        for a in coco["annotations"]:
            assert targets[a["source_index"]] == int(names[a["category_id"]].split("_")[1])
    assert sources["train"].isdisjoint(sources["val"])
    meta = json.loads((info.root / "demo_meta.json").read_text())
    train_src, val_src = set(meta["train_source_indices"]), set(meta["val_source_indices"])
    assert train_src.isdisjoint(val_src)
    assert train_src | val_src == set(range(len(targets)))
    assert sources["train"] <= train_src and sources["val"] <= val_src


def _file_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_same_seed_identical_bytes_other_seed_differs(tmp_path):
    a = _file_bytes(make_demo_dataset(tmp_path / "a", seed=3, **SMALL).root)
    b = _file_bytes(make_demo_dataset(tmp_path / "b", seed=3, **SMALL).root)
    c = _file_bytes(make_demo_dataset(tmp_path / "c", seed=4, **SMALL).root)
    assert len(a) == 60 + 20 + 3
    assert a == b
    assert a.keys() == c.keys()
    differing = [k for k in a if a[k] != c[k]]
    assert "annotations/instances_train.json" in differing
    assert len(differing) > 70  # nearly every image changes


def test_reuse_and_overwrite(tmp_path):
    info = make_demo_dataset(tmp_path, seed=1, **SMALL)
    assert not info.reused
    ann = info.train_annotations
    before = ann.stat().st_mtime_ns
    again = make_demo_dataset(tmp_path, seed=1, **SMALL)
    assert again.reused and ann.stat().st_mtime_ns == before
    assert again.train_positive_counts == info.train_positive_counts
    with pytest.raises(ValueError, match="root"):
        make_demo_dataset(tmp_path, seed=2, **SMALL)
    other = make_demo_dataset(tmp_path, seed=2, overwrite=True, **SMALL)
    assert not other.reused
    assert json.loads((tmp_path / "demo_meta.json").read_text())["options"]["seed"] == 2


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="root"):
        make_demo_dataset(tmp_path, **SMALL)


@pytest.mark.parametrize("size", [32, 48])
def test_other_sizes_and_class_counts(tmp_path, size):
    info = make_demo_dataset(tmp_path, num_train=80, num_val=20, image_size=size, num_classes=30,
                             imbalance_ratio=20.0)
    coco = _load(tmp_path, "train")
    assert len(coco["categories"]) == 30
    with Image.open(info.train_images / coco["images"][0]["file_name"]) as img:
        assert img.size == (size, size)
    assert all(im["width"] == size for im in coco["images"])


def test_group_thresholds_hand_worked():
    assert demo_group_thresholds(82081) == (10000, 1000)
    # 10000 * 2000 / 82081 = 243.66..., 1000 * 2000 / 82081 = 24.37...
    assert demo_group_thresholds(2000) == (244, 24)
    assert demo_group_thresholds(100) == (12, 1)
    many, few = demo_group_thresholds(1)
    assert few >= 1 and many > few


def test_positive_counts_profile():
    counts = demo_positive_counts(2000, 24, imbalance_ratio=100.0, mean_labels=2.9)
    assert len(counts) == 24
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert abs(sum(counts) - 2.9 * 2000) <= 24  # rounding of each count
    assert 90 <= counts[0] / counts[-1] <= 110
    # exponential in rank: constant ratio between neighbours (up to rounding)
    ratios = np.array(counts[:10][:-1]) / np.array(counts[1:10])
    np.testing.assert_allclose(ratios, 100 ** (1 / 23), rtol=0.05)
    flat = demo_positive_counts(500, 20, imbalance_ratio=1.0, mean_labels=2.0)
    assert flat == [50] * 20


def test_class_definitions():
    classes = class_definitions(40)
    assert len(set(classes)) == 40  # all colour x digit combinations, no repeats
    assert class_definitions(24) == classes[:24]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_classes": 41}, "num_classes"),
        ({"num_classes": 1}, "num_classes"),
        ({"image_size": 8}, "image_size"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio"),
        ({"num_train": 0}, "num_train"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_demo_dataset(tmp_path, **{**SMALL, **kwargs})


def test_cli(tmp_path):
    info = main(["--root", str(tmp_path), "--num-train", "40", "--num-val", "20",
                 "--image-size", "32", "--num-classes", "20", "--seed", "5"])
    coco = _load(tmp_path, "val")
    assert len(coco["images"]) == 20 and len(coco["categories"]) == 20
    assert info.options["seed"] == 5


def test_incomplete_set_is_not_reused(tmp_path):
    info = make_demo_dataset(tmp_path, **SMALL)
    next(info.val_images.glob("*.png")).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        make_demo_dataset(tmp_path, **SMALL)
    assert not make_demo_dataset(tmp_path, overwrite=True, **SMALL).reused
