"""Time of :func:`balancemix_timm.noise.mislabel` on MS-COCO-sized labels.

Synthetic multi-hot labels of N = 82,081 images x K = 80 classes by default, with a long-tailed
class prior falling linearly from 25% to 0.2% (about 10 positives per image), mislabelled at
``--tau`` (40% by default). Logs the time of each call (and the best and median over
``--repeat``) and whether every row kept its number of positives; asserts nothing, so a slow
or busy machine only shows up in the numbers.

Example::

    python benchmarks/bench_noise.py
    python benchmarks/bench_noise.py --n 20000 --repeat 5 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from balancemix_timm.noise import mislabel

_logger = logging.getLogger("bench_noise")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=82081, help="images (rows)")
    p.add_argument("--k", type=int, default=80, help="classes (columns)")
    p.add_argument("--tau", type=float, default=0.4, help="mislabelling rate")
    p.add_argument("--repeat", type=int, default=3, help="timed calls")
    p.add_argument("--seed", type=int, default=22)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    prior = torch.linspace(0.25, 0.002, args.k)
    gen = torch.Generator().manual_seed(args.seed)
    labels = (torch.rand(args.n, args.k, generator=gen) < prior).float()
    _logger.info("N=%d K=%d tau=%s, %d positives, %d torch threads", args.n, args.k, args.tau,
                 int(labels.sum()), torch.get_num_threads())
    times = []
    for r in range(args.repeat):
        start = time.perf_counter()
        noisy = mislabel(labels, args.tau, torch.Generator().manual_seed(args.seed + 1 + r))
        times.append(time.perf_counter() - start)
        kept = torch.equal(noisy.sum(1), labels.sum(1))
        _logger.info("call %d: %.3f s, row sums preserved: %s", r + 1, times[-1], kept)
    _logger.info("mislabel: best %.3f s, median %.3f s over %d calls", min(times),
                 statistics.median(times), len(times))


if __name__ == "__main__":
    main()
