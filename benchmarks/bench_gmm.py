"""Benchmark of :func:`balancemix_timm.gmm.clean_probability` against a loop of scikit-learn fits.

Synthetic MS-COCO-sized data (N=82,081 images, K=80 classes by default): long-tailed class
frequencies (one class on ~55% of the images, the others log-uniform in [0.15%, 11%]), a
mislabelling-style noise (each true positive moves to a random other class with probability
``--noise``), and BCE-like losses ``-log q`` with ``q ~ Beta(6, 1)`` for correct labels and
``q ~ Beta(1.2, 3)`` for wrong ones.

Prints the time of one ``clean_probability`` call (best of ``--repeat``), the peak extra memory,
and, for ``--sklearn-groups`` (class, polarity) groups fitted one by one with
``sklearn.mixture.GaussianMixture`` (same settings, its default k-means init), the time of that
loop (extrapolated to all 2K groups by number of labels; scikit-learn's OpenMP and BLAS limited
to ``--threads`` like torch), the time ratio, the agreement of the clean decisions (p > 0.5)
and the largest probability difference.

OpenMP's idle-thread policy matters to both sides on a small CPU and is left as the
environment sets it (printed first): unset, libgomp (torch's and scikit-learn's) spins a
while before sleeping; ``OMP_WAIT_POLICY=PASSIVE`` sleeps at once, which spares a loaded
machine but makes each waking of the pool cost tens of microseconds.

Example::

    python benchmarks/bench_gmm.py --threads 2 --sklearn-groups 160
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_gmm.py --threads 2 --sklearn-groups 160
    python benchmarks/bench_gmm.py --sklearn-groups 0 --compare-float64   # torch only
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings

import numpy as np
import torch

from balancemix_timm.gmm import LabelGMM, clean_probability


def make_data(
    n: int, k: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(losses, noisy_labels, is_wrong)``, each ``(n, k)``."""
    rng = np.random.default_rng(seed)
    freq = np.exp(rng.uniform(np.log(0.0015), np.log(0.11), size=k))
    freq[0] = 0.55
    true = rng.random((n, k)) < freq
    given = true.copy()
    rows, cols = np.nonzero(true & (rng.random((n, k)) < noise))
    given[rows, cols] = False
    targets = (cols + rng.integers(1, k, size=cols.size)) % k
    given[rows, targets] = True
    wrong = given != true
    q = np.where(wrong, rng.beta(1.2, 3.0, size=(n, k)), rng.beta(6.0, 1.0, size=(n, k)))
    losses = -np.log(np.clip(q, 1e-7, 1.0))
    return (torch.from_numpy(losses).float(), torch.from_numpy(given).float(),
            torch.from_numpy(wrong))


def sklearn_clean(losses: np.ndarray, labels: np.ndarray, groups: list[tuple[int, int]],
                  init: LabelGMM | None = None) -> dict:
    """Clean posteriors of scikit-learn fits, one group at a time (DivideMix's recipe). With
    ``init`` (a ``LabelGMM`` fitted with ``max_iter=0``) scikit-learn starts from our initial
    parameters instead of its own random k-means."""
    from sklearn.mixture import GaussianMixture

    out = {}
    for k, l in groups:
        sel = labels[:, k] == l
        x = losses[sel, k].astype(np.float64)
        if x.size < 8 or x.max() - x.min() <= 1e-9 * max(1.0, np.abs(x).max()):
            out[(k, l)] = (sel, np.ones(x.size))
            continue
        x = (x - x.min()) / (x.max() - x.min())
        kwargs = {}
        if init is not None:
            kwargs = dict(weights_init=init.weights_[l, k].numpy(),
                          means_init=init.means_[l, k].numpy()[:, None],
                          precisions_init=1.0 / init.variances_[l, k].numpy()[:, None, None])
        gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4,
                              random_state=0, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gmm.fit(x[:, None])
        out[(k, l)] = (sel, gmm.predict_proba(x[:, None])[:, gmm.means_.argmin()])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=82081)
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--noise", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", default="kmeans", choices=["kmeans", "quantile"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64"],
                        help="per-label arithmetic of clean_probability (see its docstring)")
    parser.add_argument("--compare-float64", action="store_true",
                        help="also time dtype='float64' and compare its decisions with --dtype")
    parser.add_argument("--sklearn-init", default="kmeans", choices=["kmeans", "ours"],
                        help="scikit-learn's own k-means init, or our initial parameters")
    parser.add_argument("--sklearn-groups", type=int, default=160,
                        help="how many (class, polarity) groups to fit with scikit-learn "
                             "(0: skip; fewer than 2K: a random subset, time extrapolated)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    losses, labels, wrong = make_data(args.n, args.k, args.noise, args.seed)
    losses, labels = losses.to(args.device), labels.to(args.device)
    print(f"data: N={args.n} K={args.k} positives/image={labels.sum(1).mean():.2f} "
          f"wrong labels: {wrong.float().mean():.4f} "
          f"(positives {wrong[labels.cpu() == 1].float().mean():.3f})")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = clean_probability(losses, labels, init=args.init, dtype=args.dtype)  # warm-up
    times, cpu = [], []
    for _ in range(args.repeat):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        p = clean_probability(losses, labels, init=args.init, dtype=args.dtype)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_ours = min(times)
    print(f"clean_probability: best {t_ours:.3f} s, median {sorted(times)[len(times) // 2]:.3f} s "
          f"over {args.repeat} ({args.threads} threads, {args.device}), CPU time best "
          f"{min(cpu):.3f} s; "
          f"peak RSS growth {(rss1 - rss0) / 1024:.0f} MiB")
    if args.compare_float64:
        times64 = []
        for _ in range(max(1, args.repeat // 2)):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            p64 = clean_probability(losses, labels, init=args.init, dtype="float64")
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times64.append(time.perf_counter() - t0)
        same = ((p.cpu() > 0.5) == (p64.cpu() > 0.5)).float().mean()
        print(f"dtype=float64: best {min(times64):.3f} s (x{min(times64) / t_ours:.2f} of "
              f"dtype={args.dtype}); clean decisions equal on {same:.6f} of labels, "
              f"max |p - p64| {(p.cpu() - p64.cpu()).abs().max():.2e}")
    p = p.cpu()
    clean = p > 0.5
    truth = ~wrong
    print(f"clean decisions vs truth: accuracy {(clean == truth).float().mean():.4f}")

    if args.sklearn_groups <= 0:
        return
    all_groups = [(k, l) for k in range(args.k) for l in (0, 1)]
    rng = np.random.default_rng(args.seed + 1)
    if args.sklearn_groups < len(all_groups):
        pick = rng.choice(len(all_groups), size=args.sklearn_groups, replace=False)
        groups = [all_groups[i] for i in sorted(pick)]
    else:
        groups = all_groups
    x_np, y_np = losses.cpu().double().numpy(), labels.cpu().numpy()
    init = None
    if args.sklearn_init == "ours":
        init = LabelGMM(max_iter=0, init=args.init).fit(losses, labels)
    from threadpoolctl import threadpool_limits

    # The same number of threads for scikit-learn's OpenMP (k-means) and BLAS as for torch.
    with threadpool_limits(limits=args.threads):
        t0, c0 = time.perf_counter(), time.process_time()
        ref = sklearn_clean(x_np, y_np, groups, init)
        t_sk = time.perf_counter() - t0
        c_sk = time.process_time() - c0
    n_sel = sum(int(sel.sum()) for sel, _ in ref.values())
    t_sk_all = t_sk * (args.n * args.k) / max(n_sel, 1)
    agree, total, max_diff, worst = 0, 0, 0.0, []
    for (k, l), (sel, q) in ref.items():
        ours = p[torch.from_numpy(sel), k].double().numpy()
        same = ((ours > 0.5) == (q > 0.5))
        agree += int(same.sum())
        total += same.size
        max_diff = max(max_diff, float(np.abs(ours - q).max()) if q.size else 0.0)
        worst.append((float(same.mean()) if same.size else 1.0, k, l))
    worst.sort()
    c_sk_all = c_sk * (args.n * args.k) / max(n_sel, 1)
    print(f"sklearn loop ({args.sklearn_init} init): {len(groups)} groups {t_sk:.2f} s "
          f"(all {len(all_groups)} groups ~{t_sk_all:.2f} s); speed-up x{t_sk_all / t_ours:.1f}; "
          f"CPU time {c_sk_all:.2f} s, CPU-time ratio x{c_sk_all / min(cpu):.1f} (robust to other "
          f"jobs, but with several threads it counts scikit-learn's OpenMP threads spinning "
          f"idle: compare wall clock)")
    print(f"clean-decision agreement with sklearn: {agree / total:.5f} "
          f"({total - agree} of {total} labels differ); max |p - p_sklearn| {max_diff:.2e}")
    lowest = ", ".join(f"k={k} l={l}: {a:.4f}" for a, k, l in worst[:3])
    print(f"lowest per-group agreement: {lowest}")


if __name__ == "__main__":
    main()
