"""CPU mixed precision: a training step and a no-grad forward in float32 vs bfloat16 autocast
with channels_last (``amp=true channels_last=true`` on a CPU device), resnet10t, batch 64.

Run from the repository root: ``.venv/bin/python benchmarks/bench_cpu_amp.py [--sizes 32,48]``.
One torch thread (the benchmark grid's setting); medians of the steps after two warm-up steps.
"""

from __future__ import annotations

import argparse
import logging
import time

import timm
import torch

from balancemix_timm.utils import autocast

_logger = logging.getLogger("bench_cpu_amp")


def measure(size: int, amp: bool, steps: int = 8, classes: int = 30) -> tuple[float, float]:
    """Median training-step and mean forward seconds at ``size`` px."""
    gen = torch.Generator().manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=classes)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(64, 3, size, size, generator=gen)
    y = (torch.rand(64, classes, generator=gen) > 0.9).float()
    if amp:
        model = model.to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with autocast(cpu, amp):
            logits = model(x).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    model.eval()
    with torch.no_grad(), autocast(cpu, amp):
        t = time.perf_counter()
        for _ in range(4):
            model(x)
        forward = (time.perf_counter() - t) / 4
    rest = sorted(times[2:])
    return rest[len(rest) // 2], forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="32,48")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    for size in (int(s) for s in args.sizes.split(",")):
        (s32, f32), (s16, f16) = measure(size, False), measure(size, True)
        _logger.info("%d px: step %.0f -> %.0f ms (x%.2f), no-grad forward %.0f -> %.0f ms (x%.2f)",
                     size, 1e3 * s32, 1e3 * s16, s32 / s16, 1e3 * f32, 1e3 * f16, f32 / f16)


if __name__ == "__main__":
    main()
