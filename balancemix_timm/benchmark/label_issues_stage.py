"""The label-issue comparison stage: BalanceMix's labels found in one training vs cleanlab's on
K-fold cross-validated BCE predictions, scored against the known injected noise.

For every label setting of :data:`STAGE_SETTINGS` (mislabel / random flip 20% and 40%) and seed,
on the strong regime's benchmark data (:data:`~.grid.STRONG_TRAIN`):

(a) **BalanceMix**: the grid's own BalanceMix run (:func:`~.runner.run_config`, trained by
    :func:`~.runner.run_benchmark` with its ``last.pth`` kept; a finished grid run with its
    checkpoint under the same ``--out`` is reused), read by
    :func:`~balancemix_timm.label_issues.load_label_state`; flags: ``find_label_issues`` (the
    engine's decision, ``filter_by="label_state"``), ranking: ``label_quality_scores``.
(b) **cleanlab**: ``folds`` plain BCE trainings (the grid's ``bce`` configuration: same backbone,
    epochs, learning rate and schedule), fold ``i`` training on the other folds' images with
    the same noisy labels (``Trainer(train_indices=...)``) and predicting its held-out images
    with the eval transform; the out-of-fold (N, K) probabilities go to cleanlab's
    ``multilabel_classification.filter.find_multilabel_issues_per_class`` (the per-(image,
    class) form of ``find_label_issues``, whose image-level mask is reported too) and
    ``rank.get_label_quality_scores_per_class`` (self-confidence).
(c) **Scoring** against the known noise (the trainer injects it from ``noise_seed``, so the
    wrong labels are exactly ``given != clean``): precision, recall and F1 of the flagged
    (image, class) labels, overall and per polarity, a precision/recall curve of each ranking,
    and the training compute of each method.

The Markdown/figure side is :mod:`.label_issues_report`. Command line:
``balancemix-benchmark-label-issues`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..textfiles import read_json, read_json_lines, write_json
from .grid import BUDGETS, Budget, RunSpec
from .label_issues_report import summarize, write_comparison
from .runner import is_finished, prepare_inputs, run_benchmark, run_config

__all__ = ["STAGE_SETTINGS", "balancemix_issues", "cleanlab_issues", "cross_validated_probs", "fold_indices", "main",
           "pr_curve", "run_stage", "score_flags", "stage_budget"]

_logger = logging.getLogger(__name__)

#: Label settings of the comparison (keys of :data:`~.grid.SETTINGS`), headline ones first.
STAGE_SETTINGS = ("mislabel40", "flip40", "mislabel20", "flip20")
#: Cross-validation folds of cleanlab's predictions (cleanlab's documented default is 5).
DEFAULT_FOLDS = 5
#: Points kept of each precision/recall curve in the JSON (first and last always kept).
CURVE_POINTS = 200


def stage_budget(base: Budget | None = None) -> Budget:
    """The BalanceMix runs of the stage as a :class:`~.grid.Budget` of the benchmark.

    Args:
        base: The regime (default ``BUDGETS["strong_full"]``); only its ``train`` fields and
            ``pretrain`` recipe matter, so the runs' configurations (and folder names) are the
            grid's and a finished grid run is shared.
    """
    base = BUDGETS["strong_full"] if base is None else base
    return replace(base, methods=("balancemix",), settings=STAGE_SETTINGS, ablation_settings=(), partial_settings=(),
                   sampler_variants=(), description="label-issue comparison: BalanceMix runs")


# ---------------------------------------------------------------------------- scoring
def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Split ``n`` images into ``folds`` held-out parts, at random but fixed by ``seed``.

    Args:
        n: Number of training images N.
        folds: Number of folds K (2 <= K <= N).
        seed: Seed of the split (its own ``numpy.random.default_rng``; no global state).

    Returns:
        K sorted int64 arrays that together hold every index of ``0..N-1`` exactly once, sizes
        differing by at most one.
    """
    if not 2 <= int(folds) <= int(n):
        raise ValueError(f"folds must be in [2, n={n}], got {folds}")
    perm = np.random.default_rng(int(seed)).permutation(int(n))
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, int(folds))]


def _prf(flagged: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Counts and precision/recall/F1 of boolean ``flagged`` against boolean ``noisy`` (same shape)."""
    tp = int(np.sum(flagged & noisy))
    nf, nn_ = int(flagged.sum()), int(noisy.sum())
    nan = float("nan")
    return dict(
        flagged=nf, noisy=nn_, true_positives=tp,
        precision=tp / nf if nf else nan, recall=tp / nn_ if nn_ else nan,
        # 2 TP / (2 TP + FP + FN): defined whenever anything is flagged or wrong.
        f1=2 * tp / (nf + nn_) if nf + nn_ else nan,
    )


def score_flags(flagged: np.ndarray, given: np.ndarray, clean: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 of flagged labels against the known noise.

    Args:
        flagged: (N, K) bool, the labels a method calls wrong.
        given: (N, K) 0/1, the labels trained on.
        clean: (N, K) 0/1, the true labels; a label is wrong where ``given != clean``.

    Returns:
        ``{"all": ..., "added": ..., "removed": ...}``, each with ``flagged``, ``noisy``,
        ``true_positives`` (counts of labels) and ``precision``, ``recall``, ``f1`` (fractions
        in [0, 1]; NaN when undefined: nothing flagged / nothing wrong). ``added`` counts only
        labels given 1 (wrongly added positives are given 1, clean 0), ``removed`` only labels
        given 0 (wrongly removed positives: given 0, clean 1).
    """
    flagged, given, clean = (np.asarray(a) for a in (flagged, given, clean))
    if not flagged.shape == given.shape == clean.shape:
        raise ValueError(f"flagged {flagged.shape}, given {given.shape} and clean {clean.shape} differ in shape")
    flagged, pos = flagged.astype(bool), given.astype(bool)
    noisy = pos != clean.astype(bool)
    return {"all": _prf(flagged, noisy), "added": _prf(flagged[pos], noisy[pos]),
            "removed": _prf(flagged[~pos], noisy[~pos])}


def pr_curve(scores: np.ndarray, given: np.ndarray, clean: np.ndarray,
             max_points: int | None = CURVE_POINTS) -> dict[str, Any]:
    """Precision/recall of a label-quality ranking: flag the m lowest-scored labels, m = 1..N*K.

    Args:
        scores: (N, K) label-quality scores (low = likely wrong); ties are broken by (image,
            class) order.
        given: (N, K) 0/1 given labels.
        clean: (N, K) 0/1 true labels.
        max_points: Points kept of the curve (evenly spaced in m, the first and last always);
            ``None`` keeps all N*K.

    Returns:
        ``recall`` and ``precision`` (lists of fractions, recall non-decreasing, ending at 1 and
        at the base rate of wrong labels), ``flagged`` (the m of each point) and
        ``average_precision`` (mean precision at the rank of each wrong label, in [0, 1]; NaN
        without wrong labels), over all N*K labels.
    """
    noisy = (np.asarray(given).astype(bool) != np.asarray(clean).astype(bool)).reshape(-1)
    order = np.argsort(np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    hits = noisy[order]
    tp = np.cumsum(hits)
    m = np.arange(1, len(hits) + 1)
    total = int(noisy.sum())
    precision = tp / m
    recall = tp / total if total else np.zeros(len(m))
    ap = float(precision[hits].mean()) if total else float("nan")
    keep = np.arange(len(m))
    if max_points is not None and len(m) > max_points:
        keep = np.unique(np.linspace(0, len(m) - 1, int(max_points)).round().astype(int))
    return dict(recall=recall[keep].tolist(), precision=precision[keep].tolist(),
                flagged=m[keep].tolist(), average_precision=ap)


def cleanlab_issues(given: np.ndarray, pred_probs: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab's multi-label label issues of out-of-sample predictions.

    Args:
        given: (N, K) 0/1 given labels (turned into cleanlab's list of positive-class lists).
        pred_probs: (N, K) out-of-sample sigmoid probabilities in [0, 1].

    Returns:
        ``mask`` (N, K) bool from ``filter.find_multilabel_issues_per_class`` (cleanlab's
        default ``filter_by="prune_by_noise_rate"``), ``scores`` (N, K) in [0, 1] from
        ``rank.get_label_quality_scores_per_class`` (``method="self_confidence"``), ``image_mask``
        (N,) bool from ``filter.find_label_issues`` (an image with any wrong label) and
        ``image_scores`` (N,) from ``rank.get_label_quality_scores``. A class whose given labels
        are all 0 or all 1 is left out of cleanlab's calls (it refuses them): never flagged,
        scored by self-confidence.

    Raises:
        ImportError: cleanlab is not installed (``pip install 'balancemix-timm[cleanlab]'``).
    """
    from cleanlab.multilabel_classification import filter as cl_filter
    from cleanlab.multilabel_classification import rank as cl_rank

    given = np.asarray(given).astype(bool)
    probs = np.asarray(pred_probs, dtype=np.float64)
    if given.shape != probs.shape:
        raise ValueError(f"given {given.shape} and pred_probs {probs.shape} differ in shape")
    # cleanlab's per-class filter refuses a class whose given labels are all 0 or all 1 ("Labels
    # must contain at least 2 classes"); such a class (a rare class emptied by the noise) is
    # left out of its call: none of its labels is flagged, its scores are the self-confidence.
    cols = np.flatnonzero(given.any(0) & ~given.all(0))
    if len(cols) < given.shape[1]:
        _logger.warning("cleanlab: %d class(es) with a single given value left out: %s",
                        given.shape[1] - len(cols), np.setdiff1d(np.arange(given.shape[1]), cols).tolist())
    g, p = given[:, cols], probs[:, cols]
    labels = [np.flatnonzero(row).tolist() for row in g]
    mask = np.zeros(given.shape, dtype=bool)
    scores = np.where(given, probs, 1.0 - probs)
    mask[:, cols] = _per_class(cl_filter.find_multilabel_issues_per_class(labels=labels, pred_probs=p, n_jobs=1),
                               p.shape, bool)
    scores[:, cols] = _per_class(cl_rank.get_label_quality_scores_per_class(
        labels=labels, pred_probs=p, method="self_confidence"), p.shape, np.float64)
    return dict(
        mask=mask, scores=scores,
        image_mask=np.asarray(cl_filter.find_label_issues(labels=labels, pred_probs=p, n_jobs=1), dtype=bool),
        image_scores=np.asarray(cl_rank.get_label_quality_scores(labels=labels, pred_probs=p), dtype=np.float64),
    )


def _per_class(value: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """cleanlab's per-class result as an (N, K) array: cleanlab 2.9 returns one (N, K) array
    where its docstrings describe a list of K arrays of (N,); both are accepted."""
    arr = value if isinstance(value, np.ndarray) else np.stack([np.asarray(v) for v in value], axis=1)
    if arr.shape != tuple(shape):
        raise ValueError(f"cleanlab returned a per-class result of shape {arr.shape}, expected {tuple(shape)}")
    return arr.astype(dtype)


def balancemix_issues(source: Any) -> dict[str, np.ndarray]:
    """BalanceMix's label issues of a run folder (or any :func:`load_label_state` source).

    Returns:
        ``given`` (N, K) uint8, ``mask`` (N, K) bool (``find_label_issues``, the engine's
        decision), ``scores`` (N, K) in [0, 1] (``label_quality_scores``, ``"balancemix"``),
        and ``mask_<filter>`` for every other ``filter_by`` of the API.
    """
    from ..label_issues import FILTER_BY, find_label_issues, label_quality_scores, load_label_state

    state = load_label_state(source)
    out = dict(given=state.given_labels, mask=find_label_issues(state), scores=label_quality_scores(state))
    for f in FILTER_BY:
        out[f"mask_{f}"] = find_label_issues(state, filter_by=f)
    return out


def _method_scores(mask: np.ndarray, scores: np.ndarray, given: np.ndarray, clean: np.ndarray,
                   image_mask: np.ndarray | None = None) -> dict[str, Any]:
    noisy_images = (given.astype(bool) != clean.astype(bool)).any(1)
    image = mask.any(1) if image_mask is None else image_mask
    return dict(labels=score_flags(mask, given, clean), images=_prf(image.astype(bool), noisy_images),
                curve=pr_curve(scores, given, clean))


# ---------------------------------------------------------------------------- training
def _known_labels(values: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(given, clean) (N, K) uint8 training labels of a run configuration (annotations only)."""
    import torch

    from ..config import load_config
    from ..trainer import build_datasets, noisy_labels

    cfg = load_config(None, dict(values))
    train_set, _ = build_datasets(cfg)
    clean = train_set.annotation_labels.to(dtype=torch.uint8)
    return noisy_labels(cfg, clean).numpy().astype(np.uint8), clean.numpy().astype(np.uint8)


def _run_compute(run_dir: Path) -> dict[str, float]:
    """Training compute of a finished trainer run: ``train_seconds`` (sum over epochs of the
    training loop, plus BalanceMix's label refresh), ``epochs`` and, from ``bench.json`` /
    ``fold.json``, the whole run's ``wall_seconds`` / ``cpu_seconds`` (with per-epoch
    validation)."""
    rows = read_json_lines(run_dir / "metrics.jsonl")
    out: dict[str, float] = dict(
        train_seconds=float(sum(r.get("train_time", 0.0) + r.get("refresh_time", 0.0) for r in rows)),
        epochs=float(len(rows)))
    for name in ("bench.json", "fold.json"):
        if (run_dir / name).is_file():
            info = read_json(run_dir / name)
            out.update(wall_seconds=info.get("wall_time"), cpu_seconds=info.get("cpu_time"))
    return out


def _train_fold(values: Mapping[str, Any], run_dir: Path, train_idx: np.ndarray,
                held_idx: np.ndarray) -> np.ndarray:
    """Train one fold (unless finished) and return its held-out (M, K) probabilities."""
    from ..config import load_config
    from ..trainer import Trainer

    done = run_dir / "heldout.npz"
    if done.is_file() and is_finished(run_dir, values):
        with np.load(done) as saved:
            if np.array_equal(saved["indices"], held_idx):
                _logger.info("%s: finished, reused", run_dir.name)
                return saved["probs"]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(load_config(None, dict(values)), run_dir=run_dir, train_indices=train_idx)
    summary = trainer.fit()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    probs, _ = trainer.predict(trainer.model, trainer.training_images(held_idx))
    probs_np = probs.numpy().astype(np.float32)
    np.savez(done, indices=held_idx, probs=probs_np)
    write_json(run_dir / "fold.json", dict(
        wall_time=wall, cpu_time=cpu, predict_time=time.perf_counter() - t1, trained_images=int(len(train_idx)),
        val_mAP=summary.get("last", {}).get("mAP"),
        heldout_images=int(len(held_idx)), finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds")))
    for name in ("last.pth", "best.pth"):
        (run_dir / name).unlink(missing_ok=True)
    return probs_np


def cross_validated_probs(spec: RunSpec, budget: Budget, out: Path, *, folds: int = DEFAULT_FOLDS,
                          train_overrides: Mapping[str, Any] | None = None,
                          pretrain_cache: str | Path | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Out-of-fold BCE probabilities of every training image of ``spec``'s label setting.

    Args:
        spec: The grid's ``bce`` run of the setting and seed (its configuration is each fold's).
        budget: The regime. out: The stage's output folder (folds in ``<out>/label_issues/folds``).
        folds: K. train_overrides / pretrain_cache: as for :func:`~.runner.run_config`.

    Returns:
        ``(pred_probs, compute)``: (N, K) float32 probabilities in [0, 1], each from the fold
        model that did not train on the image; ``compute`` sums the folds' ``train_seconds``,
        ``wall_seconds``, ``cpu_seconds``, ``predict_seconds`` and ``image_epochs`` (epochs x
        images trained on), and gives the folds' mean last-epoch validation mAP
        (``fold_val_mAP``, x100).
    """
    base = run_config(spec, budget, out, train_overrides=train_overrides, pretrain_cache=pretrain_cache)
    given, _ = _known_labels(base)
    n = len(given)
    parts = fold_indices(n, folds, spec.seed)
    probs = np.full(given.shape, np.nan, dtype=np.float32)
    total = dict(train_seconds=0.0, wall_seconds=0.0, cpu_seconds=0.0, predict_seconds=0.0, image_epochs=0.0)
    maps: list[Any] = []
    for i, held in enumerate(parts):
        train_idx = np.setdiff1d(np.arange(n), held)
        name = f"{spec.key}-fold{i + 1}of{folds}"
        values = dict(base, run_name=name, output_dir=str(out / "label_issues" / "folds"))
        run_dir = out / "label_issues" / "folds" / name
        probs[held] = _train_fold(values, run_dir, train_idx, held)
        c = _run_compute(run_dir)
        info = read_json(run_dir / "fold.json")
        total["train_seconds"] += c["train_seconds"]
        total["wall_seconds"] += float(info["wall_time"])
        total["cpu_seconds"] += float(info["cpu_time"])
        total["predict_seconds"] += float(info["predict_time"])
        total["image_epochs"] += c["epochs"] * len(train_idx)
        maps.append(info.get("val_mAP"))
        _logger.info("%s: fold %d/%d done (%d trained, %d held out)", spec.key, i + 1, folds, len(train_idx), len(held))
    assert not np.isnan(probs).any(), "every image is held out by exactly one fold"
    known = [float(m) for m in maps if m is not None]
    total["fold_val_mAP"] = float(np.mean(known)) if known else float("nan")  # sanity: the fold models' quality
    return probs, total


def _check_balancemix_run(spec: RunSpec, out: Path) -> None:
    """Refuse a finished BalanceMix run without its ``last.pth`` (e.g. a grid run trained without
    ``--keep-checkpoints``): its label state is gone, and retraining it would rewrite a folder
    another stage may be reading."""
    run_dir = out / "runs" / spec.key
    if (run_dir / "summary.json").is_file() and not (run_dir / "last.pth").is_file():
        raise ValueError(
            f"{run_dir} is a finished run without its last.pth, so its label state cannot be read: use another "
            "--out for the stage (or a grid run with --keep-checkpoints), or delete that run folder to retrain it")


def run_stage(out: str | Path, *, budget: Budget | None = None, settings: Sequence[str] = STAGE_SETTINGS,
              seeds: Sequence[int] = (0,), folds: int = DEFAULT_FOLDS, threads: int | None = 1,
              jobs: int = 1, train_overrides: Mapping[str, Any] | None = None,
              pretrain_cache: str | Path | None = None) -> dict[str, Any]:
    """Train what is missing, score both methods and write ``<out>/label_issues/comparison.json``.

    Args:
        out: Output folder (the grid's layout: ``data/``, ``runs/``; the stage's own files in
            ``label_issues/``). Pointing it at the grid's ``--out`` shares its finished runs
            that kept ``last.pth``.
        budget: The regime (default the strong ``BUDGETS["strong_full"]``; see :func:`stage_budget`).
        settings: Label settings (keys of :data:`~.grid.SETTINGS`). seeds: Seeds.
        folds: Cross-validation folds of cleanlab's predictions.
        threads: Torch threads (``None``: unchanged). jobs: BalanceMix runs trained at once.
        train_overrides: Config fields applied to every run (tests: tiny budgets).
        pretrain_cache: Cache root of the pre-trained backbone.

    Returns:
        The results: ``records`` (one per setting and seed: each method's ``labels`` /
        ``images`` scores, ``curve`` and ``compute``), ``summary`` (per setting, means over
        seeds, and the target's verdict) and what was run (``date``, ``out``, ``folds``,
        ``settings``, ``seeds``, ``train`` fields, ``pretrain`` recipe).
    """
    import torch

    out = Path(out)
    budget = stage_budget(budget)
    budget = replace(budget, settings=tuple(settings))
    for seed in seeds:
        for setting in settings:
            _check_balancemix_run(RunSpec("balancemix", setting, seed), out)
    stats = run_benchmark(budget, out, seeds=list(seeds), jobs=jobs, threads=threads, keep_checkpoints=True,
                          train_overrides=train_overrides, pretrain_cache=pretrain_cache)
    if stats["failed"]:
        raise RuntimeError(f"BalanceMix runs failed: {stats['failed']}")
    prepare_inputs(budget, out, train_overrides=train_overrides, pretrain_cache=pretrain_cache)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    records = []
    try:
        for seed in seeds:
            for setting in settings:
                records.append(_score_setting(setting, seed, budget, out, folds, train_overrides, pretrain_cache))
    finally:
        torch.set_num_threads(old_threads)
    results = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), out=str(out), folds=int(folds),
        settings=list(settings), seeds=list(seeds), train=dict(budget.train, **dict(train_overrides or {})),
        pretrain=dict(budget.pretrain) if budget.pretrain else None, records=records,
    )
    results["summary"] = summarize(records)
    path = out / "label_issues" / "comparison.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results, indent=1)
    _logger.info("wrote %s", path)
    return results


def _score_setting(setting: str, seed: int, budget: Budget, out: Path, folds: int,
                   train_overrides: Mapping[str, Any] | None, pretrain_cache: str | Path | None) -> dict[str, Any]:
    bm_spec, bce_spec = RunSpec("balancemix", setting, seed), RunSpec("bce", setting, seed)
    values = run_config(bm_spec, budget, out, train_overrides=train_overrides, pretrain_cache=pretrain_cache)
    given, clean = _known_labels(values)
    run_dir = out / "runs" / bm_spec.key
    bm = balancemix_issues(run_dir)
    if not np.array_equal(bm["given"], given):
        raise ValueError(f"{run_dir} was trained on other labels than {setting} seed {seed} gives")
    probs, cl_compute = cross_validated_probs(bce_spec, budget, out, folds=folds, train_overrides=train_overrides,
                                              pretrain_cache=pretrain_cache)
    cl = cleanlab_issues(given, probs)
    bm_compute = _run_compute(run_dir)
    bm_compute["image_epochs"] = bm_compute["epochs"] * len(given)
    record = dict(
        setting=setting, seed=seed, images=int(given.shape[0]), classes=int(given.shape[1]),
        wrong_labels=int((given != clean).sum()), balancemix_run=str(run_dir),
        balancemix=dict(_method_scores(bm["mask"], bm["scores"], given, clean), compute=bm_compute,
                        filters={k[5:]: score_flags(v, given, clean)["all"]
                                 for k, v in bm.items() if k.startswith("mask_")}),
        cleanlab=dict(_method_scores(cl["mask"], cl["scores"], given, clean, cl["image_mask"]), compute=cl_compute),
    )
    _logger.info("%s s%d: F1 BalanceMix %.3f, cleanlab %.3f; training s %.0f vs %.0f", setting, seed,
                 record["balancemix"]["labels"]["all"]["f1"], record["cleanlab"]["labels"]["all"]["f1"],
                 bm_compute["train_seconds"], cl_compute["train_seconds"])
    return record


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The ``balancemix-benchmark-label-issues`` argument parser."""
    p = argparse.ArgumentParser(prog="balancemix-benchmark-label-issues", description=__doc__.splitlines()[0])
    p.add_argument("--budget", default="strong_full", choices=sorted(BUDGETS), help="the regime (default strong_full)")
    p.add_argument("--out", default="runs/benchmark-label-issues",
                   help="runs folder (the full grid's --out shares its finished BalanceMix runs that kept last.pth)")
    p.add_argument("--settings", default=",".join(STAGE_SETTINGS), help="comma-separated label settings")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="cross-validation folds for cleanlab (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="BalanceMix runs trained at once (default 1)")
    p.add_argument("--pretrain-cache", default=None, help="cache root of the pre-trained backbone")
    p.add_argument("--docs", default="docs/label-issues.md",
                   help="page whose comparison section is rewritten ('' = none)")
    p.add_argument("--figure", default="docs/label_issues_pr.png", help="precision/recall figure ('' = none)")
    p.add_argument("--report-only", action="store_true", help="rewrite the docs from comparison.json; train nothing")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stage (or ``--report-only``) and write its JSON, Markdown and figure."""
    from ..config import parse_overrides

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("engine", "train", "data", "noise", "methods"):
        logging.getLogger(f"balancemix_timm.{noisy}").setLevel(logging.WARNING)
    out = Path(args.out)
    settings = [s for s in args.settings.split(",") if s]
    seeds, overrides = [int(s) for s in args.seeds.split(",") if s], parse_overrides(args.overrides)
    command = " ".join([f"balancemix-benchmark-label-issues --budget {args.budget} --out {shlex.quote(str(out))}"]
                       + ([f"--settings {args.settings}"] if tuple(settings) != STAGE_SETTINGS else [])
                       + [f"--seeds {args.seeds}"] + ([f"--folds {args.folds}"] if args.folds != DEFAULT_FOLDS else [])
                       + ([f"--jobs {args.jobs}"] if args.jobs != 1 else []) + [shlex.quote(o) for o in args.overrides])
    if args.report_only:
        results = read_json(out / "label_issues" / "comparison.json")
        results["summary"] = summarize(results["records"])  # the verdict by the current rules
    else:
        results = run_stage(out, budget=BUDGETS[args.budget], settings=settings, seeds=seeds, folds=args.folds,
                            threads=args.threads, jobs=args.jobs, train_overrides=overrides,
                            pretrain_cache=args.pretrain_cache)
    paths = write_comparison(results, out / "label_issues", command=command, regime=args.budget,
                             docs=args.docs or None, figure=args.figure or None)
    _logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
