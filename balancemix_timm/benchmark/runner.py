"""Executing the benchmark's runs: run configurations, run folders, finished-run detection and
the worker pool (:func:`run_benchmark`)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..config import config_diff, load_config
from ..models.checkpoints import TRAIN_CHECKPOINT_FORMAT, check_checkpoint_format
from ..textfiles import write_json
from ..trainer import train
from .grid import BUDGETS, METHOD_OVERRIDES, METHOD_SETTING_OVERRIDES, SETTINGS, Budget, RunSpec, plan_runs

_logger = logging.getLogger(__name__)

STALE_DIR = ".stale"
"""Folder under ``<out>/runs`` that keeps the run folders trained again (:func:`set_aside`)."""


def pretrained_weights(budget: Budget, cache_dir: str | Path | None = None) -> Path | None:
    """Where ``budget``'s pre-trained backbone lives (``None`` for a from-scratch budget).

    The path is known before the weights exist (:func:`~balancemix_timm.pretrain.pretrained_dir`);
    :func:`run_benchmark` builds them before its first run.
    """
    if budget.pretrain is None:
        return None
    from ..pretrain import WEIGHTS_NAME, PretrainRecipe, pretrained_dir

    return pretrained_dir(PretrainRecipe(**budget.pretrain), cache_dir) / WEIGHTS_NAME


def run_config(spec: RunSpec, budget: Budget, out: Path, *, workers: int = 0,
               train_overrides: Mapping[str, Any] | None = None,
               pretrain_cache: str | Path | None = None) -> dict[str, Any]:
    """The :class:`~balancemix_timm.config.TrainConfig` fields of ``spec``.

    A budget with a ``pretrain`` recipe sets ``pretrained_path`` to its cached weights under
    ``pretrain_cache`` (default :func:`~balancemix_timm.pretrain.default_cache_dir`).
    """
    values: dict[str, Any] = dict(budget.train)
    weights = pretrained_weights(budget, pretrain_cache)
    if weights is not None:
        values["pretrained_path"] = str(weights)
    values.update(train_overrides or {})
    values.update(SETTINGS[spec.setting])
    from ..data.demo import demo_group_thresholds

    many, few = demo_group_thresholds(int(values["demo_num_train"]))
    values.update(
        many_threshold=values.get("many_threshold") or many,
        few_threshold=values.get("few_threshold") or few,
        method=spec.method,
        ablation=spec.ablation,
        seed=spec.seed,
        noise_seed=spec.seed,
        # The demo set is generated once (``_prepare_data``) and then read as COCO-format data,
        # so a run never regenerates it (nor trips over a generator changed since); the class
        # groups are the budget's thresholds, else the demo set's scaled ones.
        data="coco",
        data_root=str(out / "data"),
        output_dir=str(out / "runs"),
        run_name=spec.key,
        workers=workers,
    )
    for overrides in (METHOD_OVERRIDES.get(spec.method, {}),
                      METHOD_SETTING_OVERRIDES.get((spec.method, spec.setting), {})):
        for key, value in overrides.items():
            if isinstance(value, dict):
                values[key] = dict(values.get(key) or {}, **value)
            else:
                values[key] = value
    values.update(dict(spec.variant_overrides))
    return values



def _expected_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration the trainer writes to ``config.yaml`` (Table 5 rows resolved by the config)."""
    return load_config(None, dict(values)).to_dict()


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``config.yaml`` (a key it lacks, e.g. an option added after the run, makes the run
    stale), or None if the file is missing or unreadable."""
    from ..config import read_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        saved = read_yaml(path, what="run configuration")
    except (OSError, ValueError) as err:
        _logger.warning("%s; the run counts as not finished", err)
        return None
    if not isinstance(saved, dict):
        return None
    return saved


def _ignored_keys(expected: Mapping[str, Any]) -> frozenset[str]:
    """Keys whose difference does not make a finished run stale: the resume-ignored ones, and for
    a method other than BalanceMix the options only BalanceMix reads, and on data other than
    VOC the ``voc_*`` options."""
    from ..config import BALANCEMIX_ONLY_KEYS, RESUME_IGNORED_KEYS, TrainConfig

    ignored = set(RESUME_IGNORED_KEYS) | {"preset"}  # a preset is compared through the options it sets
    if expected.get("method") != "balancemix":
        ignored |= BALANCEMIX_ONLY_KEYS
    if expected.get("data") != "voc":
        ignored |= {k for k in TrainConfig.__dataclass_fields__ if k.startswith("voc_")}
    return frozenset(ignored)


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without ``data_root``: the runner always points it at ``<out>/data``, whose
    content the ``demo_*`` options fix, so a grid folder that moved keeps its finished runs (other
    locations are compared as resolved paths by :func:`~balancemix_timm.config.config_diff`)."""
    config = dict(config)
    config.pop("data_root", None)
    return config


def _config_change(run_dir: Path, values: Mapping[str, Any]) -> dict[str, tuple[Any, Any]] | None:
    """The options in which ``run_dir``'s saved configuration differs from ``values``'s (empty
    when the same run), or ``None`` when it has no readable ``config.yaml``."""
    saved = _saved_config(run_dir)
    if saved is None:
        return None
    expected = _expected_config(values)
    return config_diff(_comparable(saved), _comparable(expected), ignore=_ignored_keys(expected))


def is_finished(run_dir: Path, values: Mapping[str, Any]) -> bool:
    """``summary.json`` exists and ``config.yaml`` holds the same configuration (file locations
    except ``data_root``, see :func:`_comparable`)."""
    if not (run_dir / "summary.json").is_file():
        return False
    diff = _config_change(run_dir, values)
    if diff is None:
        return False
    if diff:
        _logger.warning("%s was run with another configuration (%s): running it again", run_dir.name, sorted(diff))
    return not diff


def _prepare_run_dir(run_dir: Path, values: Mapping[str, Any]) -> str | None:
    """``"auto"`` resume when ``run_dir`` holds a compatible interrupted run; else set it aside
    (callers skip a finished run first: :func:`is_finished`)."""
    if not run_dir.exists():
        return None
    diff = _config_change(run_dir, values)
    if (diff is not None and not diff
            and (run_dir / "last.pth").is_file() and not (run_dir / "summary.json").is_file()):
        try:
            ckpt = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=False)
            check_checkpoint_format(ckpt, TRAIN_CHECKPOINT_FORMAT, run_dir / "last.pth", what="training checkpoint")
        except Exception as err:  # a damaged file, or one another version wrote
            _logger.warning("%s: the interrupted run cannot be continued (%s); starting it over", run_dir.name,
                            str(err).splitlines()[0] if str(err) else type(err).__name__)
        else:
            _logger.info("%s: continuing the interrupted run", run_dir.name)
            return "auto"
    set_aside(run_dir)
    return None


def set_aside(run_dir: Path) -> Path:
    """Move a run folder that is about to be trained again to ``<runs>/.stale/<name>.<UTC time>``
    (never deleted: a stale finished run may still be the only copy of its figures); returns the
    new location."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    target = run_dir.parent / STALE_DIR / f"{run_dir.name}.{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(target))
    _logger.warning("%s: set aside in %s before training it again", run_dir.name, target)
    return target


def _train_values(values: Mapping[str, Any], resume: str | None) -> dict[str, Any]:
    """Train one run from its config fields; returns its summary."""
    cfg = load_config(None, dict(values))
    return train(cfg, resume=resume)


def _prepare_data(values: Mapping[str, Any]) -> None:
    """Generate the shared demo set once, before any run (so parallel runs never race)."""
    from ..data.demo import make_demo_dataset

    root = Path(values["data_root"])
    try:
        make_demo_dataset(
            root, num_train=int(values["demo_num_train"]), num_val=int(values["demo_num_val"]),
            num_classes=int(values["demo_num_classes"]), image_size=int(values["image_size"]),
            imbalance_ratio=float(values["demo_imbalance_ratio"]), seed=int(values["demo_seed"]),
            min_val_positives=int(values.get("demo_min_val_positives", 10)),
        )
    except ValueError as err:
        # A grid keeps the data its first runs used, even if the generator changed since.
        if ((root / "annotations" / "instances_train.json").is_file()
                and (root / "annotations" / "instances_val.json").is_file()):
            _logger.warning("keeping the existing demo data in %s (%s)", root, err)
        else:
            raise


def prepare_inputs(budget: Budget, out: str | Path, *, train_overrides: Mapping[str, Any] | None = None,
                   pretrain_cache: str | Path | None = None) -> None:
    """What every run of ``budget`` under ``out`` reads: the demo set in ``<out>/data`` and, for a
    pre-trained budget whose weights ``train_overrides`` do not replace, its backbone in
    ``pretrain_cache`` (each built once, if missing)."""
    _prepare_data({**budget.train, **dict(train_overrides or {}), "data_root": str(Path(out) / "data")})
    if budget.pretrain is not None and "pretrained_path" not in (train_overrides or {}):
        from ..pretrain import PretrainRecipe, ensure_pretrained

        ensure_pretrained(PretrainRecipe(**budget.pretrain), pretrain_cache)


def _worker(values: dict[str, Any], run_dir: Path, threads: int,
            deadline: float | None = None) -> tuple[float, float, bool] | str | None:  # pragma: no cover
    """One run in a pool process, its folder prepared when it starts (:func:`_prepare_run_dir`),
    so a grid stopped early leaves the runs it never started untouched; ``(wall, cpu, resumed)``
    (seconds of this process's part of the run; whether it continued an interrupted one),
    ``"finished"`` when another process finished the run since the plan, or ``None`` past
    ``deadline``."""
    import torch

    if deadline is not None and time.time() > deadline:
        return None
    if is_finished(run_dir, values):
        return "finished"
    # This process's settings, made only for a run it trains.
    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING)
    resume = _prepare_run_dir(run_dir, values)
    t0, c0 = time.perf_counter(), time.process_time()
    _train_values(values, resume)
    return time.perf_counter() - t0, time.process_time() - c0, resume is not None


def _after_run(run_dir: Path, wall: float, keep_checkpoints: bool, cpu: float | None = None,
               resumed: bool = False) -> None:
    """Record the run's times in ``bench.json`` and drop its checkpoints unless kept. The times
    of a ``resumed`` run cover only the part after its resume (so they are no run's cost)."""
    write_json(run_dir / "bench.json", dict(
        wall_time=wall, cpu_time=cpu, resumed=resumed,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    ))
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
    pretrain_cache: str | Path | None = None,
    only: Callable[[RunSpec], bool] | None = None,
) -> dict[str, Any]:
    """Run every unfinished run of ``budget`` under ``out`` (those ``only`` accepts, if given).

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
        pretrain_cache: cache root of the budget's pre-trained backbone (default
            :func:`~balancemix_timm.pretrain.default_cache_dir`); built there if missing.
        only: a slice of the grid: the runs for which it returns True (their keys and
            configurations are the whole grid's, so the rest can follow later).

    Returns:
        ``{"planned": n, "skipped": n, "trained": n, "failed": [keys], "wall_time": s}``.
    """
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    out = Path(out)
    specs = [spec for spec in plan_runs(budget, seeds) if only is None or only(spec)]
    todo: list[tuple[RunSpec, dict[str, Any]]] = []
    skipped = 0
    for spec in specs:
        values = run_config(spec, budget, out, workers=workers, train_overrides=train_overrides,
                            pretrain_cache=pretrain_cache)
        if is_finished(out / "runs" / spec.key, values):
            skipped += 1
        else:
            todo.append((spec, values))
    _logger.info("benchmark: %d runs planned, %d finished already, %d to run", len(specs), skipped, len(todo))
    t_start = time.perf_counter()
    failed: list[str] = []
    trained = 0
    if todo:
        prepare_inputs(budget, out, train_overrides=train_overrides, pretrain_cache=pretrain_cache)
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
                if is_finished(run_dir, values):
                    _logger.info("%s: finished meanwhile by another process", spec.key)
                    continue
                resume = _prepare_run_dir(run_dir, values)
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    summary = _train_values(values, resume)
                except Exception:  # noqa: BLE001 - one failed run must not stop the grid
                    _logger.exception("run %s failed", spec.key)
                    failed.append(spec.key)
                    continue
                wall = time.perf_counter() - t0
                _after_run(run_dir, wall, keep_checkpoints, time.process_time() - c0, resumed=resume is not None)
                trained += 1
                _logger.info("[%d/%d] %s: mAP %.2f in %.0f s (elapsed %.1f min)", i + 1, len(todo), spec.key,
                             summary.get("last", {}).get("mAP", float("nan")), wall,
                             (time.perf_counter() - t_start) / 60)
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
                futures[pool.submit(_worker, values, out / "runs" / spec.key, threads, deadline)] = spec
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
                if timing == "finished":
                    _logger.info("%s: finished meanwhile by another process", spec.key)
                    continue
                wall, cpu, resumed = timing
                _after_run(out / "runs" / spec.key, wall, keep_checkpoints, cpu, resumed=resumed)
                trained += 1
                _logger.info("[%d/%d] %s done in %.0f s (elapsed %.1f min)", i + 1, len(todo), spec.key, wall,
                             (time.perf_counter() - t_start) / 60)
    return dict(planned=len(specs), skipped=skipped, trained=trained, failed=failed,
                wall_time=time.perf_counter() - t_start)

