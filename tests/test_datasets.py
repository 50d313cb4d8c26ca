"""Tests for balancemix_timm.data.datasets on tiny COCO / VOC trees written here."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from balancemix_timm.data.datasets import (
    VOC_CLASSES,
    CocoMultiLabel,
    IndexedDataset,
    VocMultiLabel,
    build_dataset,
)

# ----------------------------------------------------------------- tiny COCO
# Category ids deliberately non-contiguous and listed out of order in the file.
CATEGORIES = [
    {"id": 17, "name": "cat"},
    {"id": 1, "name": "person"},
    {"id": 90, "name": "toothbrush"},
    {"id": 3, "name": "car"},
]
# Sorted by id: 1 person, 3 car, 17 cat, 90 toothbrush -> class index 0, 1, 2, 3.
IMAGES = [  # (id, file name, colour written into the image)
    (10, "a.png", (255, 0, 0)),
    (11, "b.png", (0, 255, 0)),
    (12, "c.png", (0, 0, 255)),   # no annotation
    (13, "sub/d.png", (10, 20, 30)),
    (14, "e.png", (200, 100, 50)),
]
ANNOTATIONS = [  # (image id, category id, iscrowd); image 13 annotated first
    (13, 17, 0),
    (13, 3, 0),
    (10, 3, 0),
    (10, 90, 0),
    (11, 1, 0),
    (11, 1, 0),   # duplicate positive counts once
    (14, 90, 1),  # crowd only
    (10, 3, 0),
]
# Hand-written expectation, images order (10, 11, 13, 14), classes (person, car, cat, tooth).
EXPECTED = {
    10: [0, 1, 0, 1],
    11: [1, 0, 0, 0],
    12: [0, 0, 0, 0],
    13: [0, 1, 1, 0],
    14: [0, 0, 0, 1],
}


def _write_coco(root, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES,
                drop_keys=()):
    root.mkdir(parents=True, exist_ok=True)
    img_dir = root / "imgs"
    for _, name, colour in images:
        path = img_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), colour).save(path)
    data = {
        "images": [{"id": i, "file_name": n, "width": 6, "height": 4} for i, n, _ in images],
        "annotations": [{"id": j, "image_id": i, "category_id": c, "iscrowd": cr,
                         "area": 10.0, "bbox": [0, 0, 2, 2]}
                        for j, (i, c, cr) in enumerate(annotations)],
        "categories": categories,
    }
    for key in drop_keys:
        del data[key]
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


@pytest.fixture
def coco(tmp_path):
    return _write_coco(tmp_path)


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


# ------------------------------------------------------------------ tiny VOC
def _voc_xml(objects):
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
        + ("" if d is None else f"<difficult>{d}</difficult>")
        + "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>"
        for n, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>x.jpg</filename>"
            f"<size><width>6</width><height>4</height><depth>3</depth></size>{objs}"
            f"</annotation>")


VOC_FILES = {
    "000001": [("dog", "0"), ("person", "0"), ("dog", "0")],
    "000002": [("cat", "1"), ("car", None)],   # cat difficult, car without <difficult>
    "000003": [("bottle", "1")],               # only a difficult object
    "000004": [("horse", "0")],                # not in the split
}


@pytest.fixture
def voc(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for i, (image_id, objects) in enumerate(VOC_FILES.items()):
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
        Image.new("RGB", (6, 4), (40 * i, 0, 0)).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n\n000003\n")
    return root


def _onehot(names, classes=VOC_CLASSES):
    return [1 if c in names else 0 for c in classes]


def test_voc_standard_classes():
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane"
    assert VOC_CLASSES[-1] == "tvmonitor" and list(VOC_CLASSES) == sorted(VOC_CLASSES)


def test_voc_parse_ignoring_difficult(voc):
    ds = VocMultiLabel(voc, "trainval")
    assert ds.image_ids == ["000001", "000002", "000003"]
    assert ds.num_classes == 20 and ds.category_ids == list(range(20))
    assert ds.labels.tolist() == [_onehot({"dog", "person"}), _onehot({"car"}), _onehot(set())]
    assert ds.image_paths[1] == os.path.join(str(voc), "JPEGImages", "000002.jpg")
    image, target, index = ds[1]
    assert image.mode == "RGB" and image.size == (6, 4)
    assert target.dtype == torch.float32 and target.tolist() == _onehot({"car"})
    assert index == 1
    ds.verify_files()


def test_voc_use_difficult_and_include_empty(voc):
    ds = VocMultiLabel(voc, use_difficult=True)
    assert ds.labels.tolist() == [_onehot({"dog", "person"}), _onehot({"car", "cat"}),
                                  _onehot({"bottle"})]
    ds = VocMultiLabel(voc, include_empty=False)
    assert ds.image_ids == ["000001", "000002"]
    assert ds.positive_counts().sum().item() == 3


def test_voc_custom_classes(voc):
    with pytest.raises(ValueError, match="unknown class name 'person'"):
        VocMultiLabel(voc, classes=["dog", "cat", "car", "bottle"])
    ds = VocMultiLabel(voc, classes=["car", "dog"], unknown_classes="ignore")
    assert ds.classes == ["car", "dog"]
    assert ds.labels.tolist() == [[0, 1], [1, 0], [0, 0]]
    with pytest.raises(ValueError, match="duplicates"):
        VocMultiLabel(voc, classes=["car", "car"])
    with pytest.raises(ValueError, match="empty"):
        VocMultiLabel(voc, classes=[])
    with pytest.raises(ValueError, match="single string"):
        VocMultiLabel(voc, classes="car")
    with pytest.raises(ValueError, match="unknown_classes"):
        VocMultiLabel(voc, unknown_classes="drop")


def test_voc_errors(voc):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VocMultiLabel(voc, "test")
    (voc / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        VocMultiLabel(voc, "empty")
    (voc / "ImageSets" / "Main" / "hard.txt").write_text("000003\n")
    with pytest.raises(ValueError, match="empty"):
        VocMultiLabel(voc, "hard", include_empty=False)
    (voc / "ImageSets" / "Main" / "ghost.txt").write_text("000001\n000009\n")
    with pytest.raises(FileNotFoundError, match="000009.xml"):
        VocMultiLabel(voc, "ghost")
    (voc / "Annotations" / "000004.xml").write_text("<annotation><object>")
    (voc / "ImageSets" / "Main" / "broken.txt").write_text("000004\n")
    with pytest.raises(ValueError, match="000004.xml"):
        VocMultiLabel(voc, "broken")
    with pytest.raises(ValueError, match="shape"):
        VocMultiLabel(voc, labels=np.zeros((3, 19)))


# ------------------------------------------------------------ wrapper, factory
class _PairDataset(torch.utils.data.Dataset):
    """ML-Decoder-like: returns (image, (3, K) long target)."""

    def __init__(self):
        self.marker = "inner"

    def __len__(self):
        return 3

    def __getitem__(self, i):
        t = torch.zeros(3, 4, dtype=torch.long)
        t[i % 3, i] = 1
        t[2, 3] = 1
        return torch.full((2,), float(i)), t


def test_indexed_dataset():
    ds = IndexedDataset(_PairDataset())
    assert len(ds) == 3 and ds.marker == "inner"
    image, target, index = ds[1]
    assert image.tolist() == [1.0, 1.0] and index == 1
    assert target.dtype == torch.float32 and target.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert ds[-1][2] == 2
    images, targets, idx = next(iter(DataLoader(ds, batch_size=3)))
    assert targets.shape == (3, 4) and idx.tolist() == [0, 1, 2]
    raw = IndexedDataset(_PairDataset(), float_target=False, collapse=False)
    assert raw[0][1].shape == (3, 4) and raw[0][1].dtype == torch.long
    listy = IndexedDataset([("img", [0, 1, 1])])
    assert listy[0][1].tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="pairs"):
        IndexedDataset([("a", "b", "c")])[0]
    with pytest.raises(ValueError, match="map-style"):
        IndexedDataset(42)


def test_build_dataset(coco, voc):
    img_dir, ann = coco
    ds = build_dataset("coco", img_dir, ann_file=ann, include_empty=True)
    assert isinstance(ds, CocoMultiLabel) and len(ds) == 5
    ds = build_dataset("VOC", voc, use_difficult=True)
    assert isinstance(ds, VocMultiLabel) and ds.split == "trainval" and len(ds) == 3
    with pytest.raises(ValueError, match="ann_file"):
        build_dataset("coco", img_dir)
    with pytest.raises(ValueError, match="kind"):
        build_dataset("imagenet", img_dir)
    with pytest.raises(ValueError, match="ann_file"):
        build_dataset("voc", voc, ann_file=ann)


# ------------------------------------------------------- VOC difficult flag
@pytest.mark.parametrize("text, difficult", [
    ("1", True), ("true", True), ("True", True), (" 1.0 ", True),
    ("0", False), ("false", False), ("False", False), ("0.0", False), ("", False),
    ("Unspecified", False), ("2", False),   # unrecognised: read as not difficult, with a warning
])
def test_voc_difficult_texts(tmp_path, caplog, text, difficult):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(_voc_xml([("dog", text)]))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    with caplog.at_level("WARNING", logger="balancemix_timm.data.datasets"):
        ds = VocMultiLabel(root)
    dog = ds.classes.index("dog")
    assert ds.labels[0, dog].item() == (0 if difficult else 1)
    assert ds.difficult_mask[0, dog].item() is difficult
    unrecognised = text in ("Unspecified", "2")
    assert ("a.xml" in caplog.text and repr(text) in caplog.text) is unrecognised


def test_voc_difficult_mask_marks_difficult_only_labels(voc):
    for use_difficult in (False, True):
        ds = VocMultiLabel(voc, use_difficult=use_difficult)
        # 000002: cat only difficult; 000003: bottle only difficult; 000001: nothing difficult.
        assert ds.difficult_mask.tolist() == [[False] * 20, [c == "cat" for c in VOC_CLASSES],
                                              [c == "bottle" for c in VOC_CLASSES]]


def test_voc_difficult_object_beside_a_plain_one_is_not_ignored(tmp_path):
    root = tmp_path / "VOC"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(_voc_xml([("dog", "1"), ("dog", "0")]))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    ds = VocMultiLabel(root)
    dog = ds.classes.index("dog")
    assert ds.labels[0, dog].item() == 1 and not ds.difficult_mask[0, dog].item()


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


def test_check_same_classes_voc_class_lists(voc):
    from balancemix_timm.data.datasets import check_same_classes

    classes = ["dog", "person", "car", "cat", "bottle"]
    a = VocMultiLabel(voc, classes=classes)
    b = VocMultiLabel(voc, classes=classes[::-1])   # same names, other column order
    with pytest.raises(ValueError, match="differing class columns: 0: 'dog'"):
        check_same_classes(a, b)


# ------------------------------------------------------------ image reading
def _one_image_coco(tmp_path, name):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": name}],
                               "annotations": [{"image_id": 1, "category_id": 1}],
                               "categories": [{"id": 1, "name": "x"}]}))
    return CocoMultiLabel(tmp_path, ann)


def test_decompression_bomb_error_names_file_and_index(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    ds = _one_image_coco(tmp_path, "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError) as info:
        ds[0]
    assert str(tmp_path / "huge.png") in str(info.value) and "sample 0" in str(info.value)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def test_every_read_error_names_file_and_index(tmp_path, monkeypatch):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    ds = _one_image_coco(tmp_path, "x.png")

    def broken(*args, **kwargs):
        raise SyntaxError("bad header")

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(ValueError, match=r"sample 0: .*x\.png .*bad header"):
        ds[0]


_GREY16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)   # -> 0, 1, 128, 255


@pytest.mark.parametrize("name, make", [
    ("grey16.png", lambda: Image.fromarray(_GREY16)),                                # I;16
    ("grey16.tif", lambda: Image.fromarray(_GREY16.astype(">u2"))),                  # I;16B
    ("int32.tif", lambda: Image.fromarray(_GREY16.astype(np.int32))),                # I
    ("float.tif", lambda: Image.fromarray((_GREY16 / 65535).astype(np.float32))),    # F
])
def test_wide_modes_are_scaled_not_clipped(tmp_path, name, make):
    make().save(tmp_path / name)
    image, _, _ = _one_image_coco(tmp_path, name)[0]
    assert image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 1, 128, 255]]
    assert np.array_equal(np.asarray(image)[..., 0], np.asarray(image)[..., 2])


@pytest.mark.parametrize("name, values", [
    ("float.tif", np.array([[0.0, 2.5]], dtype=np.float32)),
    ("nan.tif", np.array([[0.0, np.nan]], dtype=np.float32)),
    ("neg.tif", np.array([[-5, 10]], dtype=np.int32)),
])
def test_wide_modes_out_of_range_are_refused_naming_the_file(tmp_path, name, values):
    Image.fromarray(values).save(tmp_path / name)
    with pytest.raises(ValueError, match=rf"sample 0: .*{name}"):
        _one_image_coco(tmp_path, name)[0]


@pytest.mark.parametrize("mode, fmt", [
    ("1", "png"), ("L", "png"), ("P", "png"), ("LA", "png"), ("RGBA", "png"),
    ("CMYK", "tif"), ("YCbCr", "tif"), ("LAB", "tif"), ("RGB", "png"),
])
def test_every_mode_reaches_rgb_with_its_content(tmp_path, mode, fmt):
    rgb = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]],
                                   dtype=np.uint8))
    if mode == "LAB":
        from PIL import ImageCms

        src = rgb.convert("RGB")
        t = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                    "RGB", "LAB")
        img = ImageCms.applyTransform(src, t)
    elif mode in ("P", "PA"):
        img = rgb.quantize(4)
        if mode == "PA":
            img = img.convert("PA")
    else:
        img = rgb.convert(mode)
    img.save(tmp_path / f"x.{fmt}")
    with Image.open(tmp_path / f"x.{fmt}") as check:
        assert check.mode == mode
    image, _, _ = _one_image_coco(tmp_path, f"x.{fmt}")[0]
    got = np.asarray(image).astype(int)
    grey = mode in ("1", "L", "LA")
    want = np.asarray(img.convert("L").convert("RGB") if grey else rgb).astype(int)
    tolerance = 24 if mode == "LAB" else 8   # 8-bit LAB quantises saturated blue coarsely
    assert image.mode == "RGB" and np.abs(got - want).max() <= tolerance, got.tolist()


@pytest.mark.parametrize("mode", ["PA", "HSV", "RGBa", "I;16B", "F"])
def test_to_rgb_in_memory_modes(mode):
    from balancemix_timm.data.datasets import _to_rgb

    rgb = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]]],
                                   dtype=np.uint8))
    if mode == "PA":
        img, want = rgb.quantize(4).convert("PA"), rgb
    elif mode == "I;16B":
        img = Image.fromarray(_GREY16.astype(">u2"))
        want = Image.fromarray(np.array([[0, 1, 128, 255]], dtype=np.uint8)).convert("RGB")
    elif mode == "F":
        img = Image.fromarray((_GREY16 / 65535).astype(np.float32))
        want = Image.fromarray(np.array([[0, 1, 128, 255]], dtype=np.uint8)).convert("RGB")
    else:
        img, want = rgb.convert(mode), rgb
    assert img.mode == mode
    out = _to_rgb(img)
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out).astype(int) - np.asarray(want).astype(int)).max() <= 2
