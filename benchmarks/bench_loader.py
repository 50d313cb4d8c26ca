"""Throughput of the paired (random + minority) loader against a single plain loader (docs/performance.md §4).

The trainer feeds BalanceMix from ONE DataLoader: a :class:`~balancemix_timm.sampling.PairedBatchSampler`
yields ``(random_idx, minority_idx)`` pairs, :class:`~balancemix_timm.mixing.PairedDataset` loads
both items inside the worker and :class:`~balancemix_timm.mixing.MixupCollate` mixes the images
there, so the two streams are prefetched together by the same workers and a step never waits
for two sequential loads. This script measures, on the demo data with the trainer's training
transform (Resize, Cutout, RandAugment, ToTensor, ImageNet normalisation) and the same number
of workers:

* ``plain``: one loader over the training set (what a BCE or single-stream user runs);
* ``two_loaders``: two plain loaders zipped (the naive way to get two streams), with half the
  workers each (the same total);
* ``paired``: the trainer's paired loader without views (Mixup / ASL baselines);
* ``paired_views``: the paired loader with BalanceMix's two extra views per item.

For each: batches/s, training pairs/s and decoded+augmented images/s (steady state, after the
first batch), and the first-batch latency.

Example (the figures of docs/performance.md)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_loader.py --workers 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_loader.py --workers 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterable
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402


def _consume(loader: Iterable[Any], max_batches: int) -> tuple[float, float, int]:
    """(first-batch latency, steady seconds, steady batches)."""
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
        if n >= max_batches:
            break
    return t1 - t0, time.perf_counter() - t1, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="/tmp/bench_demo_data")
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="epochs per loader (interleaved); median reported")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from balancemix_timm.data.datasets import CocoMultiLabel
    from balancemix_timm.data.demo import make_demo_dataset
    from balancemix_timm.data.transforms import MultiView, build_train_transform
    from balancemix_timm.mixing import MixupCollate, PairedDataset
    from balancemix_timm.sampling import MinoritySampler, PairedBatchSampler, PairedSampler, ShardedRandomSampler
    from balancemix_timm.utils import seed_worker

    root = args.data_root
    make_demo_dataset(root, num_train=args.num_train, num_val=64, num_classes=24, image_size=64, seed=0)
    tf = build_train_transform(args.image_size, normalize="imagenet")

    def dataset(views: int) -> CocoMultiLabel:
        t = tf if views == 1 else MultiView(tf, views)
        return CocoMultiLabel(f"{root}/train", f"{root}/annotations/instances_train.json", transform=t)

    n = len(dataset(1))
    steps = -(-n // args.batch_size)
    common = dict(num_workers=args.workers, worker_init_fn=seed_worker)

    def plain(epoch: int) -> Iterable[Any]:
        s = ShardedRandomSampler(n, seed=0)
        s.set_epoch(epoch)
        return DataLoader(dataset(1), batch_size=args.batch_size, sampler=s, **common)

    def two_loaders(epoch: int) -> Iterable[Any]:
        half = dict(common, num_workers=max(1, args.workers // 2) if args.workers else 0)
        loaders = []
        for e in (epoch, epoch + 1000):
            s = ShardedRandomSampler(n, seed=0)
            s.set_epoch(e)
            loaders.append(DataLoader(dataset(1), batch_size=args.batch_size, sampler=s, **half))
        return zip(*loaders)

    def paired(epoch: int, views: int = 1) -> Iterable[Any]:
        ps = PairedSampler(ShardedRandomSampler(n, seed=0), MinoritySampler(n, seed=1))
        ps.set_epoch(epoch)
        collate = MixupCollate(alpha=4.0, seed=0)
        collate.set_epoch(epoch)
        # As the trainer: with views, the minority items are read through them too.
        pairs = PairedDataset(dataset(views))
        return DataLoader(pairs, batch_sampler=PairedBatchSampler(ps, args.batch_size),
                          collate_fn=collate, **common)

    loaders = {
        # name: (factory, training pairs per batch item, images decoded+augmented per batch item)
        "plain": (plain, 1, 1),
        "two_loaders": (two_loaders, 1, 2),
        "paired": (paired, 1, 2),
        "paired_views": (lambda e: paired(e, 3), 1, 6),
    }
    load = os.getloadavg()
    print(f"N={n}, batch {args.batch_size}, {args.workers} workers, {args.image_size} px, "
          f"{steps} batches per epoch; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in loaders}
    for r in range(args.repeat):
        for name, (factory, _, _) in loaders.items():
            results[name].append(_consume(factory(r), steps))
    base = None
    for name, (_, pairs, images) in loaders.items():
        rates = [b / s for _, s, b in results[name]]
        bps = statistics.median(rates)
        first = statistics.median(f for f, _, _ in results[name])
        base = base or bps
        print(f"  {name:<13} {bps:7.2f} batches/s  {bps * args.batch_size * pairs:8.1f} pairs/s  "
              f"{bps * args.batch_size * images:8.1f} images/s  (x{bps / base:.2f} of plain batches/s; "
              f"first batch {first:.2f} s)")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
