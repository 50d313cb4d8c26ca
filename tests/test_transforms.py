"""Tests for balancemix_timm.data.transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from balancemix_timm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Cutout,
    MultiView,
    build_eval_transform,
    build_train_transform,
)


def _pattern_image(width=40, height=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _changed_box(before: np.ndarray, after: np.ndarray):
    """Bounding box (top, left, bottom, right) of changed pixels, or None."""
    diff = (before != after)
    if diff.ndim == 3:
        diff = diff.any(axis=-1)
    rows, cols = np.nonzero(diff)
    if rows.size == 0:
        return None
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


# -------------------------------------------------------------------- Cutout
def test_cutout_pil_region_bounded_and_uniform():
    img = Image.new("RGB", (40, 30), (128, 128, 128))  # W=40, H=30 -> box at most 15 x 20
    before = np.asarray(img).copy()
    gen = torch.Generator().manual_seed(0)
    cut = Cutout(0.5, generator=gen)
    heights, widths = [], []
    for _ in range(200):
        out = cut(img)
        assert out is not img and out.size == img.size and out.mode == "RGB"
        after = np.asarray(out)
        box = _changed_box(before, after)
        assert box is not None
        top, left, bottom, right = box
        assert bottom - top <= 15 and right - left <= 20
        patch = after[top:bottom, left:right].reshape(-1, 3)
        assert (patch == patch[0]).all()  # one colour fills the whole rectangle
        heights.append(bottom - top)
        widths.append(right - left)
    assert np.array_equal(np.asarray(img), before)  # input not modified
    assert max(heights) == 15 and max(widths) == 20  # interior boxes reach the full size
    assert min(heights) < 15  # border boxes are clipped


def test_cutout_tensor_uint8_and_float():
    gen = torch.Generator().manual_seed(1)
    cut = Cutout(0.25, generator=gen)
    x = torch.full((3, 16, 24), 7, dtype=torch.uint8)
    y = cut(x)
    assert y.dtype == torch.uint8 and torch.equal(x, torch.full_like(x, 7))
    box = _changed_box(x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy())
    assert box is not None and box[2] - box[0] <= 4 and box[3] - box[1] <= 6
    xf = torch.full((2, 3, 16, 24), 0.5)  # batch of float images in [0, 1]
    yf = cut(xf)
    changed = (yf != xf).any(dim=1)
    assert changed[0].equal(changed[1])  # same box on every image of the call
    assert changed[0].sum() <= 4 * 6 and changed.any()
    assert float(yf.min()) >= 0.0 and float(yf.max()) <= 1.0
    with pytest.raises(ValueError, match="img"):
        cut(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="img"):
        cut(np.zeros((4, 4, 3)))


def test_cutout_probability_and_validation():
    img = _pattern_image()
    assert Cutout(0.5, p=0.0)(img) is img
    gen = torch.Generator().manual_seed(3)
    cut = Cutout(0.5, p=0.5, generator=gen)
    applied = sum(cut(img) is not img for _ in range(400))
    assert 150 < applied < 250
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="cutout_factor"):
            Cutout(bad)
    with pytest.raises(ValueError, match="p"):
        Cutout(0.5, p=1.2)
    with pytest.raises(ValueError, match="generator"):
        Cutout(0.5, generator=3)


def test_cutout_global_rng_is_seedable():
    img = _pattern_image()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        a = np.asarray(Cutout()(img))
        b = np.asarray(Cutout()(img))
        torch.manual_seed(123)
        c = np.asarray(Cutout()(img))
    assert np.array_equal(a, c) and not np.array_equal(a, b)


# ------------------------------------------------------------- eval transform
def test_eval_transform_matches_manual_and_is_deterministic():
    img = _pattern_image(37, 23)
    t = build_eval_transform(16)
    x = t(img)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    manual = np.asarray(img.resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255.0
    assert torch.allclose(x, torch.from_numpy(manual).permute(2, 0, 1), atol=1.5 / 255)
    assert torch.equal(t(img), x)
    assert build_eval_transform((12, 20))(img).shape == (3, 12, 20)


def test_normalize_imagenet():
    mean_colour = tuple(round(m * 255) for m in IMAGENET_MEAN)  # (124, 116, 104)
    img = Image.new("RGB", (20, 20), mean_colour)
    x = build_eval_transform(8, normalize="imagenet")(img)
    # (round(255 m) / 255 - m) / s is below half a grey level over s
    assert x.abs().max().item() < 0.5 / 255 / min(IMAGENET_STD) + 1e-6
    img = _pattern_image()
    plain = build_eval_transform(8)(img)
    norm = build_eval_transform(8, normalize="imagenet")(img)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(norm, (plain - mean) / std, atol=1e-6)
    custom = build_eval_transform(8, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))(img)
    assert torch.allclose(custom, (plain - 0.5) / 0.25, atol=1e-6)
    # ML-Decoder default: no normalisation, values stay in [0, 1]
    assert plain.min() >= 0 and plain.max() <= 1


@pytest.mark.parametrize("bad", ["imagenet21k", (1, 2), ((0.5, 0.5), (1, 1)),
                                 ((0.5,) * 3, (1.0, 0.0, 1.0))])
def test_normalize_validation(bad):
    with pytest.raises(ValueError, match="normalize"):
        build_eval_transform(8, normalize=bad)


@pytest.mark.parametrize("bad", [0, -3, (8,), (8, 0), 8.5, True, "8"])
def test_image_size_validation(bad):
    with pytest.raises(ValueError, match="image_size"):
        build_train_transform(bad)


# ------------------------------------------------------------ train transform
def test_train_transform_shapes_and_randomness():
    img = _pattern_image(50, 30)
    t = build_train_transform(24)
    assert [type(s).__name__ for s in t.transforms] == [
        "Resize", "Cutout", "RandAugment", "ToTensor"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        outs = [t(img) for _ in range(4)]
        torch.manual_seed(0)
        again = t(img)
    for x in outs:
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(outs[0], again)  # reproducible under a fixed seed
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
    tn = build_train_transform((16, 20), normalize="imagenet")
    assert type(tn.transforms[-1]).__name__ == "Normalize"
    assert tn(img).shape == (3, 16, 20)


def test_train_transform_without_augmentation_equals_eval():
    img = _pattern_image()
    t = build_train_transform(16, randaugment=False, cutout=False, normalize="imagenet")
    assert torch.equal(t(img), build_eval_transform(16, normalize="imagenet")(img))
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        build_train_transform(16, randaugment_magnitude=31)
    with pytest.raises(ValueError, match="randaugment_num_ops"):
        build_train_transform(16, randaugment_num_ops=-1)
    with pytest.raises(ValueError, match="cutout_factor"):
        build_train_transform(16, cutout_factor=2.0)


# ------------------------------------------------------------------ MultiView
def test_multiview_independent_views():
    img = _pattern_image()
    mv = MultiView(build_train_transform(16))
    assert mv.num_views == 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        views = mv(img)
    assert isinstance(views, tuple) and len(views) == 3
    assert all(v.shape == (3, 16, 16) for v in views)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    assert MultiView(build_eval_transform(8), 2)(img)[0].equal(build_eval_transform(8)(img))


def test_multiview_sequence_and_validation():
    img = _pattern_image()
    ev, tr = build_eval_transform(8), build_train_transform(8)
    mv = MultiView([ev, tr, tr])
    views = mv(img)
    assert mv.num_views == 3 and torch.equal(views[0], ev(img))
    with pytest.raises(ValueError, match="num_views"):
        MultiView([ev, tr], 3)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_views"):
            MultiView(ev, bad)
    with pytest.raises(ValueError, match="transform"):
        MultiView([])
    with pytest.raises(ValueError, match="transform"):
        MultiView(42)


class _Images(Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.transform(_pattern_image(seed=i)), torch.zeros(2), i


def test_multiview_collates_to_list_of_batches():
    loader = DataLoader(_Images(MultiView(build_train_transform(8), 3)), batch_size=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        images, targets, index = next(iter(loader))
    assert len(images) == 3 and all(v.shape == (4, 3, 8, 8) for v in images)
    assert index.tolist() == [0, 1, 2, 3]
