"""Tests of CocoMultiLabel on a tiny COCO tree written here."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from balancemix_timm.data.datasets import (
    CocoMultiLabel,
)
from tests._datasets import (
    CATEGORIES,
    EXPECTED,
    IMAGES,
    _write_coco,
)


def test_coco_classes_sorted_by_category_id(coco):
    ds = CocoMultiLabel(*coco)
    assert ds.category_ids == [1, 3, 17, 90]
    assert ds.classes == ["person", "car", "cat", "toothbrush"]
    assert ds.num_classes == 4


def test_coco_labels_match_hand_expectation(coco):
    img_dir, ann = coco
    ds = CocoMultiLabel(img_dir, ann)
    assert len(ds) == 4
    assert ds.image_ids == [10, 11, 13, 14]
    assert ds.labels.dtype == torch.uint8
    want = torch.tensor([EXPECTED[i] for i in (10, 11, 13, 14)], dtype=torch.uint8)
    assert torch.equal(ds.labels, want)
    assert ds.image_paths == [os.path.join(str(img_dir), n) for n in
                              ("a.png", "b.png", "sub/d.png", "e.png")]
    assert ds.positive_counts().tolist() == [1, 2, 1, 2]


def test_coco_include_empty(coco):
    ds = CocoMultiLabel(*coco, include_empty=True)
    assert ds.image_ids == [10, 11, 12, 13, 14]
    want = torch.tensor([EXPECTED[i] for i in (10, 11, 12, 13, 14)], dtype=torch.uint8)
    assert torch.equal(ds.labels, want)
    _, target, index = ds[2]
    assert index == 2 and target.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_coco_crowd_and_annotation_order(coco):
    ds = CocoMultiLabel(*coco, include_crowd=False)
    assert ds.image_ids == [10, 11, 13]  # 14 had only a crowd annotation
    ds = CocoMultiLabel(*coco, image_order="annotations", include_empty=True)
    assert ds.image_ids == [13, 10, 11, 14, 12]  # first-annotation order, empty last
    assert ds.labels[0].tolist() == EXPECTED[13]
    with pytest.raises(ValueError, match="image_order"):
        CocoMultiLabel(*coco, image_order="random")


def test_coco_getitem_returns_matching_image_target_index(coco):
    ds = CocoMultiLabel(*coco)
    colours = {i: c for i, _, c in IMAGES}
    for idx in range(len(ds)):
        image, target, index = ds[idx]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert image.size == (6, 4)
        assert image.getpixel((3, 2)) == colours[ds.image_ids[idx]]
        assert target.dtype == torch.float32 and target.shape == (4,)
        assert target.tolist() == [float(v) for v in EXPECTED[ds.image_ids[idx]]]
        assert index == idx and isinstance(index, int)
    assert ds[-1][2] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_coco_grayscale_converted_to_rgb(tmp_path):
    img_dir, ann = _write_coco(tmp_path)
    Image.new("L", (6, 4), 77).save(img_dir / "a.png")
    ds = CocoMultiLabel(img_dir, ann)
    image, _, _ = ds[0]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (77, 77, 77)


def test_coco_transform_and_dataloader(coco):
    ds = CocoMultiLabel(*coco, transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False)))
    images, targets, index = batch
    assert images.shape == (3, 4, 6, 3)
    assert targets.shape == (3, 4) and targets.dtype == torch.float32
    assert index.tolist() == [0, 1, 2]
    assert images[1, 0, 0].tolist() == [0, 255, 0]


def test_coco_labels_override(coco):
    noisy = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    ds = CocoMultiLabel(*coco, labels=noisy.bool())
    assert torch.equal(ds.labels, noisy.to(torch.uint8))
    assert ds[1][1].tolist() == [0.0, 0.0, 0.0, 1.0]
    # annotation labels are kept for label precision / recall
    want = torch.tensor([EXPECTED[i] for i in (10, 11, 13, 14)], dtype=torch.uint8)
    assert torch.equal(ds.annotation_labels, want)
    assert ds.positive_counts().tolist() == [2, 1, 1, 2]
    assert ds.positive_counts(annotation=True).tolist() == [1, 2, 1, 2]
    # numpy float input holding 0/1 is accepted; the stored copy is independent
    arr = noisy.numpy().astype(np.float32)
    ds.set_labels(arr)
    arr[0, 0] = 0
    assert ds.labels[0, 0] == 1


def test_coco_labels_override_validation(coco):
    with pytest.raises(ValueError, match="shape"):
        CocoMultiLabel(*coco, labels=torch.zeros(5, 4))
    with pytest.raises(ValueError, match="shape"):
        CocoMultiLabel(*coco, labels=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="dimensions"):
        CocoMultiLabel(*coco, labels=torch.zeros(16))
    bad = torch.zeros(4, 4)
    bad[1, 2] = 0.5
    with pytest.raises(ValueError, match="binary"):
        CocoMultiLabel(*coco, labels=bad)
    with pytest.raises(ValueError, match="labels"):
        CocoMultiLabel(*coco, labels="not a matrix")


def test_coco_missing_file_error_names_path(coco):
    img_dir, ann = coco
    ds = CocoMultiLabel(img_dir, ann)
    missing = os.path.join(str(img_dir), "b.png")
    os.remove(missing)
    with pytest.raises(FileNotFoundError) as info:
        ds[1]
    assert missing in str(info.value) and "1" in str(info.value)
    ds[0]  # others still load
    with pytest.raises(FileNotFoundError) as info:
        ds.verify_files()
    assert missing in str(info.value) and "1 of 4" in str(info.value)


def test_coco_verify_files_lists_first_few(tmp_path):
    images = [(i, f"im{i}.png", (i, i, i)) for i in range(8)]
    anns = [(i, 1, 0) for i in range(8)]
    img_dir, ann = _write_coco(tmp_path, images=images, annotations=anns)
    ds = CocoMultiLabel(img_dir, ann)
    ds.verify_files()  # all present: no error
    for i in range(7):
        os.remove(img_dir / f"im{i}.png")
    with pytest.raises(FileNotFoundError) as info:
        ds.verify_files()
    msg = str(info.value)
    assert "7 of 8" in msg and "im0.png" in msg and "im4.png" in msg
    assert "im6.png" not in msg and "..." in msg


def test_coco_unreadable_file_error_names_path(coco):
    img_dir, ann = coco
    bad = img_dir / "e.png"
    bad.write_bytes(b"this is not a png")
    ds = CocoMultiLabel(img_dir, ann)
    with pytest.raises(OSError) as info:
        ds[3]
    assert str(bad) in str(info.value) and "3" in str(info.value)


def test_coco_empty_dataset(tmp_path):
    img_dir, ann = _write_coco(tmp_path, annotations=[])
    with pytest.raises(ValueError, match="empty"):
        CocoMultiLabel(img_dir, ann)
    assert len(CocoMultiLabel(img_dir, ann, include_empty=True)) == 5
    img_dir, ann = _write_coco(tmp_path / "none", images=[], annotations=[])
    with pytest.raises(ValueError, match="empty"):
        CocoMultiLabel(img_dir, ann, include_empty=True)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_coco_missing_top_level_key(tmp_path, key):
    img_dir, ann = _write_coco(tmp_path, drop_keys=(key,))
    with pytest.raises(ValueError, match=repr(key)):
        CocoMultiLabel(img_dir, ann)


def test_coco_malformed_entries(tmp_path):
    img_dir, ann = _write_coco(tmp_path, annotations=[(10, 5, 0)])
    with pytest.raises(ValueError, match="category id 5"):
        CocoMultiLabel(img_dir, ann)
    img_dir, ann = _write_coco(tmp_path, annotations=[(99, 1, 0)])
    with pytest.raises(ValueError, match="image id 99"):
        CocoMultiLabel(img_dir, ann)
    img_dir, ann = _write_coco(tmp_path, categories=CATEGORIES + [{"id": 1, "name": "x"}])
    with pytest.raises(ValueError, match="duplicate category id 1"):
        CocoMultiLabel(img_dir, ann)
    img_dir, ann = _write_coco(tmp_path, categories=[])
    with pytest.raises(ValueError, match="categories"):
        CocoMultiLabel(img_dir, ann)
    data = json.loads(ann.read_text())
    data["categories"] = CATEGORIES
    del data["annotations"][0]["category_id"]
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'category_id'"):
        CocoMultiLabel(img_dir, ann)
    ann.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoMultiLabel(img_dir, ann)
    ann.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        CocoMultiLabel(img_dir, ann)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoMultiLabel(img_dir, tmp_path / "nope.json")


# ------------------------------------------------------ splits' class lists
def test_check_same_classes_lists_differing_categories(tmp_path):
    from balancemix_timm.data.datasets import check_same_classes

    img_a, ann_a = _write_coco(tmp_path / "a", categories=[
        {"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"},
        {"id": 90, "name": "toothbrush"}])
    img_b, ann_b = _write_coco(tmp_path / "b", categories=[
        {"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 17, "name": "dog"},
        {"id": 90, "name": "toothbrush"}])
    a, b = CocoMultiLabel(img_a, ann_a), CocoMultiLabel(img_b, ann_b)
    check_same_classes(a, CocoMultiLabel(img_a, ann_a))
    with pytest.raises(ValueError, match="different categories") as info:
        check_same_classes(a, b)
    msg = str(info.value)
    assert "only in train: 'cat' (id 17)" in msg and "only in val: 'dog' (id 17)" in msg


def test_categories_without_any_annotation_are_named_in_a_warning(tmp_path, caplog):
    # A Roboflow export: the root category (id 0) is never annotated.
    root_category = [{"id": 0, "name": "objects"}, *CATEGORIES]
    img_dir, ann = _write_coco(tmp_path / "rf", categories=root_category)
    with caplog.at_level("WARNING", logger="balancemix_timm.data.datasets"):
        ds = CocoMultiLabel(img_dir, ann)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(ann) in warnings[0]
    assert "1 of 5 categories have no annotation in this split: 'objects' (id 0)" in warnings[0]
    assert ds.classes[0] == "objects" and int(ds.labels[:, 0].sum()) == 0
    # Without crowd annotations 'toothbrush' loses image 14 but keeps image 10: only 'objects'.
    caplog.clear()
    with caplog.at_level("WARNING", logger="balancemix_timm.data.datasets"):
        CocoMultiLabel(img_dir, ann, include_crowd=False)
    assert "'objects' (id 0)" in caplog.text and "toothbrush" not in caplog.text
    caplog.clear()
    img_dir, ann = _write_coco(tmp_path / "coco")
    with caplog.at_level("WARNING", logger="balancemix_timm.data.datasets"):
        CocoMultiLabel(img_dir, ann)
    assert "no annotation" not in caplog.text
