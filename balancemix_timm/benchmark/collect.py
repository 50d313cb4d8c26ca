"""Reading finished runs (``summary.json``, ``metrics.jsonl``, ``bench.json``) into the results
structure of the tables (:func:`collect_results`): cells of mean / std over seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config, read_yaml
from ..textfiles import float_or_nan, read_json, read_json_lines
from .grid import ABLATION_ROWS, BUDGETS, RUN_ORDER, SETTING_TITLES, TABLE5_SETTINGS, Budget, RunSpec, plan_runs

#: Suffixes of the class groups' metrics (``mAP``, ``mAP_many``, ...) and their titles.
GROUPS = ("", "_many", "_medium", "_few")
GROUP_TITLES = ("All", "Many", "Medium", "Few")


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, ``None`` when it is missing or unreadable."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


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
        return dict(mean=nan_to_none(self.mean), std=nan_to_none(self.std), n=self.n,
                    values=[nan_to_none(x) for x in self.values])


def nan_to_none(x: float) -> float | None:
    """``x`` as a float, ``None`` for ``None`` or NaN (JSON has no NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (unparsable lines skipped; none when missing)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return read_json_lines(path, skip_invalid=True)


def _row_at_fraction(metrics: Sequence[Mapping[str, Any]], epochs: int, fraction: float) -> Mapping[str, Any] | None:
    """The metrics row of epoch ``max(1, round(fraction * epochs))`` (1-based)."""
    target = max(1, int(math.floor(fraction * epochs + 0.5)))
    for row in metrics:
        if int(row.get("epoch", -1)) == target:
            return row
    return None


def _pretrained_info(out: Path, runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """The pre-trained backbone the finished runs fine-tuned: its path and, when its
    ``manifest.json`` is readable, the recipe, corpus digest and held-out accuracy."""
    for key in runs:
        try:
            saved = read_yaml(out / "runs" / key / "config.yaml", what="run configuration") or {}
        except (OSError, ValueError):
            continue
        path = saved.get("pretrained_path") if isinstance(saved, dict) else None
        if path:
            manifest = _read_json(Path(path).parent / "manifest.json") or {}
            return dict(path=str(path), recipe=manifest.get("recipe"), accuracy=manifest.get("accuracy"),
                        corpus_sha256=(manifest.get("corpus") or {}).get("sha256"),
                        wall_time_s=manifest.get("wall_time_s"))
    return None


def _by_seed(runs: Mapping[str, Mapping[str, Any]], method: str, setting: str, metric: str) -> dict[int, float]:
    """``seed -> last[metric]`` of the main-grid runs of ``(method, setting)`` (no ablation or variant)."""
    return {int(r["seed"]): float_or_nan(r["last"].get(metric)) for r in runs.values()
            if (r["method"], r["setting"], r["ablation"], r["variant"]) == (method, setting, None, None)}


def paired_differences(runs: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                       settings: Sequence[str], reference: str = "bce") -> dict[str, dict[str, dict[str, Any]]]:
    """Per-seed differences of each method's last mAP (all classes and each group) from ``reference``.

    A seed enters a cell only when both runs of it finished (paired by seed = noise seed, so both
    methods saw the same noisy labels). For noisy settings the cell also holds the *recovery
    ratio* ``(M_noisy - R_noisy) / (R_clean - R_noisy)`` per seed: the share of the mAP that noise
    costs the reference and the method wins back (the BalanceMix paper's Tables 1-2 give 0.91 at
    mislabel 40% and 0.78 at random flip 40%), when the clean reference run of that seed exists.

    Returns:
        ``method -> setting -> {"mAP" + group: cell, "recovery": cell}``, cells as
        :meth:`_Cell.as_dict` (mean, sample std, n, values), differences in mAP points.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        if method == reference:
            continue
        out[method] = {}
        for setting in settings:
            entry: dict[str, Any] = {}
            for g in GROUPS:
                mine, ref = _by_seed(runs, method, setting, "mAP" + g), _by_seed(runs, reference, setting, "mAP" + g)
                entry["mAP" + g] = _Cell([mine[s] - ref[s] for s in sorted(set(mine) & set(ref))]).as_dict()
            if setting != "clean":
                mine, ref = _by_seed(runs, method, setting, "mAP"), _by_seed(runs, reference, setting, "mAP")
                clean = _by_seed(runs, reference, "clean", "mAP")
                entry["recovery"] = _Cell([(mine[s] - ref[s]) / (clean[s] - ref[s])
                                           for s in sorted(set(mine) & set(ref) & set(clean))
                                           if clean[s] != ref[s]]).as_dict()
            out[method][setting] = entry
        if all(t in settings for t in TABLE5_SETTINGS):
            # The paper's "Overall (mean)" of Table 5: per seed, the mean over the four settings.
            mine = [_by_seed(runs, method, t, "mAP") for t in TABLE5_SETTINGS]
            ref = [_by_seed(runs, reference, t, "mAP") for t in TABLE5_SETTINGS]
            seeds = sorted(set.intersection(*(set(d) for d in mine + ref)))
            out[method]["table5_mean"] = {"mAP": _Cell([
                sum(d[s] for d in mine) / len(mine) - sum(d[s] for d in ref) / len(ref) for s in seeds]).as_dict()}
    return out


def memorisation(runs: Mapping[str, Mapping[str, Any]], settings: Sequence[str],
                 method: str = "bce") -> dict[str, dict[str, Any]]:
    """Does ``method`` memorise the noise? Per setting: its last and best-epoch mAP, their
    per-seed difference (last - best, <= 0), and the per-seed gap of its last mAP to its clean run."""
    out: dict[str, dict[str, Any]] = {}
    clean = _by_seed(runs, method, "clean", "mAP")
    for setting in settings:
        last, best = _by_seed(runs, method, setting, "mAP"), _by_seed(runs, method, setting, "best_mAP")
        seeds = sorted(set(last) & set(best))
        out[setting] = dict(
            last=_Cell([last[s] for s in seeds]).as_dict(), best=_Cell([best[s] for s in seeds]).as_dict(),
            last_minus_best=_Cell([last[s] - best[s] for s in seeds]).as_dict(),
            last_minus_clean=_Cell([last[s] - clean[s] for s in seeds if s in clean]).as_dict(),
        )
    return out


def gmm_input_auc(out: Path, runs: Mapping[str, Mapping[str, Any]],
                  settings: Sequence[str] = ("mislabel40", "flip40")) -> dict[str, dict[str, dict[str, Any]]]:
    """How well the GMMs' input loss separates wrong from correct given labels in the BalanceMix
    runs, and what the clean-label selection kept of each.

    Per label setting, per snapshot stage (``warmup_end``, ``last``) of the runs'
    ``label_diagnostics/epoch_*.npz``, per polarity: the mean over classes of the per-class ROC
    AUC (:func:`~balancemix_timm.diagnostics_readers.wrong_label_auc`) and the shares of wrong
    and of correct given labels kept clean (p_G > 0.5, after ``clean_if_agrees``;
    :func:`~balancemix_timm.diagnostics_readers.selection_summary`), and Eq. 9 by direction
    (:func:`~balancemix_timm.diagnostics_readers.relabel_summary`), each as a cell over seeds
    (shares and accuracies in %).

    Returns:
        ``setting -> stage -> {"positive": cell, "negative": cell, "<polarity>_wrong_kept": cell,
        "<polarity>_correct_kept": cell, "to_one": cell, "to_one_accuracy": cell, "to_zero": cell,
        "to_zero_accuracy": cell, "positive_prob_median": cell, "positive_prob_p90": cell,
        "epoch": int | None}``.
    """
    from ..diagnostics_readers import load_label_diagnostics, relabel_summary, selection_summary, wrong_label_auc

    kept = [f"{p}_{k}" for p in ("positive", "negative") for k in ("wrong_kept", "correct_kept")]
    relabel_keys = ("to_one", "to_one_accuracy", "to_zero", "to_zero_accuracy", "positive_prob_median",
                    "positive_prob_p90")

    result: dict[str, dict[str, dict[str, Any]]] = {}
    for setting in settings:
        stages: dict[str, dict[str, Any]] = {}
        for key, r in runs.items():
            if (r["method"], r["setting"], r["ablation"], r["variant"]) != ("balancemix", setting, None, None):
                continue
            for npz in sorted((out / "runs" / key / "label_diagnostics").glob("epoch_*.npz")):
                data = load_label_diagnostics(npz)
                auc = wrong_label_auc(data)
                selection = selection_summary(data) if "clean_prob" in data else None
                relabel = relabel_summary(data) if {"state", "refined_labels", "probs"} <= set(data) else None
                epoch = int(data["epoch"]) if "epoch" in data else None
                for stage in (str(x) for x in data.get("stages", ())):
                    entry = stages.setdefault(stage, {"positive": _Cell(), "negative": _Cell(),
                                                      **{k: _Cell() for k in (*kept, *relabel_keys)},
                                                      "epoch": epoch})
                    for polarity in ("positive", "negative"):
                        entry[polarity].values.append(auc[polarity]["mean"])
                        if selection is not None:
                            for what in ("wrong_kept", "correct_kept"):
                                entry[f"{polarity}_{what}"].values.append(100.0 * selection[polarity][what])
                    if relabel is not None:
                        for k in relabel_keys:
                            scale = 100.0 if k.endswith("accuracy") else 1.0
                            entry[k].values.append(scale * relabel[k])
        if stages:
            result[setting] = {stage: {k: (v.as_dict() if isinstance(v, _Cell) else v) for k, v in entry.items()}
                               for stage, entry in stages.items()}
    return result


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
            last=summary.get("last", {}), metrics=metrics, wall_time=bench.get("wall_time"),
            cpu_time=bench.get("cpu_time"),
            noise_report=summary.get("noise_report"), epochs=summary.get("epochs"),
        )

    def cell(method: str, setting: str, metric: str, *, ablation: str | None = None,
             variant: str | None = None) -> _Cell:
        c = _Cell()
        for r in runs.values():
            if (r["method"], r["setting"], r["ablation"], r["variant"]) == (method, setting, ablation, variant):
                c.values.append(float_or_nan(r["last"].get(metric)))
        return c

    main_table: dict[str, dict[str, dict[str, Any]]] = {}
    partial = dict(budget.partial_settings)
    settings_main = [s for s in RUN_ORDER if s in budget.settings or s in partial]
    settings_main += [s for s in budget.settings if s not in settings_main]  # settings added since
    for method in budget.methods:
        main_table[method] = {
            s: {("mAP" + g): cell(method, s, "mAP" + g).as_dict() for g in GROUPS} for s in settings_main
        }
    best_table = {method: {s: cell(method, s, "best_mAP").as_dict() for s in settings_main}
                  for method in budget.methods}
    paired = paired_differences(runs, budget.methods, settings_main)
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
        if setting not in settings_main or "balancemix" not in budget.methods:
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
                base.values.append(100.0 * (1.0 - float_or_nan(r["noise_report"].get("changed_fraction"))))
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
                cells = {("mAP" + g): cell("balancemix", setting, "mAP" + g, variant=var).as_dict() for g in GROUPS}
                last_spread = _Cell(), _Cell()
                for r in runs.values():
                    if (r["method"], r["setting"], r["ablation"], r["variant"]) == ("balancemix", setting, None, var) \
                            and r["metrics"]:
                        last_spread[0].values.append(float_or_nan(r["last"].get("lm_sampler_max_over_min")))
                        last_spread[1].values.append(float_or_nan(r["last"].get("lm_sampler_ess_fraction")))
                cells["sampler_max_over_min"] = last_spread[0].as_dict()
                cells["sampler_ess_fraction"] = last_spread[1].as_dict()
                variants.setdefault(setting, {})[label] = cells

    pretrained = _pretrained_info(out, runs) if budget.pretrain is not None else None
    meta = _read_json(out / "data" / "demo_meta.json") or {}
    data_info = dict(options=meta.get("options"), train_positive_counts=meta.get("train_positive_counts"),
                     val_positive_counts=meta.get("val_positive_counts"), class_names=meta.get("class_names"))
    return dict(
        data=data_info,
        budget=dict(train=load_config(None, dict(budget.train)).to_dict(), methods=list(budget.methods),
                    settings=list(budget.settings),
                    partial_settings=[[s, list(m)] for s, m in budget.partial_settings],
                    ablation_settings=list(budget.ablation_settings), ablation_rows=list(budget.ablation_rows),
                    sampler_variants=[[n, dict(o)] for n, o in budget.sampler_variants],
                    seeds=list(budget.seeds if seeds is None else seeds), description=budget.description,
                    pretrain=dict(budget.pretrain) if budget.pretrain is not None else None),
        pretrained=pretrained,
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
        best=best_table,
        paired=paired,
        memorisation=memorisation(runs, settings_main),
        gmm_auc=gmm_input_auc(out, runs),
        ablation=ablation_table,
        table7=table7,
        sampler_spread=spread,
        sampler_variants=variants,
        runs={k: dict(method=r["method"], setting=r["setting"], seed=r["seed"], ablation=r["ablation"],
                      variant=r["variant"], wall_time=r["wall_time"], cpu_time=r.get("cpu_time"),
                      last={k2: v for k2, v in r["last"].items() if isinstance(v, (int, float))})
              for k, r in runs.items()},
    )



def label_management_curves(budget: Budget, out: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch metrics rows of the finished BalanceMix runs of ``seed`` on mislabel / flip.

    Args:
        budget: The budget (unused: the runs are found by their keys).
        out: The benchmark's output folder.
        seed: The seed whose runs are read.

    Returns:
        ``"<setting title> (seed <seed>)"`` -> the run's ``metrics.jsonl`` rows, for runs with
        label-management figures.
    """
    curves = {}
    for setting in ("mislabel20", "mislabel40", "flip40"):
        run_dir = out / "runs" / RunSpec("balancemix", setting, seed).key
        rows = _read_metrics(run_dir)
        if rows and (run_dir / "summary.json").is_file() and any("clean_precision" in r for r in rows):
            curves[f"{SETTING_TITLES[setting]} (seed {seed})"] = rows
    return curves




#: The settings whose BalanceMix run (lowest seed) gets diagnostics figures in the report.
DIAGNOSTICS_SETTINGS = ("mislabel40", "flip40")


def diagnostics_runs(out: Path, seed: int, settings: Sequence[str] | None = None) -> dict[str, Path]:
    """The finished BalanceMix runs of ``seed`` on :data:`DIAGNOSTICS_SETTINGS` that saved
    label diagnostics (``label_diagnostics/epoch_*.npz``).

    Args:
        out: The benchmark's output folder.
        seed: The seed whose runs are read.
        settings: Only these settings (a budget's; default every diagnostics setting).

    Returns:
        Setting -> run folder, only for runs with a ``summary.json`` and at least one ``.npz``.
    """
    runs = {}
    for setting in DIAGNOSTICS_SETTINGS:
        if settings is not None and setting not in settings:
            continue
        run_dir = out / "runs" / RunSpec("balancemix", setting, seed).key
        if (run_dir / "summary.json").is_file() and any((run_dir / "label_diagnostics").glob("epoch_*.npz")):
            runs[setting] = run_dir
    return runs
