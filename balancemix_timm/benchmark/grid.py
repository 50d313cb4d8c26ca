"""What the benchmark runs: label settings, methods, budgets and the plan of runs of a budget.

Everything a budget is made of is data here: :data:`SETTINGS` / :data:`SETTING_TITLES` (label
settings, in the tables' order), :data:`METHOD_TITLES` (methods, in the tables' order),
:data:`ABLATION_ROWS` (Table 5), :data:`METHOD_OVERRIDES` / :data:`METHOD_SETTING_OVERRIDES`
(per-method options) and :data:`BUDGETS` (name -> :class:`Budget`). :func:`plan_runs` turns a
budget into its :class:`RunSpec` list; the runner, the results and the report only read these.

To extend the benchmark, edit data here only:

* a budget (e.g. a pre-trained regime, or three seeds): a new :class:`Budget` entry in
  :data:`BUDGETS`, with its own ``train`` fields (``pretrained_path=...``, ``image_size=...``)
  and ``seeds=(0, 1, 2)``;
* a method (the trainer must know its ``method`` name): a row of :data:`METHOD_TITLES` (its
  title and place in the tables), the budgets that should run it (the pre-trained budgets run
  :data:`ALL_METHODS`, the from-scratch ones :data:`PAPER_METHODS`) and, if it needs options, a
  row of :data:`METHOD_OVERRIDES`;
* a label setting: a row of :data:`SETTINGS` and of :data:`SETTING_TITLES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Label settings: name -> config fields, in the tables' order.
SETTINGS: dict[str, dict[str, Any]] = {
    "clean": dict(noise="clean", noise_rate=0.0),
    "mislabel20": dict(noise="mislabel", noise_rate=0.2),
    "mislabel40": dict(noise="mislabel", noise_rate=0.4),
    "flip20": dict(noise="random_flip", noise_rate=0.2),
    "flip40": dict(noise="random_flip", noise_rate=0.4),
    "single": dict(noise="single_positive", noise_rate=0.0),
}
#: Label settings' names in the tables.
SETTING_TITLES = {
    "clean": "Clean", "mislabel20": "Mislabel 20%", "mislabel40": "Mislabel 40%",
    "flip20": "Rand. flip 20%", "flip40": "Rand. flip 40%", "single": "Single positive",
}

#: Methods (name -> title in the tables), in the tables' order (every method a report may show).
METHOD_TITLES = {
    "bce": "Default (BCE)", "mixup": "Mixup (BCE)", "coteaching": "Co-teaching", "asl": "ASL",
    "testimator": "T-estimator", "llr": "LL-R", "llct": "LL-Ct", "hill": "Hill", "splc": "SPLC",
    "balancemix": "BalanceMix",
    "balancemix_paper": "BalanceMix (paper preset)",
}
#: The BalanceMix paper's methods (Tables 1-4): what the from-scratch budgets run.
PAPER_METHODS = ("bce", "mixup", "coteaching", "asl", "testimator", "llr", "llct", "balancemix")
#: Every method with a title: the paper's and the newer Hill and SPLC (Zhang et al. 2021), which
#: the pre-trained budgets run.
ALL_METHODS = tuple(METHOD_TITLES)

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
    # BalanceMix as the paper writes it (balancemix_timm.options.PRESETS); "balancemix" is the default preset.
    "balancemix_paper": {"method": "balancemix", "preset": "paper"},
}
#: The paper's re-labeling threshold for the single-positive setting.
SINGLE_POSITIVE_EPS = 0.55
#: Per-(method, label setting) option overrides, applied after :data:`METHOD_OVERRIDES`.
#: BalanceMix's single-positive protocol: the paper's eps, and (default preset only) the
#: missing-label assumption that a given positive is correct (``managed_labels="negative"``:
#: only negatives are managed), which LL-R / LL-Ct / Hill / SPLC make by design.
METHOD_SETTING_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("balancemix", "single"): {"eps": SINGLE_POSITIVE_EPS, "managed_labels": "negative"},
    ("balancemix_paper", "single"): {"eps": SINGLE_POSITIVE_EPS},
}


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
        pretrain: :class:`~balancemix_timm.pretrain.PretrainRecipe` fields of the backbone every
            run fine-tunes (built once, cached, by :func:`~balancemix_timm.pretrain.ensure_pretrained`;
            the runs' ``pretrained_path`` points at it); ``None``: runs train from scratch.
        partial_settings: label settings run for some methods only, as ``(setting, methods)``
            (e.g. the 20% columns of Tables 1-2 for BCE and BalanceMix).
        report_dir: where ``balancemix-benchmark`` writes this budget's report by default (the
            committed page of a full grid; ``None``: the runs folder).
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
    pretrain: Mapping[str, Any] | None = None
    partial_settings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    report_dir: str | None = None


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

#: Run order of the label settings: the headline settings first, so a grid cut short fills them.
RUN_ORDER = ("mislabel40", "flip40", "single", "clean", "mislabel20", "flip20")
#: Display order of the label settings (the tables' and plots').
DISPLAY_ORDER = tuple(SETTINGS)

#: The from-scratch budgets' training fields (the first benchmark: every method underfits there).
_SCRATCH_TRAIN = dict(_COMMON_TRAIN, demo_num_train=800, demo_num_val=400, image_size=32, epochs=6, warmup_epochs=2)

#: The weak pre-trained regime (the first pre-trained benchmark, ``docs/weak/results.md``): a
#: backbone pre-trained offline by ``balancemix-pretrain`` on a corpus disjoint from the
#: benchmark's images and classes (:data:`WEAK_PRETRAIN_RECIPE`), fine-tuned on 1,000 images of
#: 32 px. Its classifier is too weak to judge a noise-robust method (BCE: 46.5 mAP on clean labels;
#: the rarest class has 5 training positives); kept so its page can be reproduced.
WEAK_TRAIN: dict[str, Any] = dict(
    _COMMON_TRAIN, demo_num_train=1000, demo_num_val=1500, demo_min_val_positives=40, image_size=32,
    epochs=20, warmup_epochs=3, lr=2e-3,
)
#: :class:`~balancemix_timm.pretrain.PretrainRecipe` fields of the weak regime's backbone.
WEAK_PRETRAIN_RECIPE: dict[str, Any] = dict(model="resnet10t", image_size=32, labels="separate", amp=False)

#: The strong regime (the paper's phenomenon: a classifier near COCO's 83 mAP on clean labels that
#: memorises noisy ones). What makes it strong, each choice measured on ``docs/results.md``:
#: a backbone pre-trained on the coloured-digit vocabulary the classes are made of
#: (:data:`STRONG_PRETRAIN_RECIPE`, ``labels="pairs"``), 48 px images (objects of 16-22 px),
#: 3,000 training images of 30 classes with an imbalance ratio of 20 (the rarest class has 45
#: positives), and 16 epochs with a 4-epoch warm-up (BCE peaks within the first five and
#: memorises after). bfloat16 autocast and channels_last, and 16 epochs rather than the 24 first
#: measured, keep the full grid within 240 minutes on 2 cores. The class groups are fixed so every group is
#: populated (COCO's scaled thresholds leave the few-shot group empty at this size).
STRONG_TRAIN: dict[str, Any] = dict(
    _COMMON_TRAIN, demo_num_train=3000, demo_num_val=1500, demo_num_classes=30, demo_imbalance_ratio=20.0,
    demo_min_val_positives=40, image_size=48, batch_size=64, lr=2e-3, scheduler="onecycle", randaugment=False,
    epochs=16, warmup_epochs=4, many_threshold=365, few_threshold=100, amp=True, channels_last=True,
)
#: :class:`~balancemix_timm.pretrain.PretrainRecipe` fields of the strong regime's backbone.
STRONG_PRETRAIN_RECIPE: dict[str, Any] = dict(model="resnet10t", image_size=48, labels="pairs", amp=True)
# (``pretrained_path=offline`` resolves to this backbone at 48 px: its labels and precision are the
# recipe's defaults.)

#: The four label settings of the paper's Table 5 (and of the pre-trained full grid).
TABLE5_SETTINGS = ("clean", "mislabel40", "flip40", "single")

#: Methods of the strong regime's full grid: every method but SPLC, which the weak regime's page
#: shows dominated (2.5 to 24.3 points below BCE on each Table 5 setting, 11.1 on their mean), and
#: BalanceMix's paper preset, whose comparison with the default preset belongs to the preset study
#: (the weak page has it: within noise on three settings) and would not fit the 240-minute budget.
STRONG_METHODS = tuple(m for m in ALL_METHODS if m not in ("splc", "balancemix_paper"))

#: The named budgets (``--budget``).
BUDGETS: dict[str, Budget] = {
    "strong_quick": Budget(
        train=STRONG_TRAIN,
        methods=("bce", "mixup", "balancemix"),
        settings=("mislabel40",),
        pretrain=STRONG_PRETRAIN_RECIPE,
        description="quick subset of the strong regime: BCE, Mixup and BalanceMix on mislabel 40%, one seed "
                    "(the full grid's settings)",
    ),
    "strong_full": Budget(
        train=STRONG_TRAIN,
        methods=STRONG_METHODS,
        settings=TABLE5_SETTINGS,
        partial_settings=(("mislabel20", ("bce", "balancemix")), ("flip20", ("bce", "balancemix"))),
        ablation_settings=("mislabel40", "flip40"),
        seeds=(0, 1, 2),
        pretrain=STRONG_PRETRAIN_RECIPE,
        report_dir="docs",
        description="strong regime, full grid: every method x the four Table 5 label settings, mislabel and flip "
                    "20% for BCE and BalanceMix, the Table 5 component rows on mislabel 40% and flip 40%, 3 seeds",
    ),
    "weak_quick": Budget(
        train=WEAK_TRAIN,
        methods=ALL_METHODS,
        settings=("mislabel40",),
        ablation_settings=("mislabel40",),
        pretrain=WEAK_PRETRAIN_RECIPE,
        description="quick subset of the weak pre-trained regime: every method and every Table 5 row on mislabel "
                    "40%, one seed (the full grid's settings)",
    ),
    "weak_full": Budget(
        train=WEAK_TRAIN,
        methods=ALL_METHODS,
        settings=TABLE5_SETTINGS,
        # The component rows on the two noisy settings, where the paper's components differ most.
        ablation_settings=("mislabel40", "flip40"),
        seeds=(0, 1, 2),
        pretrain=WEAK_PRETRAIN_RECIPE,
        report_dir="docs/weak",
        description="weak pre-trained regime, full grid: every method x the four Table 5 label settings, "
                    "the Table 5 component rows on mislabel 40% and flip 40%, 3 seeds",
    ),
    "scratch_quick": Budget(
        train=_SCRATCH_TRAIN,
        methods=PAPER_METHODS,
        settings=("mislabel40",),
        ablation_settings=("mislabel40",),
        description="from scratch, quick subset: every method and every Table 5 row on mislabel 40%, one seed",
    ),
    "scratch_full": Budget(
        train=_SCRATCH_TRAIN,
        methods=PAPER_METHODS,
        settings=RUN_ORDER,
        ablation_settings=("clean", "mislabel40", "flip40", "single"),
        sampler_variants=(
            ("T=0.5", {"sampler_temperature": 0.5}),
            ("T=4", {"sampler_temperature": 4.0}),
            ("positive score", {"sampler_score": "positive"}),
        ),
        report_dir="docs/scratch",
        description="from scratch, full grid: 6 label settings, Table 5 ablation on 4 settings, sampler comparison",
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
    """Every run of ``budget``, most informative first, without duplicates: label settings in
    :data:`RUN_ORDER`, each with every seed before the next setting (so a cut-short grid has
    paired, every-seed figures of the headline settings of all tables before the rest), the
    sampler variants last."""
    seeds = tuple(budget.seeds if seeds is None else seeds)
    specs: list[RunSpec] = []
    order = [s for s in RUN_ORDER if s in budget.settings or s in budget.ablation_settings]
    order += [s for s in budget.settings if s not in order]
    partial = dict(budget.partial_settings)
    order += [s for s in RUN_ORDER if s in partial and s not in order]
    for setting in order:
        for seed in seeds:
            if setting in budget.settings:
                specs += [RunSpec(m, setting, seed) for m in budget.methods]
            specs += [RunSpec(m, setting, seed) for m in partial.get(setting, ())]
            if setting in budget.ablation_settings:
                specs.append(RunSpec("bce", setting, seed))
                specs += [RunSpec("mixup", setting, seed) if a == "mixup"
                          else RunSpec("balancemix", setting, seed, ablation=a)
                          for a in budget.ablation_rows]
                specs.append(RunSpec("balancemix", setting, seed))
    for seed in seeds:
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

