"""Tests of image reading in the data sets: read errors name the file, every mode reaches RGB."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from balancemix_timm.data.datasets import (
    CocoMultiLabel,
)


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
