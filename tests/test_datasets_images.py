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


# ------------------------------------------------------------ EXIF orientation
#: An asymmetric 2 x 3 upright image: every pixel differs, so any flip or rotation shows.
_UPRIGHT = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14

#: Orientation tag -> how the stored pixels are laid out, given the upright ones (EXIF 2.32,
#: Orientation: the viewer applies the inverse to show the image upright).
_STORED = {
    2: lambda u: u[:, ::-1],                        # mirrored left-right
    3: lambda u: u[::-1, ::-1],                     # rotated 180
    4: lambda u: u[::-1, :],                        # mirrored top-bottom
    5: lambda u: u.transpose(1, 0, 2),              # transposed
    6: lambda u: np.rot90(u, 1),                    # stored 90 counter-clockwise, shown turned clockwise
    7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),  # transverse
    8: lambda u: np.rot90(u, -1),                   # stored 90 clockwise, shown turned counter-clockwise
}


def _with_orientation(stored: np.ndarray, orientation: int) -> tuple[Image.Image, Image.Exif]:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return Image.fromarray(np.ascontiguousarray(stored), "RGB"), exif


@pytest.mark.parametrize("orientation", sorted(_STORED))
def test_images_are_read_upright_by_their_exif_orientation(tmp_path, orientation):
    image, exif = _with_orientation(_STORED[orientation](_UPRIGHT), orientation)
    image.save(tmp_path / "photo.png", exif=exif)
    got, _, _ = _one_image_coco(tmp_path, "photo.png")[0]
    assert got.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(got), _UPRIGHT)


def test_a_sideways_jpeg_phone_photo_and_a_16_bit_image_are_read_upright(tmp_path):
    upright = np.kron(_UPRIGHT, np.ones((8, 8, 1), dtype=np.uint8))   # 16 x 24 blocks: JPEG keeps them
    image, exif = _with_orientation(_STORED[6](upright), 6)
    image.save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)
    got, _, _ = _one_image_coco(tmp_path, "phone.jpg")[0]
    assert got.size == (24, 16)
    assert np.abs(np.asarray(got).astype(int) - upright).max() <= 3
    grey = (np.arange(6, dtype=np.uint16).reshape(2, 3) * 257 * 40)
    image, exif = _with_orientation(np.zeros((1, 1, 3), np.uint8), 8)
    Image.fromarray(np.rot90(grey, -1).copy()).save(tmp_path / "grey16.png", exif=exif)   # I;16
    got, _, _ = _one_image_coco(tmp_path, "grey16.png")[0]
    assert np.asarray(got)[..., 0].tolist() == (grey // 257).tolist()
