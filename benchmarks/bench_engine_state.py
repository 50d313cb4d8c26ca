"""The engine's per-sample state and its epoch-end refresh at MS-COCO scale (docs/performance.md §1 and §3).

Builds a :class:`~balancemix_timm.engine.BalanceMixEngine` for N = 82,081 images x K = 80 classes
(long-tailed labels with 40% mislabeling and realistic predictions, as in ``bench_gmm.py``),
records every sample and prints:

* the bytes of every per-sample table (measured on the tensors) and their total in MB;
* the time of one full :meth:`~balancemix_timm.engine.BalanceMix.refresh` (BCE of the records,
  the 2K GMMs, Eq. 9 re-labeling, the minority sampler's Eq. 2-4 and the report), median of
  ``--repeat``, and the peak memory it adds (CPU: growth of the process's peak RSS; CUDA:
  ``max_memory_allocated`` above the tables);
* the per-step engine calls (``mixed_targets``, ``loss``, ``record``) on a batch of 64 at this
  N: their cost does not grow with N, and with the tables on the training device they copy
  nothing between host and device (``tests/test_performance_options.py`` checks on CUDA that
  they do not synchronise).

Example::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_engine_state.py --threads 2
    python benchmarks/bench_engine_state.py --device cuda       # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from balancemix_timm.engine import BalanceMixEngine  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gmm import make_data  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=82081)
    p.add_argument("--k", type=int, default=80)
    p.add_argument("--noise", type=float, default=0.4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    losses, given, _ = make_data(args.n, args.k, args.noise, seed=0)
    # Predictions whose BCE against the given labels is exactly `losses`.
    q = torch.exp(-losses)
    probs = torch.where(given.bool(), q, 1 - q)
    labels = given.to(torch.uint8)
    eng = BalanceMixEngine(labels, warmup_epochs=0, device=dev)
    eng.set_epoch(0)
    eng.record(torch.arange(args.n), probs.to(dev))
    _sync(dev)

    load = os.getloadavg()
    print(f"N={args.n} K={args.k}, device {dev}, {args.threads} threads; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    total = 0
    print("per-sample tables:")
    for name in BalanceMixEngine._TABLES:
        t = getattr(eng, name)
        size = t.numel() * t.element_size()
        total += size
        print(f"  {name:<15} {str(tuple(t.shape)):<12} {str(t.dtype):<14} {size / 2**20:7.2f} MiB")
    sampler = eng.second_sampler.weights
    s_bytes = sampler.numel() * sampler.element_size()
    print(f"  total           {total / 2**20:.1f} MiB ({total / 1e6:.1f} MB) on {dev}; "
          f"+ minority-sampler weights {s_bytes / 2**20:.2f} MiB (CPU)")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    times, cpu = [], []
    report = None
    for _ in range(args.repeat):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        report = eng.refresh(epoch=0)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra = (rss1 - rss0) / 1024 if dev.type == "cpu" else (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    assert report is not None
    print(f"refresh: median {statistics.median(times):.3f} s, best {min(times):.3f} s over {args.repeat} "
          f"(CPU time median {statistics.median(cpu):.3f} s); "
          f"extra peak memory {extra:.0f} MiB ({'peak RSS growth' if dev.type == 'cpu' else 'CUDA allocator'}); "
          f"clean {report.clean_fraction:.3f}, re-labeled {report.relabeled_fraction:.4f}, "
          f"ambiguous {report.ambiguous_fraction:.3f}")

    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    idx_r = torch.randint(0, args.n, (b,), generator=g)
    idx_m = torch.randint(0, args.n, (b,), generator=g)
    lam = torch.full((b,), 0.7)
    if dev.type == "cuda":
        idx_r, idx_m, lam = idx_r.pin_memory(), idx_m.pin_memory(), lam.pin_memory()
    logits = torch.randn(b, args.k, device=dev)
    views = torch.rand(2, b, args.k, device=dev)
    y = eng.mixed_targets(idx_r, idx_m, lam, device=dev)

    def med(fn, n: int = 300) -> float:
        for _ in range(20):
            fn()
        _sync(dev)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    print(f"per-step engine calls at this N (batch {b}, median): "
          f"mixed_targets {1e6 * med(lambda: eng.mixed_targets(idx_r, idx_m, lam, device=dev)):.0f} us, "
          f"loss {1e6 * med(lambda: eng.loss(logits, y, idx_r)):.0f} us, "
          f"record {1e6 * med(lambda: eng.record(idx_r, views)):.0f} us")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
