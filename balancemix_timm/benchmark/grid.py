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
    # BalanceMix as the paper writes it (balancemix_timm.presets); "balancemix" is the default preset.
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

#: The pre-trained regime (the paper's: an ImageNet-pre-trained backbone fine-tuned until BCE
#: memorises the noise). The backbone is pre-trained offline by ``balancemix-pretrain`` on a
#: corpus disjoint from the benchmark's images and classes (:data:`PRETRAIN_RECIPE`); the
#: validation split holds at least 40 positives of every class.
PRETRAINED_TRAIN: dict[str, Any] = dict(
    _COMMON_TRAIN, demo_num_train=1000, demo_num_val=1500, demo_min_val_positives=40, image_size=32,
    epochs=20, warmup_epochs=3, lr=2e-3,
)
#: :class:`~balancemix_timm.pretrain.PretrainRecipe` fields of the pre-trained regime's backbone.
PRETRAIN_RECIPE: dict[str, Any] = dict(model="resnet10t", image_size=32)

#: The four label settings of the paper's Table 5 (and of the pre-trained full grid).
TABLE5_SETTINGS = ("clean", "mislabel40", "flip40", "single")

#: The named budgets (``--budget``).
BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        train=PRETRAINED_TRAIN,
        methods=ALL_METHODS,
        settings=("mislabel40",),
        ablation_settings=("mislabel40",),
        pretrain=PRETRAIN_RECIPE,
        description="quick subset of the pre-trained regime: every method and every Table 5 row on mislabel 40%, "
                    "one seed (the full grid's settings)",
    ),
    "full": Budget(
        train=PRETRAINED_TRAIN,
        methods=ALL_METHODS,
        settings=TABLE5_SETTINGS,
        # The component rows on the two noisy settings, where the paper's components differ most
        # (Table 5's clean and single-positive columns would add 24 BalanceMix-cost runs, ~17
        # minutes, past the grid's 100-minute budget on 2 cores).
        ablation_settings=("mislabel40", "flip40"),
        seeds=(0, 1, 2),
        pretrain=PRETRAIN_RECIPE,
        description="pre-trained regime, full grid: every method x the four Table 5 label settings, "
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
    """Every run of ``budget``, most informative first (so a cut-short grid fills the
    headline settings of all tables before the rest), without duplicates."""
    seeds = tuple(budget.seeds if seeds is None else seeds)
    specs: list[RunSpec] = []
    order = [s for s in RUN_ORDER if s in budget.settings or s in budget.ablation_settings]
    order += [s for s in budget.settings if s not in order]
    for seed in seeds:
        for setting in order:
            if setting in budget.settings:
                specs += [RunSpec(m, setting, seed) for m in budget.methods]
            if setting in budget.ablation_settings:
                specs.append(RunSpec("bce", setting, seed))
                specs += [RunSpec("mixup", setting, seed) if a == "mixup"
                          else RunSpec("balancemix", setting, seed, ablation=a)
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

