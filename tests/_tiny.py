"""The tiny trainer configuration shared by the end-to-end tests (CPU, seconds per run)."""

from __future__ import annotations

from typing import Any

TINY_TRAIN: dict[str, Any] = dict(
    data="demo",
    demo_num_train=160,
    demo_num_val=64,
    demo_num_classes=20,
    image_size=32,
    model="resnet10t",
    epochs=2,
    warmup_epochs=1,
    batch_size=32,
    eval_batch_size=64,
    optimizer="sgd",
    lr=0.05,
    noise="mislabel",
    noise_rate=0.4,
    progress=False,
    plots=False,
)


def tiny(**overrides: Any) -> dict[str, Any]:
    """A copy of :data:`TINY_TRAIN` with ``overrides`` applied."""
    return dict(TINY_TRAIN, **overrides)
