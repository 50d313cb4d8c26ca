"""The README's "Use it in your own loop" snippet runs as written (two epochs on a tiny demo set)."""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch

from balancemix_timm.data.datasets import CocoMultiLabel
from balancemix_timm.data.demo import make_demo_dataset
from balancemix_timm.data.transforms import build_eval_transform, build_train_transform

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it in your own loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section holds one Python block"
    return blocks[0]


def test_readme_loop_trains_and_refreshes(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    make_demo_dataset(root, num_train=96, num_val=32, num_classes=8, image_size=32)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=8)
    scope = dict(
        train_set=CocoMultiLabel(root / "train", root / "annotations" / "instances_train.json"),
        train_tf=build_train_transform(32), eval_tf=build_eval_transform(32), device=torch.device("cpu"),
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=2,
    )
    code = _snippet().replace("num_workers=4", "num_workers=0").replace("warmup_epochs=10", "warmup_epochs=1")
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102
    engine = scope["engine"]
    assert bool(engine.seen.all()), "every sample recorded once per epoch"
    assert engine.applied and len(engine.history) == 2, "two refreshes, label management in use after warm-up"
    assert not torch.equal(engine.probs, engine.view_mean), "f(x) of the image and the views' mean told apart"
