"""``balancemix-benchmark``: the paper's tables (1, 2, 3, 5, 7) measured on the offline demo data.

Usage::

    balancemix-benchmark --budget quick            # 11-run subset -> runs/benchmark-quick/results.md
    balancemix-benchmark --budget full --seeds 0,1 --out runs/benchmark --jobs 2   # -> docs/results.md

(``python -m balancemix_timm.benchmark`` is the same.) Budgets (:data:`BUDGETS`): ``quick`` is
every method and every Table 5 row on mislabel 40% with one seed (11 runs, a subset of the full
grid with the same settings); ``full`` is every method on every label setting, Table 5's rows on four settings and a
minority-sampler comparison (63 runs per seed, 6 epochs). Both train ``resnet10t`` from scratch
on 800 demo images of 32 px; ``docs/results.md`` states the measured run times.

Performance: ``--threads`` (default 1) torch threads per run and ``--jobs`` runs at once. On a
shared 2-core machine one thread per run was 4-9x faster per step than two (oversubscription),
so ``--jobs 2 --threads 1`` is the recommended setting there.

Every (method, label setting, seed) is one :func:`~balancemix_timm.train.train` run in
``<out>/runs/<key>/``; a run whose ``summary.json`` exists (and whose ``config.yaml`` matches)
is finished and skipped, an interrupted one continues from its ``last.pth``. After the runs
(or with ``--report-only``) the tables are written as Markdown (``results.md``), JSON
(``results.json``) and PNG plots; cells of runs not yet finished read ``n/a``. The demo set is
generated once per ``--out`` (``<out>/data``) and every run reads it as COCO-format data, so all
runs of a grid share the same images even if the generator changes between invocations.

Protocol (as in the paper): last-epoch validation mAP over all classes and the many / medium /
few-shot groups (COCO's 10,000 / 1,000 positive-label thresholds scaled to the demo set's size,
:func:`~balancemix_timm.data.demo.demo_group_thresholds`); every method but the Default (BCE)
trains on Mixup batches; BalanceMix uses ``eps = 0.975`` except ``0.55`` in the single-positive
setting. LL-R / LL-Ct use ``method_options.reduction=sum_mean`` so that all losses share the
per-sample-sum scale at the same learning rate (their paper's mean over entries is ``1/K`` of
it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .config import config_diff, load_config
from .train import train

__all__ = [
    "SETTINGS",
    "ABLATION_ROWS",
    "BUDGETS",
    "Budget",
    "RunSpec",
    "plan_runs",
    "run_config",
    "run_benchmark",
    "collect_results",
    "write_report",
    "headline",
    "main",
]

_logger = logging.getLogger("balancemix_timm.benchmark")

#: Label settings: name -> (config fields, label for the tables).
SETTINGS: dict[str, dict[str, Any]] = {
    "clean": dict(noise="clean", noise_rate=0.0),
    "mislabel20": dict(noise="mislabel", noise_rate=0.2),
    "mislabel40": dict(noise="mislabel", noise_rate=0.4),
    "flip20": dict(noise="random_flip", noise_rate=0.2),
    "flip40": dict(noise="random_flip", noise_rate=0.4),
    "single": dict(noise="single_positive", noise_rate=0.0),
}
SETTING_TITLES = {
    "clean": "Clean", "mislabel20": "Mislabel 20%", "mislabel40": "Mislabel 40%",
    "flip20": "Rand. flip 20%", "flip40": "Rand. flip 40%", "single": "Single positive",
}

#: Method names of the tables, in the paper's order.
METHOD_TITLES = {
    "bce": "Default (BCE)", "mixup": "Mixup (BCE)", "coteaching": "Co-teaching", "asl": "ASL",
    "testimator": "T-estimator", "llr": "LL-R", "llct": "LL-Ct", "balancemix": "BalanceMix",
}

#: Table 5's rows: (title, method, ablation). ``None`` ablation on balancemix = full BalanceMix
#: (the main grid's run); the BCE and random-sampler rows are the main grid's Default and Mixup
#: runs (``method=mixup`` is Mixup of two random streams with BCE, the engine's
#: ``ablation=mixup`` without the engine's bookkeeping).
ABLATION_ROWS: tuple[tuple[str, str, str | None], ...] = (
    ("Default (BCE loss)", "bce", None),
    ("+ Random sampler (= Mixup)", "mixup", None),
    ("+ Minority sampler (Eq. 4)", "balancemix", "minority"),
    ("+ Clean labels (Eq. 8)", "balancemix", "clean"),
    ("+ Re-labeled labels (Eq. 9)", "balancemix", "relabel"),
    ("+ Ambiguous labels (Eq. 10) = BalanceMix", "balancemix", None),
)

#: Per-method option overrides shared by every budget.
METHOD_OVERRIDES: dict[str, dict[str, Any]] = {
    "llr": {"method_options": {"reduction": "sum_mean"}},
    "llct": {"method_options": {"reduction": "sum_mean"}},
}
#: The paper's re-labeling threshold for the single-positive setting.
SINGLE_POSITIVE_EPS = 0.55


@dataclass(frozen=True)
class Budget:
    """A benchmark budget: shared training settings and the grid of runs.

    Attributes:
        train: :class:`~balancemix_timm.config.TrainConfig` fields shared by every run.
        methods: methods of Tables 1-3.
        settings: label settings of the main grid (keys of :data:`SETTINGS`).
        ablation_settings: label settings of Table 5 (empty: no ablation).
        ablation_rows: Table 5 rows to run (keys: the ``ablation`` names; the BCE and full
            rows come from the main grid, or are run if missing from it).
        sampler_variants: extra BalanceMix runs comparing the minority sampler's forms, as
            ``(name, overrides)`` on ``sampler_settings``.
        sampler_settings: label settings of the sampler comparison.
        seeds: default seeds.
        description: one line for the report.
    """

    train: Mapping[str, Any]
    methods: tuple[str, ...]
    settings: tuple[str, ...]
    ablation_settings: tuple[str, ...] = ()
    ablation_rows: tuple[str, ...] = ("mixup", "minority", "clean", "relabel")
    sampler_variants: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    sampler_settings: tuple[str, ...] = ("mislabel40",)
    seeds: tuple[int, ...] = (0,)
    description: str = ""


_COMMON_TRAIN: dict[str, Any] = dict(
    data="demo",
    demo_num_classes=24,
    demo_imbalance_ratio=100.0,
    demo_seed=0,
    model="resnet10t",
    batch_size=32,
    optimizer="adamw",
    lr=5e-3,
    cutout=False,  # the paper's augmentation is RandAugment (+ Mixup); Cutout is ML-Decoder's
    weight_decay=1e-4,
    scheduler="cosine",
    device="cpu",
    progress=False,
    plots=False,
)

_ALL_METHODS = ("bce", "mixup", "coteaching", "asl", "testimator", "llr", "llct", "balancemix")
_ALL_SETTINGS = ("mislabel40", "flip40", "single", "clean", "mislabel20", "flip20")  # run order
_DISPLAY_ORDER = ("clean", "mislabel20", "mislabel40", "flip20", "flip40", "single")

_FULL_TRAIN = dict(_COMMON_TRAIN, demo_num_train=800, demo_num_val=400, image_size=32, epochs=6, warmup_epochs=2)

#: The named budgets (``--budget``).
BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        train=_FULL_TRAIN,
        methods=_ALL_METHODS,
        settings=("mislabel40",),
        ablation_settings=("mislabel40",),
        description="quick subset: every method and every Table 5 row on mislabel 40%, one seed (the full grid's settings)",
    ),
    "full": Budget(
        train=_FULL_TRAIN,
        methods=_ALL_METHODS,
        settings=_ALL_SETTINGS,
        ablation_settings=("clean", "mislabel40", "flip40", "single"),
        sampler_variants=(
            ("T=0.5", {"sampler_temperature": 0.5}),
            ("T=4", {"sampler_temperature": 4.0}),
            ("positive score", {"sampler_score": "positive"}),
        ),
        description="full grid: 8 methods x 6 label settings, Table 5 ablation on 4 settings, sampler comparison",
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    method: str
    setting: str
    seed: int
    ablation: str | None = None
    variant: str | None = None
    variant_overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Folder name of the run (unique in a grid)."""
        parts = [self.method]
        if self.ablation:
            parts.append(f"abl-{self.ablation}")
        if self.variant:
            parts.append("var-" + "".join(c if c.isalnum() or c in ".-" else "_" for c in self.variant))
        parts += [self.setting, f"s{self.seed}"]
        return "-".join(parts)


def plan_runs(budget: Budget, seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """Every run of ``budget``, most informative first (so a cut-short grid fills the
    headline settings of all tables before the rest), without duplicates."""
    seeds = tuple(budget.seeds if seeds is None else seeds)
    specs: list[RunSpec] = []
    order = [s for s in _ALL_SETTINGS if s in budget.settings or s in budget.ablation_settings]
    order += [s for s in budget.settings if s not in order]
    for seed in seeds:
        for setting in order:
            if setting in budget.settings:
                specs += [RunSpec(m, setting, seed) for m in budget.methods]
            if setting in budget.ablation_settings:
                specs.append(RunSpec("bce", setting, seed))
                specs += [RunSpec("mixup", setting, seed) if a == "mixup" else RunSpec("balancemix", setting, seed, ablation=a)
                          for a in budget.ablation_rows]
                specs.append(RunSpec("balancemix", setting, seed))
        for name, overrides in budget.sampler_variants:
            for setting in budget.sampler_settings:
                specs.append(RunSpec("balancemix", setting, seed, variant=name,
                                     variant_overrides=tuple(sorted(overrides.items()))))
    seen: set[str] = set()
    unique = []
    for spec in specs:
        if spec.key not in seen:
            seen.add(spec.key)
            unique.append(spec)
    return unique


def run_config(spec: RunSpec, budget: Budget, out: Path, *, workers: int = 0,
               train_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :class:`~balancemix_timm.config.TrainConfig` fields of ``spec``."""
    values: dict[str, Any] = dict(budget.train)
    values.update(train_overrides or {})
    values.update(SETTINGS[spec.setting])
    from .data.demo import demo_group_thresholds

    many, few = demo_group_thresholds(int(values["demo_num_train"]))
    values.update(
        method=spec.method,
        ablation=spec.ablation,
        seed=spec.seed,
        noise_seed=spec.seed,
        # The demo set is generated once (``_prepare_data``) and then read as COCO-format data,
        # so a run never regenerates it (nor trips over a generator changed since); the class
        # groups are the demo set's scaled thresholds.
        data="coco",
        many_threshold=many,
        few_threshold=few,
        data_root=str(out / "data"),
        output_dir=str(out / "runs"),
        run_name=spec.key,
        workers=workers,
    )
    for key, value in METHOD_OVERRIDES.get(spec.method, {}).items():
        if isinstance(value, dict):
            values[key] = dict(values.get(key) or {}, **value)
        else:
            values[key] = value
    if spec.method == "balancemix" and spec.setting == "single":
        values["eps"] = SINGLE_POSITIVE_EPS
    values.update(dict(spec.variant_overrides))
    return values


# ---------------------------------------------------------------------------- running
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _expected_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration the trainer writes to ``config.yaml`` (Table 5 rows resolved)."""
    from .engine import ABLATIONS

    cfg = load_config(None, dict(values))
    if cfg.ablation is not None:
        for key, value in ABLATIONS[cfg.ablation].items():
            setattr(cfg, key, value)
    return cfg.to_dict()


def _is_finished(run_dir: Path, values: Mapping[str, Any]) -> bool:
    """``summary.json`` exists and ``config.yaml`` holds the same configuration."""
    if not (run_dir / "summary.json").is_file():
        return False
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    expected = _expected_config(values)
    diff = config_diff(saved or {}, expected)
    if diff:
        _logger.warning("%s was run with another configuration (%s): running it again", run_dir.name, sorted(diff))
    return not diff


def _prepare_run_dir(run_dir: Path, values: Mapping[str, Any]) -> str | None:
    """``"auto"`` resume when ``run_dir`` holds a compatible interrupted run; else clear it."""
    if not run_dir.exists():
        return None
    import yaml

    cfg_path = run_dir / "config.yaml"
    saved = None
    if cfg_path.is_file():
        try:
            saved = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError:
            saved = None
    expected = _expected_config(values)
    if saved is not None and not config_diff(saved, expected) and (run_dir / "last.pth").is_file() \
            and not (run_dir / "summary.json").is_file():
        _logger.info("%s: continuing the interrupted run", run_dir.name)
        return "auto"
    shutil.rmtree(run_dir)
    return None


def _train_values(values: Mapping[str, Any], resume: str | None) -> dict[str, Any]:
    cfg = load_config(None, dict(values))
    return train(cfg, resume=resume)


def _prepare_data(values: Mapping[str, Any]) -> None:
    """Generate the shared demo set once, before any run (so parallel runs never race)."""
    from .data.demo import make_demo_dataset

    root = Path(values["data_root"])
    try:
        make_demo_dataset(
            root, num_train=int(values["demo_num_train"]), num_val=int(values["demo_num_val"]),
            num_classes=int(values["demo_num_classes"]), image_size=int(values["image_size"]),
            imbalance_ratio=float(values["demo_imbalance_ratio"]), seed=int(values["demo_seed"]),
        )
    except ValueError as err:
        # A grid keeps the data its first runs used, even if the generator changed since.
        if (root / "annotations" / "instances_train.json").is_file() and (root / "annotations" / "instances_val.json").is_file():
            _logger.warning("keeping the existing demo data in %s (%s)", root, err)
        else:
            raise


def _worker(values: dict[str, Any], resume: str | None, threads: int,
            deadline: float | None = None) -> tuple[float, float] | None:  # pragma: no cover - subprocess
    import torch

    if deadline is not None and time.time() > deadline:
        return None
    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING)
    t0, c0 = time.perf_counter(), time.process_time()
    _train_values(values, resume)
    return time.perf_counter() - t0, time.process_time() - c0


def _after_run(run_dir: Path, wall: float, keep_checkpoints: bool, cpu: float | None = None) -> None:
    (run_dir / "bench.json").write_text(json.dumps(dict(
        wall_time=wall, cpu_time=cpu, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )))
    if not keep_checkpoints:
        for name in ("last.pth", "best.pth"):
            (run_dir / name).unlink(missing_ok=True)


def run_benchmark(
    budget: Budget | str,
    out: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    workers: int = 0,
    jobs: int = 1,
    threads: int | None = None,
    keep_checkpoints: bool = False,
    train_overrides: Mapping[str, Any] | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``budget`` under ``out``.

    Args:
        budget: A :class:`Budget` or a key of :data:`BUDGETS`.
        out: Output folder (``data/`` and ``runs/`` are made in it).
        seeds: Seeds to run (default: the budget's).
        workers: DataLoader workers per run.
        jobs: Runs trained at the same time (separate processes; 1 = in this process).
        threads: Torch threads per run (``None``: unchanged in this process; ``max(1, cores // jobs)``
            with ``jobs > 1``). On a shared 2-core machine 1 thread per run was 4-9x faster per
            step than 2 (oversubscription).
        keep_checkpoints: Keep ``last.pth`` / ``best.pth`` of finished runs.
        train_overrides: Extra config fields applied to every run (after the budget's).
        deadline: ``time.time()`` after which no further run is started.

    Returns:
        ``{"planned": n, "skipped": n, "trained": n, "failed": [keys], "wall_time": s}``.
    """
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    out = Path(out)
    specs = plan_runs(budget, seeds)
    todo: list[tuple[RunSpec, dict[str, Any]]] = []
    skipped = 0
    for spec in specs:
        values = run_config(spec, budget, out, workers=workers, train_overrides=train_overrides)
        if _is_finished(out / "runs" / spec.key, values):
            skipped += 1
        else:
            todo.append((spec, values))
    _logger.info("benchmark: %d runs planned, %d finished already, %d to run", len(specs), skipped, len(todo))
    t_start = time.perf_counter()
    failed: list[str] = []
    trained = 0
    if todo:
        _prepare_data({**budget.train, **dict(train_overrides or {}), "data_root": str(out / "data")})
    if jobs <= 1:
        import torch

        old_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            for i, (spec, values) in enumerate(todo):
                if deadline is not None and time.time() > deadline:
                    _logger.warning("deadline reached: %d runs left unstarted", len(todo) - i)
                    break
                run_dir = out / "runs" / spec.key
                resume = _prepare_run_dir(run_dir, values)
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    summary = _train_values(values, resume)
                except Exception:  # noqa: BLE001 - one failed run must not stop the grid
                    _logger.exception("run %s failed", spec.key)
                    failed.append(spec.key)
                    continue
                wall = time.perf_counter() - t0
                _after_run(run_dir, wall, keep_checkpoints, time.process_time() - c0)
                trained += 1
                _logger.info("[%d/%d] %s: mAP %.2f in %.0f s (elapsed %.1f min)", i + 1, len(todo), spec.key,
                             summary.get("last", {}).get("mAP", float("nan")), wall, (time.perf_counter() - t_start) / 60)
        finally:
            torch.set_num_threads(old_threads)
    else:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {}
            for spec, values in todo:
                resume = _prepare_run_dir(out / "runs" / spec.key, values)
                futures[pool.submit(_worker, values, resume, threads, deadline)] = spec
            for i, fut in enumerate(as_completed(futures)):
                spec = futures[fut]
                try:
                    timing = fut.result()
                except Exception:  # noqa: BLE001
                    _logger.exception("run %s failed", spec.key)
                    failed.append(spec.key)
                    continue
                if timing is None:
                    _logger.warning("deadline reached: %s not started", spec.key)
                    continue
                wall, cpu = timing
                _after_run(out / "runs" / spec.key, wall, keep_checkpoints, cpu)
                trained += 1
                _logger.info("[%d/%d] %s done in %.0f s (elapsed %.1f min)", i + 1, len(todo), spec.key, wall,
                             (time.perf_counter() - t_start) / 60)
    return dict(planned=len(specs), skipped=skipped, trained=trained, failed=failed,
                wall_time=time.perf_counter() - t_start)


# ---------------------------------------------------------------------------- results
_GROUPS = ("", "_many", "_medium", "_few")
_GROUP_TITLES = ("All", "Many", "Medium", "Few")


@dataclass
class _Cell:
    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        v = [x for x in self.values if not math.isnan(x)]
        return sum(v) / len(v) if v else float("nan")

    @property
    def std(self) -> float:
        v = [x for x in self.values if not math.isnan(x)]
        if len(v) < 2:
            return float("nan")
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))

    def as_dict(self) -> dict[str, Any]:
        return dict(mean=_nan_none(self.mean), std=_nan_none(self.std), n=self.n, values=[_nan_none(x) for x in self.values])


def _nan_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def _row_at_fraction(metrics: Sequence[Mapping[str, Any]], epochs: int, fraction: float) -> Mapping[str, Any] | None:
    """The metrics row of epoch ``max(1, round(fraction * epochs))`` (1-based)."""
    target = max(1, int(math.floor(fraction * epochs + 0.5)))
    for row in metrics:
        if int(row.get("epoch", -1)) == target:
            return row
    return None


def collect_results(budget: Budget | str, out: str | Path, *, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Read every finished run of ``budget`` under ``out`` into the tables' numbers (JSON-ready)."""
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    out = Path(out)
    specs = plan_runs(budget, seeds)
    runs: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    thresholds = sizes = None
    total_wall = total_cpu = 0.0
    n_cpu = 0
    finished_at: list[str] = []
    for spec in specs:
        run_dir = out / "runs" / spec.key
        summary = _read_json(run_dir / "summary.json")
        if summary is None:
            missing.append(spec.key)
            continue
        bench = _read_json(run_dir / "bench.json") or {}
        total_wall += float(bench.get("wall_time", 0.0))
        if bench.get("finished_at"):
            finished_at.append(str(bench["finished_at"]))
        if bench.get("cpu_time") is not None:
            total_cpu += float(bench["cpu_time"])
            n_cpu += 1
        thresholds = thresholds or summary.get("group_thresholds")
        sizes = sizes or summary.get("group_sizes")
        metrics = _read_metrics(run_dir)
        runs[spec.key] = dict(
            method=spec.method, setting=spec.setting, seed=spec.seed, ablation=spec.ablation, variant=spec.variant,
            last=summary.get("last", {}), metrics=metrics, wall_time=bench.get("wall_time"), cpu_time=bench.get("cpu_time"),
            noise_report=summary.get("noise_report"), epochs=summary.get("epochs"),
        )

    def cell(method: str, setting: str, metric: str, *, ablation: str | None = None, variant: str | None = None) -> _Cell:
        c = _Cell()
        for r in runs.values():
            if (r["method"], r["setting"], r["ablation"], r["variant"]) == (method, setting, ablation, variant):
                c.values.append(float(r["last"].get(metric, float("nan"))))
        return c

    main_table: dict[str, dict[str, dict[str, Any]]] = {}
    settings_main = [s for s in _ALL_SETTINGS if s in budget.settings]
    for method in budget.methods:
        main_table[method] = {
            s: {("mAP" + g): cell(method, s, "mAP" + g).as_dict() for g in _GROUPS} for s in settings_main
        }
    ablation_table: dict[str, dict[str, Any]] = {}
    for title, method, abl in ABLATION_ROWS:
        row_name = "mixup" if method == "mixup" else abl
        if row_name is not None and row_name not in budget.ablation_rows:
            continue
        ablation_table[title] = {s: cell(method, s, "mAP", ablation=abl).as_dict() for s in budget.ablation_settings}

    # Table 7: label management at 25 / 50 / 100% of training.
    lm_keys = ("clean_precision", "clean_recall", "relabel_proportion", "relabel_accuracy")
    table7: dict[str, dict[str, dict[str, Any]]] = {}
    for setting in ("mislabel20", "mislabel40"):
        if setting not in budget.settings or "balancemix" not in budget.methods:
            continue
        table7[setting] = {}
        for frac in (0.25, 0.5, 1.0):
            cells = {k: _Cell() for k in lm_keys}
            epoch = None
            for r in runs.values():
                if (r["method"], r["setting"], r["ablation"], r["variant"]) != ("balancemix", setting, None, None):
                    continue
                row = _row_at_fraction(r["metrics"], int(r["epochs"] or budget.train["epochs"]), frac)
                if row is None:
                    continue
                epoch = row.get("epoch")
                for k in lm_keys:
                    v = row.get(k)
                    cells[k].values.append(100.0 * float(v) if v is not None else float("nan"))
            table7[setting][f"{int(frac * 100)}%"] = dict({k: c.as_dict() for k, c in cells.items()}, epoch=epoch)
        # Reference: the precision of keeping every given label (share of labels left correct).
        base = _Cell()
        for r in runs.values():
            if (r["method"], r["setting"], r["ablation"], r["variant"]) == ("balancemix", setting, None, None) \
                    and r.get("noise_report"):
                base.values.append(100.0 * (1.0 - float(r["noise_report"].get("changed_fraction", float("nan")))))
        table7[setting]["given_labels_precision"] = base.as_dict()

    # Minority sampler's weight spread per epoch (seed 0 BalanceMix runs) and the variants.
    spread: dict[str, list[dict[str, Any]]] = {}
    for r in runs.values():
        if r["method"] == "balancemix" and r["seed"] == min(budget.seeds if seeds is None else seeds) \
                and r["ablation"] in (None, "minority"):
            name = f"{r['setting']}" + (f" ({r['variant']})" if r["variant"] else "") + \
                (" [+minority only]" if r["ablation"] == "minority" else "")
            spread[name] = [
                dict(epoch=m.get("epoch"), **{k[len("lm_sampler_"):]: m[k] for k in m if k.startswith("lm_sampler_")})
                for m in r["metrics"]
            ]
    variants: dict[str, dict[str, Any]] = {}
    for name, _ in budget.sampler_variants:
        for setting in budget.sampler_settings:
            for label, var in (("paper (literal, T=1)", None), (name, name)):
                if label in variants.get(setting, {}):
                    continue
                cells = {("mAP" + g): cell("balancemix", setting, "mAP" + g, variant=var).as_dict() for g in _GROUPS}
                last_spread = _Cell(), _Cell()
                for r in runs.values():
                    if (r["method"], r["setting"], r["ablation"], r["variant"]) == ("balancemix", setting, None, var) \
                            and r["metrics"]:
                        last_spread[0].values.append(float(r["last"].get("lm_sampler_max_over_min", float("nan"))))
                        last_spread[1].values.append(float(r["last"].get("lm_sampler_ess_fraction", float("nan"))))
                cells["sampler_max_over_min"] = last_spread[0].as_dict()
                cells["sampler_ess_fraction"] = last_spread[1].as_dict()
                variants.setdefault(setting, {})[label] = cells

    meta = _read_json(out / "data" / "demo_meta.json") or {}
    data_info = dict(options=meta.get("options"), train_positive_counts=meta.get("train_positive_counts"),
                     val_positive_counts=meta.get("val_positive_counts"), class_names=meta.get("class_names"))
    return dict(
        data=data_info,
        budget=dict(train=load_config(None, dict(budget.train)).to_dict(), methods=list(budget.methods), settings=list(budget.settings),
                    ablation_settings=list(budget.ablation_settings), ablation_rows=list(budget.ablation_rows),
                    sampler_variants=[[n, dict(o)] for n, o in budget.sampler_variants],
                    seeds=list(budget.seeds if seeds is None else seeds), description=budget.description),
        group_thresholds=thresholds,
        group_sizes=sizes,
        finished=len(runs),
        planned=len(specs),
        missing=missing,
        total_run_time_s=total_wall,
        total_cpu_time_s=total_cpu,
        runs_with_cpu_time=n_cpu,
        finished_between=[min(finished_at), max(finished_at)] if finished_at else None,
        main=main_table,
        ablation=ablation_table,
        table7=table7,
        sampler_spread=spread,
        sampler_variants=variants,
        runs={k: dict(method=r["method"], setting=r["setting"], seed=r["seed"], ablation=r["ablation"],
                      variant=r["variant"], wall_time=r["wall_time"], cpu_time=r.get("cpu_time"),
                      last={k2: v for k2, v in r["last"].items() if isinstance(v, (int, float))})
              for k, r in runs.items()},
    )


# ---------------------------------------------------------------------------- report
#: Seeds requested by the report being written (cells with fewer say so).
_REPORT_SEEDS = [1]


def _fmt(c: Mapping[str, Any] | None, digits: int = 1) -> str:
    if not c or c.get("mean") is None:
        return "n/a"
    s = f"{c['mean']:.{digits}f}"
    if c.get("n", 0) > 1 and c.get("std") is not None:
        s += f" ± {c['std']:.{digits}f}"
    if 0 < c.get("n", 0) < _REPORT_SEEDS[0]:
        s += f" (n={c['n']})"
    return s


def _bold_best(cells: dict[str, Mapping[str, Any]]) -> set[str]:
    vals = {k: c["mean"] for k, c in cells.items() if c and c.get("mean") is not None}
    if not vals:
        return set()
    best = max(vals.values())
    return {k for k, v in vals.items() if v == best}


def _aug_text(t: Mapping[str, Any]) -> str:
    parts = [n for n, on in (("RandAugment", t.get("randaugment")), ("Cutout", t.get("cutout"))) if on]
    return " + ".join(parts) if parts else "none"


def _main_table(results: Mapping[str, Any], settings: Sequence[str], rate_titles: Sequence[str]) -> list[str]:
    main = results["main"]
    methods = [m for m in METHOD_TITLES if m in main]
    head = "| Method | " + " | ".join(f"{g} {r}".strip() for g in _GROUP_TITLES for r in rate_titles) + " |"
    lines = [head, "|" + "---|" * (1 + len(_GROUP_TITLES) * len(rate_titles))]
    best = {(g, s): _bold_best({m: main[m].get(s, {}).get("mAP" + g) for m in methods}) for g in _GROUPS for s in settings}
    for m in methods:
        row = [METHOD_TITLES[m]]
        for g in _GROUPS:
            for s in settings:
                c = main[m].get(s, {}).get("mAP" + g)
                text = _fmt(c)
                row.append(f"**{text}**" if m in best[(g, s)] and text != "n/a" else text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def headline(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per setting: BalanceMix's mAP (all) against the best baseline's."""
    main = results["main"]
    out = []
    if "balancemix" not in main:
        return out
    for s in _DISPLAY_ORDER:
        bm = main["balancemix"].get(s, {}).get("mAP")
        if not bm or bm.get("mean") is None:
            continue
        others = {m: main[m][s]["mAP"] for m in main if m != "balancemix" and main[m].get(s, {}).get("mAP", {}).get("mean") is not None}
        if not others:
            continue
        best_m = max(others, key=lambda m: others[m]["mean"])
        row = dict(setting=s, balancemix=bm["mean"], best_baseline=best_m, best_baseline_mAP=others[best_m]["mean"],
                   diff=bm["mean"] - others[best_m]["mean"])
        b_few = main["balancemix"][s].get("mAP_few", {}).get("mean")
        few = {m: main[m][s].get("mAP_few", {}).get("mean") for m in others}
        few = {m: v for m, v in few.items() if v is not None}
        row["balancemix_few"] = b_few
        row["best_baseline_few_method"] = max(few, key=few.get) if few else None
        row["best_baseline_few"] = few[row["best_baseline_few_method"]] if few else None
        out.append(row)
    return out


def _plots(results: Mapping[str, Any], report_dir: Path, prefix: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.info("matplotlib not installed: no plots")
        return []
    written: list[str] = []
    main = results["main"]
    methods = [m for m in METHOD_TITLES if m in main]
    settings = [s for s in _DISPLAY_ORDER if any(s in main[m] for m in methods)]
    if methods and settings:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
        width = 0.8 / len(methods)
        for ax, metric, title in ((axes[0], "mAP", "All classes"), (axes[1], "mAP_few", "Few-shot classes")):
            for i, m in enumerate(methods):
                means = [(main[m].get(s, {}).get(metric) or {}).get("mean") for s in settings]
                stds = [(main[m].get(s, {}).get(metric) or {}).get("std") for s in settings]
                xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(settings))]
                ax.bar(xs, [v if v is not None else 0 for v in means], width,
                       yerr=[v if v is not None else 0 for v in stds], label=METHOD_TITLES[m], capsize=2)
            ax.set_xticks(range(len(settings)), [SETTING_TITLES[s] for s in settings], rotation=15)
            ax.set_ylabel("last-epoch validation mAP"); ax.set_title(title)
        axes[1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"{prefix}_main.png"
        fig.savefig(report_dir / name, dpi=90); plt.close(fig); written.append(name)
    abl = results["ablation"]
    if abl:
        fig, ax = plt.subplots(figsize=(8, 4))
        titles = list(abl)
        for s in results["budget"]["ablation_settings"]:
            ys = [(abl[t].get(s) or {}).get("mean") for t in titles]
            ax.plot(range(len(titles)), [y if y is not None else float("nan") for y in ys], marker="o", label=SETTING_TITLES[s])
        ax.set_xticks(range(len(titles)), [t.split(" (")[0].split(" =")[0] for t in titles], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("mAP (all)"); ax.set_title("Table 5: components added in turn"); ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{prefix}_ablation.png"
        fig.savefig(report_dir / name, dpi=90); plt.close(fig); written.append(name)
    # label management curves (seed-0 BalanceMix runs on mislabel / flip)
    lm_runs = {k: r for k, r in results.get("_runs_metrics", {}).items()}
    if lm_runs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for key, rows in lm_runs.items():
            ep = [m["epoch"] for m in rows]
            for ax, (a, b) in zip(axes, (("clean_precision", "clean_recall"), ("relabel_proportion", "relabel_accuracy"))):
                ax.plot(ep, [100 * m[a] if m.get(a) is not None else float("nan") for m in rows], marker="o", label=f"{key}: {a}")
                ax.plot(ep, [100 * m[b] if m.get(b) is not None else float("nan") for m in rows], marker="x", ls="--", label=f"{key}: {b}")
        axes[0].set_title("clean-label selection (Eq. 12)"); axes[1].set_title("re-labeling (Eq. 13)")
        for ax in axes:
            ax.set_xlabel("epoch"); ax.set_ylabel("%"); ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"{prefix}_label_management.png"
        fig.savefig(report_dir / name, dpi=90); plt.close(fig); written.append(name)
    spread = results["sampler_spread"]
    if spread and any(rows and "max_over_min" in rows[0] for rows in spread.values()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name_, rows in spread.items():
            rows = [r for r in rows if "max_over_min" in r]
            if not rows:
                continue
            axes[0].plot([r["epoch"] for r in rows], [r["max_over_min"] for r in rows], marker="o", label=name_)
            axes[1].plot([r["epoch"] for r in rows], [r.get("ess_fraction", float("nan")) for r in rows], marker="o", label=name_)
        axes[0].set_yscale("log"); axes[0].set_title("minority sampler: max / min weight")
        axes[1].set_title("minority sampler: effective sample size / N")
        for ax in axes:
            ax.set_xlabel("epoch"); ax.legend(fontsize=6)
        fig.tight_layout()
        name = f"{prefix}_sampler.png"
        fig.savefig(report_dir / name, dpi=90); plt.close(fig); written.append(name)
    return written


def _lm_curves(budget: Budget, out: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    curves = {}
    for setting in ("mislabel20", "mislabel40", "flip40"):
        run_dir = out / "runs" / RunSpec("balancemix", setting, seed).key
        rows = _read_metrics(run_dir)
        if rows and (run_dir / "summary.json").is_file() and any("clean_precision" in r for r in rows):
            curves[f"{SETTING_TITLES[setting]} (seed {seed})"] = rows
    return curves


def write_report(
    results: Mapping[str, Any],
    report_dir: str | Path,
    *,
    command: str,
    name: str = "results",
    notes: str | None = None,
    run_stats: Mapping[str, Any] | None = None,
    lm_curves: Mapping[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """Write ``<name>.md``, ``<name>.json`` and ``<name>_*.png`` into ``report_dir``."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    _REPORT_SEEDS[0] = len(results["budget"]["seeds"])
    results["headline"] = headline(results)
    (report_dir / f"{name}.json").write_text(json.dumps(dict(results, command=command), indent=1, default=_nan_none))
    plots = _plots(dict(results, _runs_metrics=dict(lm_curves or {})), report_dir, name)
    b = results["budget"]
    t = b["train"]
    th, sz = results.get("group_thresholds") or {}, results.get("group_sizes") or {}
    L: list[str] = []
    L.append("# Benchmark results: BalanceMix and its baselines on the offline demo data")
    L.append("")
    L.append(f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `balancemix_timm.benchmark` "
             f"({b['description']}). Regenerate with:")
    L.append("")
    L.append("```bash")
    L.append(command)
    L.append("```")
    L.append("")
    L.append("(`balancemix-benchmark` is the same command once the package is installed; finished runs in `--out` are "
             "skipped, so rerunning only trains what is missing, and `--report-only` rewrites this page from them.)")
    L.append("")
    L.append(f"**Runs:** {results['finished']} of {results['planned']} planned runs finished"
             + (f"; {len(results['missing'])} missing (their cells read n/a or average fewer seeds, marked n=...): "
                f"{', '.join(results['missing'][:12])}{', ...' if len(results['missing']) > 12 else ''} "
                "(full list in the JSON's `missing`)" if results["missing"] else "") + ".")
    L.append("")
    L.append("## Budget")
    L.append("")
    L.append("| item | value |")
    L.append("|---|---|")
    L.append(f"| data | demo set (`balancemix_timm.data.demo`): {t['demo_num_train']} train / {t['demo_num_val']} val images, "
             f"{t['demo_num_classes']} classes, imbalance ratio {t['demo_imbalance_ratio']:g}, {t['image_size']} px, data seed {t['demo_seed']} |")
    L.append(f"| model | `{t['model']}` from scratch (timm), linear head |")
    L.append(f"| training | {t['epochs']} epochs, batch {t['batch_size']}, {t['optimizer']} lr {t['lr']:g} wd {t['weight_decay']:g}, "
             f"{t['scheduler']} schedule, augmentation: {_aug_text(t)}; BalanceMix / T-estimator warm-up {t['warmup_epochs']} epochs |")
    L.append(f"| methods | {', '.join(METHOD_TITLES[m] for m in b['methods'])} |")
    L.append(f"| label settings | {', '.join(SETTING_TITLES[s] for s in b['settings'])} |")
    L.append(f"| seeds | {', '.join(map(str, b['seeds']))} (training seed = noise seed) |")
    L.append(f"| metric | last-epoch validation mAP (%), as the paper; mean ± sample std over seeds when several |")
    cpu_text = (f" ({results['total_cpu_time_s'] / 60:.1f} CPU-min over the {results['runs_with_cpu_time']} runs with a CPU-time record)"
                if results.get("runs_with_cpu_time") else "")
    L.append(f"| run time | {results['total_run_time_s'] / 60:.1f} min of training wall time summed over the finished runs{cpu_text}"
             + (f"; this invocation: {run_stats['wall_time'] / 60:.1f} min wall-clock, {run_stats['trained']} runs trained, "
                f"{run_stats['skipped']} skipped as finished" if run_stats else "") + " |")
    if results.get("finished_between"):
        L.append(f"| runs finished | between {results['finished_between'][0]} and {results['finished_between'][1]} (UTC) |")
    L.append(f"| machine | {platform.machine()} {platform.system()}, CPU only |")
    L.append("")
    counts = (results.get("data") or {}).get("train_positive_counts")
    if counts:
        L.append(f"Training positives per class (clean labels, sorted): {', '.join(map(str, sorted(counts, reverse=True)))}; "
                 f"generator options {json.dumps((results.get('data') or {}).get('options'), sort_keys=True)}.")
        L.append("")
    if th:
        L.append(f"Class groups (COCO's 10,000 / 1,000 positive-label thresholds scaled by {t['demo_num_train']} / 82,081 "
                 f"training images, counted on the clean training labels): many-shot > {th.get('many')} positives "
                 f"({sz.get('many', 0)} classes), medium-shot {th.get('few')}–{th.get('many')} ({sz.get('medium', 0)} classes), "
                 f"few-shot < {th.get('few')} ({sz.get('few', 0)} classes).")
        L.append("")
    L.append("Protocol: every method except the Default (BCE) trains on Mixup batches of two random streams (alpha 4). "
             "BalanceMix: eps 0.975 (0.55 in the single-positive setting), the paper's minority sampler. "
             "LL-R / LL-Ct: `method_options.reduction=sum_mean` (sum over labels, mean over the batch) so all methods "
             "share one loss scale at one learning rate; their own code's mean over entries is 1/K of it. "
             "Co-teaching trains two networks (about twice the cost). T-estimator estimates the flip rates after its warm-up.")
    L.append("")
    hl = results["headline"]
    main = results["main"]
    if hl:
        L.append("## Headline: BalanceMix vs the best baseline (mAP, all classes)")
        L.append("")
        L.append("| setting | BalanceMix | best baseline | diff | BalanceMix few-shot | best baseline few-shot |")
        L.append("|---|---|---|---|---|---|")
        for r in hl:
            few_b, few_o, few_m = r.get("balancemix_few"), r.get("best_baseline_few"), r.get("best_baseline_few_method")
            L.append(f"| {SETTING_TITLES[r['setting']]} | {r['balancemix']:.1f} | {METHOD_TITLES[r['best_baseline']]} "
                     f"{r['best_baseline_mAP']:.1f} | {r['diff']:+.1f} | "
                     f"{'n/a' if few_b is None else f'{few_b:.1f}'} | "
                     f"{'n/a' if few_o is None else f'{METHOD_TITLES[few_m]} {few_o:.1f}'} |")
        L.append("")
        wins = [r for r in hl if r["diff"] > 0]
        losses = [r for r in hl if r["diff"] <= 0]
        text = f"BalanceMix has the highest last mAP (all classes) in {len(wins)} of {len(hl)} settings"
        if losses:
            text += "; it is behind " + ", ".join(
                f"{METHOD_TITLES[r['best_baseline']]} on {SETTING_TITLES[r['setting']]} by {-r['diff']:.1f}" for r in losses)
        text += "."
        stds = sorted(c["mAP"]["std"] for m in main for c in main[m].values()
                      if c.get("mAP", {}).get("std") is not None)
        if stds:
            text += (f" Yardstick: the median seed-to-seed standard deviation of a table cell (all classes) is "
                     f"{stds[len(stds) // 2]:.2f} points (largest {stds[-1]:.2f}); differences of that size are noise.")
        else:
            text += " One seed only: no seed spread is measured, so small differences may be noise."
        L.append(text)
        L.append("")
    main = results["main"]
    if any("mislabel20" in v or "mislabel40" in v or "clean" in v for v in main.values()):
        ss = [s for s in ("clean", "mislabel20", "mislabel40") if s in b["settings"]]
        L.append("## Table 1: mislabeling (last mAP)")
        L.append("")
        L += _main_table(results, ss, [{"clean": "0%", "mislabel20": "20%", "mislabel40": "40%"}[s] for s in ss])
        L.append("")
    ss = [s for s in ("clean", "flip20", "flip40") if s in b["settings"]]
    if any(s != "clean" for s in ss):
        L.append("## Table 2: random flipping (last mAP)")
        L.append("")
        L += _main_table(results, ss, [{"clean": "0%", "flip20": "20%", "flip40": "40%"}[s] for s in ss])
        L.append("")
    if "single" in b["settings"]:
        L.append("## Table 3: missing labels, single positive label (last mAP)")
        L.append("")
        L += _main_table(results, ["single"], [""])
        L.append("")
    abl = results["ablation"]
    if abl and b["ablation_settings"]:
        L.append("## Table 5: component analysis (last mAP, all classes; gain over the row above in parentheses)")
        L.append("")
        cols = b["ablation_settings"]
        L.append("| Component | " + " | ".join(SETTING_TITLES[s] for s in cols) + " | Overall (mean) |")
        L.append("|---|" + "---|" * (len(cols) + 1))
        prev: dict[str, float | None] = {}
        prev_overall = None
        for title, row in abl.items():
            cells = []
            means = []
            for s in cols:
                m = (row.get(s) or {}).get("mean")
                means.append(m)
                text = _fmt(row.get(s))
                if m is not None and prev.get(s) is not None:
                    text += f" ({m - prev[s]:+.1f})"
                prev[s] = m
                cells.append(text)
            overall = sum(means) / len(means) if means and all(m is not None for m in means) else None
            ov = "n/a" if overall is None else f"{overall:.1f}" + (f" ({overall - prev_overall:+.1f})" if prev_overall is not None else "")
            prev_overall = overall
            L.append(f"| {title} | " + " | ".join(cells) + f" | {ov} |")
        L.append("")
    t7 = results["table7"]
    if t7:
        L.append("## Table 7: BalanceMix's clean-label selection and re-labeling (Eq. 12-13, %)")
        L.append("")
        sets = list(t7)
        L.append("| Training progress | " + " | ".join(f"{SETTING_TITLES[s]} precision | {SETTING_TITLES[s]} recall" for s in sets)
                 + " | " + " | ".join(f"{SETTING_TITLES[s]} re-label proportion | {SETTING_TITLES[s]} re-label accuracy" for s in sets) + " |")
        L.append("|---|" + "---|" * (4 * len(sets)))
        for frac in ("25%", "50%", "100%"):
            ep = next((t7[s][frac].get("epoch") for s in sets if t7[s].get(frac, {}).get("epoch")), None)
            row = [f"{frac} epochs" + (f" (epoch {ep})" if ep else "")]
            for s in sets:
                row += [_fmt(t7[s][frac].get("clean_precision")), _fmt(t7[s][frac].get("clean_recall"))]
            for s in sets:
                row += [_fmt(t7[s][frac].get("relabel_proportion"), 2), _fmt(t7[s][frac].get("relabel_accuracy"))]
            L.append("| " + " | ".join(row) + " |")
        row = ["keep every given label (reference)"]
        for s in sets:
            row += [_fmt(t7[s].get("given_labels_precision")), "100.0"]
        row += ["0.00", "n/a"] * len(sets)
        L.append("| " + " | ".join(row) + " |")
        L.append("")
        L.append(f"Label management starts after the {t['warmup_epochs']}-epoch warm-up (figures of earlier epochs "
                 "describe the selection that would be made); re-label accuracy is n/a when nothing was re-labeled. "
                 "The reference row is what selecting every label would score: precision = share of labels "
                 "the noise left correct.")
        L.append("")
    spread = results["sampler_spread"]
    if spread:
        L.append("## Minority sampler: weight spread per epoch")
        L.append("")
        L.append("`max/min` is the largest over the smallest sampling weight, `ESS/N` the effective sample size "
                 "(sum p)^2 / (N sum p^2) over N (1 = uniform).")
        L.append("")
        L.append("| run | " + " | ".join(f"epoch {r['epoch']}" for r in max(spread.values(), key=len)) + " |")
        L.append("|---|" + "---|" * max(len(v) for v in spread.values()))
        for name_, rows in spread.items():
            cells = []
            for r in rows:
                if "max_over_min" in r:
                    cells.append(f"{r['max_over_min']:.3g} / {r.get('ess_fraction', float('nan')):.3f}")
                else:
                    cells.append("–")
            L.append(f"| {name_} (max/min / ESS/N) | " + " | ".join(cells) + " |")
        L.append("")
    var = results["sampler_variants"]
    if var:
        L.append("### The paper's literal sampler vs a tempered one")
        L.append("")
        L.append("`sampler_temperature=T` samples with p ∝ Score^-T (T = 1 is Eq. 3-4 as printed; T > 1 sharpens, "
                 "T < 1 flattens); `sampler_score=positive` scores an instance by its positive labels only "
                 "(see `balancemix_timm.sampling.instance_scores`).")
        L.append("")
        L.append("| setting | sampler | mAP | Many | Medium | Few | last max/min | last ESS/N |")
        L.append("|---|---|---|---|---|---|---|---|")
        for s, rows in var.items():
            for label, c in rows.items():
                L.append(f"| {SETTING_TITLES[s]} | {label} | " + " | ".join(_fmt(c.get('mAP' + g)) for g in _GROUPS)
                         + f" | {_fmt(c.get('sampler_max_over_min'), 2)} | {_fmt(c.get('sampler_ess_fraction'), 3)} |")
        L.append("")
    if plots:
        L.append("## Plots")
        L.append("")
        for p in plots:
            L.append(f"![{p}]({p})")
            L.append("")
    if notes:
        L.append(notes.rstrip())
        L.append("")
    L.append("Per-run wall times and every last-epoch figure are in "
             f"[`{name}.json`]({name}.json) (`runs`), with the tables' numbers (`main`, `ablation`, `table7`, "
             "`sampler_spread`, `sampler_variants`, `headline`).")
    L.append("")
    path = report_dir / f"{name}.md"
    path.write_text("\n".join(L))
    return path


# ---------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="balancemix-benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="quick", help="grid size (default quick)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the budget's, 0)")
    p.add_argument("--out", default=None, help="runs folder (default runs/benchmark-<budget>)")
    p.add_argument("--report-dir", default=None, help="where results.md/json/png go (default: docs for full, else --out)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per run (default 0)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, in separate processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs; train nothing")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether each is finished")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep last.pth / best.pth of finished runs")
    p.add_argument("--deadline-minutes", type=float, default=None, help="start no run after this many minutes")
    p.add_argument("--notes", default=None, help="Markdown file appended to the report (discussion)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run (changes the runs' keys' configs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .config import parse_overrides

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("balancemix_timm.engine", "balancemix_timm.train", "balancemix_timm.data.datasets",
                  "balancemix_timm.noise", "balancemix_timm.data.demo", "balancemix_timm.methods"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    budget = BUDGETS[args.budget]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    out = Path(args.out or f"runs/benchmark-{args.budget}")
    report_dir = Path(args.report_dir or ("docs" if args.budget == "full" else out))
    overrides = parse_overrides(args.overrides)
    command = "python -m balancemix_timm.benchmark " + " ".join(
        [f"--budget {args.budget}"] + ([f"--seeds {args.seeds}"] if args.seeds else []) + [f"--out {shlex.quote(str(out))}"]
        + ([f"--report-dir {shlex.quote(str(report_dir))}"] if args.report_dir else [])
        + ([f"--workers {args.workers}"] if args.workers else []) + ([f"--jobs {args.jobs}"] if args.jobs > 1 else [])
        + ([f"--threads {args.threads}"] if args.threads != 1 else [])
        + ([f"--notes {shlex.quote(args.notes)}"] if args.notes else [])
        + [shlex.quote(o) for o in args.overrides]
    )
    if args.dry_run:
        for spec in plan_runs(budget, seeds):
            values = run_config(spec, budget, out, workers=args.workers, train_overrides=overrides)
            print(("done " if _is_finished(out / "runs" / spec.key, values) else "todo ") + spec.key)
        return 0
    stats = None
    if not args.report_only:
        deadline = time.time() + 60 * args.deadline_minutes if args.deadline_minutes else None
        stats = run_benchmark(budget, out, seeds=seeds, workers=args.workers, jobs=args.jobs, threads=args.threads,
                              keep_checkpoints=args.keep_checkpoints, train_overrides=overrides, deadline=deadline)
        _logger.info("benchmark: %s", {k: v for k, v in stats.items()})
    if overrides:
        budget = Budget(**{**budget.__dict__, "train": dict(budget.train, **overrides)})
    results = collect_results(budget, out, seeds=seeds)
    notes = Path(args.notes).read_text() if args.notes else None
    path = write_report(results, report_dir, command=command, notes=notes, run_stats=stats,
                        lm_curves=_lm_curves(budget, out, min(seeds or budget.seeds)))
    _logger.info("wrote %s", path)
    return 1 if stats and stats["failed"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
