"""Effect of the cheaper view options on the demo benchmark's mAP (docs/performance.md §2).

Trains BalanceMix on the demo set (40% mislabeling, the demo's budget unless overridden) once
per view option, with the same seed, and prints the final mAP (all / many / medium / few),
the time spent on view forwards and the total wall time of each run.

Options compared (``name=overrides``; add your own with ``--variant``):

* ``views2``: the default, ``num_views=2``, ``view_fraction=1``;
* ``views1``: ``num_views=1``;
* ``frac0.5``: ``view_fraction=0.5``;
* ``frac0.25``: ``view_fraction=0.25``.

Example (the figures of docs/performance.md)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_view_options.py --out /tmp/bench_views
    python benchmarks/bench_view_options.py --only views2,frac0.5 epochs=6 warmup_epochs=2
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from balancemix_timm.config import load_config, parse_overrides  # noqa: E402
from balancemix_timm.textfiles import read_json_lines, write_json  # noqa: E402
from balancemix_timm.train import train  # noqa: E402

#: The measurement's settings (``docs/performance.md``, "Cheaper views"): the demo set at 40% mislabeling.
SETTINGS: dict[str, object] = dict(
    data="demo", demo_num_train=2000, demo_num_val=500, demo_num_classes=24, image_size=64, model="resnet10t",
    epochs=12, warmup_epochs=4, noise="mislabel", noise_rate=0.4, seed=0, noise_seed=0,
)

OPTIONS: dict[str, dict[str, object]] = {
    "views2": dict(num_views=2, view_fraction=1.0),
    "views1": dict(num_views=1, view_fraction=1.0),
    "frac0.5": dict(num_views=2, view_fraction=0.5),
    "frac0.25": dict(num_views=2, view_fraction=0.25),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/bench_views")
    p.add_argument("--data-root", default="/tmp/bench_demo_data_full")
    p.add_argument("--only", default=",".join(OPTIONS), help="comma-separated option names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="key=value overrides of the demo settings")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    extra = parse_overrides(args.overrides)
    results = {}
    for name in args.only.split(","):
        values = dict(SETTINGS, method="balancemix", data_root=args.data_root, output_dir=args.out,
                      run_name=name, progress=False, plots=False)
        values.update(OPTIONS[name])
        values.update(extra)
        cfg = load_config(None, values)
        load = os.getloadavg()
        t0 = time.perf_counter()
        summary = train(cfg)
        wall = time.perf_counter() - t0
        rows = read_json_lines(Path(summary["run_dir"]) / "metrics.jsonl")
        last = summary["last"]
        res = dict(
            mAP=last["mAP"], many=last.get("mAP_many"), medium=last.get("mAP_medium"), few=last.get("mAP_few"),
            best_mAP=summary["best"]["mAP"], view_time=sum(r.get("view_time", 0.0) for r in rows),
            train_time=sum(r["train_time"] for r in rows), refresh_time=sum(r.get("refresh_time", 0.0) for r in rows),
            wall=wall, clean_precision=last.get("clean_precision"), clean_recall=last.get("clean_recall"),
            load_before=load[0],
        )
        results[name] = res
        print(f"{name:<9} mAP {res['mAP']:.2f} (many {res['many']:.2f}, medium {res['medium']:.2f}, "
              f"few {res['few']:.2f}; best {res['best_mAP']:.2f})  train {res['train_time']:.0f} s, "
              f"views {res['view_time']:.0f} s, refresh {res['refresh_time']:.2f} s, wall {wall:.0f} s, "
              f"load {load[0]:.2f}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out) / "view_options.json", results, indent=2)


if __name__ == "__main__":
    main()
