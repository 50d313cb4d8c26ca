"""Tests of IndexedDataset and build_dataset on the tiny COCO / VOC trees."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from balancemix_timm.data.datasets import (
    CocoMultiLabel,
    IndexedDataset,
    VocMultiLabel,
    build_dataset,
)


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
