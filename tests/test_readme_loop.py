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


def _snippets() -> list[str]:
    """The section's Python blocks: the loop, then the epoch pass's addition."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Use it in your own loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the section holds the loop and the epoch pass"
    return blocks


def _scope(root: Path) -> dict:
    make_demo_dataset(root, num_train=96, num_val=32, num_classes=8, image_size=32)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=8)
    return dict(
        train_set=CocoMultiLabel(root / "train", root / "annotations" / "instances_train.json"),
        train_tf=build_train_transform(32), eval_tf=build_eval_transform(32), device=torch.device("cpu"),
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=2,
    )


def test_readme_loop_trains_and_refreshes(tmp_path: Path) -> None:
    scope = _scope(tmp_path / "demo")
    code = _snippets()[0].replace("num_workers=4", "num_workers=0").replace("warmup_epochs=10", "warmup_epochs=1")
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102
    engine = scope["engine"]
    assert bool(engine.seen.all()), "every sample recorded once per epoch"
    assert engine.applied and len(engine.history) == 2, "two refreshes, label management in use after warm-up"
    assert not torch.equal(engine.probs, engine.view_mean), "f(x) of the image and the views' mean told apart"


def test_readme_epoch_pass_records_every_sample(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    scope = _scope(root)
    loop, epoch_pass = _snippets()
    loop = loop.replace("num_workers=4", "num_workers=0").replace(
        "BalanceMixOptions(warmup_epochs=10)", 'BalanceMixOptions(warmup_epochs=1, label_source="epoch_pass")')
    view_set = (  # a copy of the training set whose items carry the recorded views
        "view_set = CocoMultiLabel(train_set.root, train_set.ann_file)\n"
        "view_set.transform = MultiView(recipe.view_transforms(train_tf, eval_tf))\n"
    )
    marker = "\ndef predict("
    assert marker in loop and "    recipe.end_epoch(epoch)" in loop
    loop = loop.replace(marker, "\n" + view_set + marker, 1)
    indented = "".join("    " + line + "\n" for line in epoch_pass.strip().splitlines())
    loop = loop.replace("    recipe.end_epoch(epoch)", indented + "    recipe.end_epoch(epoch)", 1)
    scope["CocoMultiLabel"] = CocoMultiLabel
    exec(compile(loop, str(README), "exec"), scope)  # noqa: S102
    engine = scope["engine"]
    assert scope["recipe"].num_extra_views == 0
    assert bool(engine.seen.all()) and engine.applied and len(engine.history) == 2
