"""Tests of VocMultiLabel on a tiny VOC tree written here, the difficult flag included."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from balancemix_timm.data.datasets import (
    VOC_CLASSES,
    VocMultiLabel,
)
from tests._datasets import (
    _voc_xml,
)


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


def test_check_same_classes_voc_class_lists(voc):
    from balancemix_timm.data.datasets import check_same_classes

    classes = ["dog", "person", "car", "cat", "bottle"]
    a = VocMultiLabel(voc, classes=classes)
    b = VocMultiLabel(voc, classes=classes[::-1])   # same names, other column order
    with pytest.raises(ValueError, match="differing class columns: 0: 'dog'"):
        check_same_classes(a, b)
