"""Cost of a BalanceMix training step against a plain Mixup + ASL step (docs/performance.md §2).

Everything runs through the real trainer code on one :class:`~balancemix_timm.train.Trainer`
(one model, one optimiser, one schedule): the ASL baseline's ``training_step`` (two random
streams, Mixup targets, ``asl_elementwise`` summed over labels and averaged over the batch) and
BalanceMix's ``training_step`` with ``base_loss="asl"`` (same elementwise loss), on the same
batches, pre-built by the trainer's paired loader and held in memory (data loading is not
timed; see ``bench_loader.py``). The engine is put in a post-warm-up state first (every sample
recorded, one refresh applied: re-labeled and ambiguous labels are live), so targets come from
the refined table and the loss is weighted (Eq. 10).

Variants, interleaved round by round (each round runs every variant on the same batches, in a
rotating order) so that a load change on the machine hits all of them alike:

* ``mixup_asl``: the baseline step;
* ``bm_noviews``: BalanceMix without the view forwards;
* ``bm_views``: BalanceMix with ``num_views=2`` no-grad views per random instance (default);
* ``bm_views_1``: ``num_views=1``;
* ``bm_frac_0.5`` / ``bm_frac_0.25``: ``view_fraction`` 0.5 / 0.25 (views for that share of
  each random batch, the others keep their last record).

Step times are printed as wall clock and as this process's CPU time; on CPU the derived figures
use the CPU time, which other jobs on a shared machine barely change (wall clock on CUDA).
It also times the pieces in isolation on one batch (median of many calls): model forward,
forward + loss + backward, optimiser step, the view forwards, and the engine's bookkeeping
(``mixed_targets``, ``loss`` beyond the plain ASL loss, ``record``), and prints the
bookkeeping's share of each step, plus the epoch-end refresh at the data set's size.

Example (the figures of docs/performance.md)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_step.py --threads 2
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_step.py --threads 2 --model resnet18 \\
        --image-size 128 --batch-size 32
    python benchmarks/bench_step.py --device cuda --amp --model resnet50 --image-size 448 \\
        --batch-size 64 --workers 8          # on a GPU machine (benchmarks/bench_gpu.sh)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from balancemix_timm.config import load_config  # noqa: E402
from balancemix_timm.loss import asl_elementwise  # noqa: E402
from balancemix_timm.methods import build_method  # noqa: E402
from balancemix_timm.textfiles import write_json  # noqa: E402
from balancemix_timm.train import Trainer  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "mixup_asl": dict(method="asl"),
    "bm_noviews": dict(method="bm", views=False),
    "bm_views": dict(method="bm", views=True, num_views=2, view_fraction=1.0),
    "bm_views_1": dict(method="bm", views=True, num_views=1, view_fraction=1.0),
    "bm_frac_0.5": dict(method="bm", views=True, num_views=2, view_fraction=0.5),
    "bm_frac_0.25": dict(method="bm", views=True, num_views=2, view_fraction=0.25),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    """The clock of the derived figures: this process's CPU time on CPU (robust to other jobs on
    a shared machine), wall clock on CUDA (where the CPU only queues work)."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def _median_time(fn: Callable[[], Any], device: torch.device, repeat: int, warmup: int = 3) -> float:
    clock = _clock(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        _sync(device)
        times.append(clock() - t0)
    return statistics.median(times)


def build(args: argparse.Namespace) -> tuple[Trainer, Any, Any, list[Any]]:
    from balancemix_timm.data.demo import make_demo_dataset

    root = Path(args.data_root)
    make_demo_dataset(root, num_train=args.num_train, num_val=64, num_classes=args.num_classes,
                      image_size=64, seed=0)
    out = tempfile.mkdtemp(prefix="bench_step_")
    cfg = load_config(None, dict(
        data="coco", data_root=str(root), image_size=args.image_size, model=args.model,
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp,
        method="balancemix", base_loss="asl", warmup_epochs=0, eps=0.9, num_views=2,
        optimizer="adamw", lr=1e-4, epochs=1000, progress=False, plots=False, output_dir=out,
        many_threshold=1000, few_threshold=100,
    ))
    trainer = Trainer(cfg)
    bm = trainer.method
    asl = build_method("asl", trainer.context)
    eng = bm.engine
    # Post-warm-up state: predictions that agree with the given labels except on ~10% of them
    # (some confidently: re-labeled; some not: ambiguous), then one applied refresh.
    g = torch.Generator().manual_seed(0)
    given = eng.given_labels.cpu().float()
    conf = 0.8 + 0.19 * torch.rand(given.shape, generator=g)
    p = torch.where(given.bool(), conf, 1 - conf)
    flip = torch.rand(given.shape, generator=g) < 0.1
    p = torch.where(flip, 1 - p, p)
    eng.set_epoch(0)
    eng.record(torch.arange(len(given)), p.to(eng.device))
    report = eng.refresh(epoch=0)
    assert report.applied
    print(f"engine state: clean {report.clean_fraction:.3f}, re-labeled {report.relabeled_fraction:.3f}, "
          f"ambiguous {report.ambiguous_fraction:.3f}")
    bm.set_epoch(1)
    loader = trainer._train_loader(1)
    batches = []
    for batch in loader:
        if len(batch.index_r) == args.batch_size:
            if trainer.device.type == "cuda":
                batch = batch._replace(input=batch.input.pin_memory(), view_r=batch.view_r.pin_memory())
            batches.append(batch)
        if len(batches) == args.num_batches:
            break
    return trainer, bm, asl, batches


def _step(trainer: Trainer, method: Any, batch: Any) -> None:
    """One training step as the trainer takes it: loss, optimiser step, post-step hook."""
    trainer.optimizer_step(method.training_step(batch))
    method.after_step(batch)


def run_variant(name: str, trainer: Trainer, bm: Any, asl: Any, batch: Any) -> None:
    v = VARIANTS[name]
    if v["method"] == "asl":
        _step(trainer, asl, batch._replace(view_r=None))
        return
    if not v["views"]:
        _step(trainer, bm, batch._replace(view_r=None))
        return
    trainer.cfg.num_views = v["num_views"]
    trainer.cfg.view_fraction = v["view_fraction"]
    _step(trainer, bm, batch)


def time_steps(
    args: argparse.Namespace, trainer: Trainer, bm: Any, asl: Any, batches: list[Any]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    names = list(VARIANTS)
    dev = trainer.device
    for name in names:  # warm-up (allocator, autotuning, first-call overheads)
        for batch in batches[:2]:
            run_variant(name, trainer, bm, asl, batch)
    _sync(dev)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            for batch in batches:
                t0, c0 = time.perf_counter(), time.process_time()
                run_variant(name, trainer, bm, asl, batch)
                _sync(dev)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    trainer.cfg.num_views, trainer.cfg.view_fraction = 2, 1.0
    return times, cpu


def time_pieces(args: argparse.Namespace, trainer: Trainer, bm: Any, asl: Any, batch: Any) -> dict[str, float]:
    dev = trainer.device
    eng = bm.engine
    model = trainer.model
    rep = args.piece_repeat
    x = batch.input.to(dev)
    views = batch.view_r[:2].to(dev)
    y = eng.mixed_targets(batch.index_r, batch.index_m, batch.lam, device=dev)

    def fwd() -> None:
        with torch.no_grad(), trainer.autocast():
            model(x)

    def fwd_loss_bwd() -> None:
        with trainer.autocast():
            logits = model(x).float()
        loss = asl_elementwise(logits, y).sum(1).mean()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()

    def opt_step() -> None:
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.scheduler.step()

    fwd_loss_bwd()
    out = dict(
        forward=_median_time(fwd, dev, rep),
        forward_loss_backward=_median_time(fwd_loss_bwd, dev, rep),
        optimizer_step=_median_time(opt_step, dev, rep),
        views_2=_median_time(lambda: trainer.view_probs(views), dev, rep),
    )
    with torch.no_grad(), trainer.autocast():
        logits = model(x).float()
    probs = trainer.view_probs(views)
    idx_r = batch.index_r
    many = 20 * rep
    out["bm_mixed_targets"] = _median_time(lambda: eng.mixed_targets(idx_r, batch.index_m, batch.lam, device=dev),
                                           dev, many)
    out["asl_mixed_targets"] = _median_time(lambda: asl.mixed_targets(batch), dev, many)
    out["bm_loss"] = _median_time(lambda: eng.loss(logits, y, idx_r), dev, many)
    out["asl_loss"] = _median_time(lambda: asl.mixed_loss(logits, y, batch), dev, many)
    out["bm_record"] = _median_time(lambda: eng.record(idx_r, probs), dev, many)
    return out


def time_refresh(trainer: Trainer, bm: Any, repeat: int) -> float:
    eng = bm.engine
    snapshot = eng.state_dict()
    t = _median_time(lambda: eng.refresh(epoch=1), trainer.device, repeat, warmup=1)
    eng.load_state_dict(snapshot)
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-classes", type=int, default=24)
    p.add_argument("--data-root", default="/tmp/bench_demo_data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    p.add_argument("--workers", type=int, default=0, help="loader workers for building the batches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-batches", type=int, default=3, help="distinct batches held in memory")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--piece-repeat", type=int, default=10)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (float("nan"),) * 3
    trainer, bm, asl, batches = build(args)
    dev_name = torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else "cpu"
    print(f"device {dev_name}, {args.threads} threads, model {args.model} at {args.image_size} px, "
          f"batch {args.batch_size}, K={trainer.num_classes}, N={len(trainer.train_set)}, amp={trainer.amp}; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    times, cpu_times = time_steps(args, trainer, bm, asl, batches)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    base, base_cpu = med["mixup_asl"], med_cpu["mixup_asl"]
    print(f"\nstep time, median of {len(times['mixup_asl'])} steps per variant (interleaved rounds); "
          f"wall clock and this process's CPU time (summed over threads: on a CPU shared with other "
          f"jobs it is the load-independent figure; meaningless for CUDA):")
    for name, t in med.items():
        q1, q3 = statistics.quantiles(times[name], n=4)[0], statistics.quantiles(times[name], n=4)[2]
        print(f"  {name:<13} wall {1000 * t:8.1f} ms (IQR {1000 * q1:.1f}-{1000 * q3:.1f}) x{t / base:.3f};  "
              f"CPU {1000 * med_cpu[name]:8.1f} ms x{med_cpu[name] / base_cpu:.3f}  (ratios to mixup_asl)")

    if trainer.device.type == "cpu":
        med = med_cpu  # derived figures below on the load-independent clock
    print(f"\nderived figures below use {'CPU time' if trainer.device.type == 'cpu' else 'wall clock'}")
    pieces = time_pieces(args, trainer, bm, asl, batches[0])
    book = pieces["bm_mixed_targets"] + pieces["bm_loss"] + pieces["bm_record"]
    extra = ((pieces["bm_mixed_targets"] - pieces["asl_mixed_targets"]) + (pieces["bm_loss"] - pieces["asl_loss"])
             + pieces["bm_record"])
    print("\npieces on one batch (median):")
    for name, t in pieces.items():
        unit = 1e3 if t > 1e-3 else 1e6
        print(f"  {name:<22} {t * unit:9.3f} {'ms' if unit == 1e3 else 'us'}")
    fwd_bwd = pieces["forward_loss_backward"]
    print(f"\nengine bookkeeping per step (mixed_targets + loss incl. the ASL terms + record): "
          f"{1e3 * book:.3f} ms = {100 * book / med['bm_noviews']:.2f}% of the no-view step, "
          f"{100 * book / med['bm_views']:.2f}% of the step with views")
    print(f"engine bookkeeping beyond the baseline's own targets + loss: {1e3 * extra:.3f} ms = "
          f"{100 * extra / med['bm_noviews']:.2f}% of the no-view step")
    direct = book + pieces["optimizer_step"]
    print(f"not a forward/backward pass, timed directly (engine bookkeeping + optimiser step and "
          f"schedule): {1e3 * direct:.2f} ms = {100 * direct / med['bm_noviews']:.2f}% of the no-view step "
          f"(the baseline's own optimiser step: {100 * pieces['optimizer_step'] / med['mixup_asl']:.2f}% of its step)")
    for name in ("bm_noviews", "mixup_asl"):
        non_fb = med[name] - fwd_bwd
        print(f"  cross-check, {name} step median minus isolated forward+loss+backward: "
              f"{1e3 * non_fb:.2f} ms = {100 * non_fb / med[name]:.1f}%")
    refresh = time_refresh(trainer, bm, 5)
    n_steps = -(-len(trainer.train_set) // args.batch_size)
    print(f"epoch-end refresh at N={len(trainer.train_set)}, K={trainer.num_classes}: {1e3 * refresh:.1f} ms "
          f"= {100 * refresh / (n_steps * med['bm_views']):.2f}% of an epoch of {n_steps} steps with views")
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        write_json(args.json, dict(
            args=vars(args), device=dev_name, step_median=med, step_cpu_median=med_cpu, pieces=pieces, bookkeeping=book,
            bookkeeping_extra=extra, refresh=refresh, load=load,
        ), indent=2)


if __name__ == "__main__":
    main()
