"""Shared pytest configuration: markers and a deterministic thread count."""

from __future__ import annotations

import os

# torch's OpenMP threads otherwise spin against each other on a loaded 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tests._datasets import VOC_FILES, _voc_xml, _write_coco  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a slow check, skipped unless --runslow is given")
    config.addinivalue_line("markers", "gpu: needs CUDA, skipped when none is available")
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------- ML-Decoder (test_ml_decoder_*)
# The demo set in COCO layout (48 + 16 images of 32 px, under a second to write): module scope,
# so once per test_ml_decoder_* module that uses it. The ML-Decoder helpers are imported inside the
# fixtures: torchvision's import is not paid by sessions that need none of them.
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from balancemix_timm.data.demo import make_demo_dataset
    from tests._ml_decoder import N_TRAIN, K

    root = tmp_path_factory.mktemp("mld_demo")
    return make_demo_dataset(root, num_train=N_TRAIN, num_val=16, num_classes=K, image_size=32)


@pytest.fixture()
def train_set(demo):
    from tests._ml_decoder import TF, MLDecoderStyleCoco

    return MLDecoderStyleCoco(str(demo.train_images), str(demo.train_annotations), TF)


@pytest.fixture()
def val_set(demo):
    from tests._ml_decoder import TF, MLDecoderStyleCoco

    return MLDecoderStyleCoco(str(demo.val_images), str(demo.val_annotations), TF)


# ---------------------------------------------------------------- tiny COCO / VOC trees (test_datasets*)
@pytest.fixture
def coco(tmp_path):
    return _write_coco(tmp_path)


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
