"""Every BalanceMix option, declared once: name, default, allowed values and help.

:class:`BalanceMixOptions` is the one declaration. The front ends are generated from it:

- the trainer's :class:`~balancemix_timm.config.TrainConfig` carries one flat field per option
  (``balancemix-train alpha=2 gmm_tol=1e-3``);
- the ML-Decoder plugin's flags are ``--bm-<name>`` with ``_`` written ``-``
  (:func:`~balancemix_timm.integrations.ml_decoder.add_args`);
- :class:`~balancemix_timm.recipe.BalanceMixRecipe` builds the engine and runs the shared glue
  from an instance.

The GMM options' defaults are :class:`~balancemix_timm.gmm.LabelGMM`'s keyword defaults (read
from its signature, so the estimator stays the one place they are set); the engine's keyword
defaults are read from here. Named option sets (:data:`PRESETS`: the literal paper, the project
default) are declared here too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .gmm import LabelGMM
from .loss import BASE_LOSSES

__all__ = [
    "BalanceMixOptions", "OptionSpec", "option_specs", "option_spec", "OPTION_DEFAULTS", "ENGINE_OPTIONS",
    "GMM_OPTIONS", "check_option", "check_options_together", "gmm_options", "options_markdown",
    "PRESETS", "PRESET_KEYS", "ENGINE_KEYS", "preset_options", "engine_preset",
]

_GMM_DEFAULTS = {
    name: p.default for name, p in inspect.signature(LabelGMM.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def _option(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, low: float | None = None,
            high: float | None = None, low_open: bool = False, high_open: bool = False,
            group: str = "engine") -> Any:
    """A dataclass field carrying the option's rule in its metadata (see :class:`OptionSpec`)."""
    return field(default=default, metadata=dict(help=help, choices=choices, low=low, high=high,
                                                low_open=low_open, high_open=high_open, group=group))


@dataclass(frozen=True)
class BalanceMixOptions:
    """The options of BalanceMix (Alg. 1); defaults are the project's default preset.

    Groups (``OptionSpec.group``): ``"engine"`` options are keywords of
    :class:`~balancemix_timm.engine.BalanceMixEngine`; ``"gmm"`` options (``gmm_<name>``) are
    :class:`~balancemix_timm.gmm.LabelGMM`'s ``<name>``; ``"views"`` options say which
    predictions are recorded (the front ends' no-grad forwards); ``"mixing"`` options drive the
    in-loader Mixup.
    """

    # Minority-augmented mixing (Eq. 2-5).
    alpha: float = _option(4.0, "Mixup Beta(alpha, alpha) of Eq. 5; 0 disables mixing", low=0.0)
    minority_sampler: bool = _option(
        True, "pair each random batch with a minority batch (Eq. 2-4); false pairs it with a second random "
              "batch (plain Mixup, Table 5 row 2)")
    sampler_score: str = _option("paper", "minority score: Eq. 3 (paper) or positives only (positive)",
                                 choices=("paper", "positive"))
    sampler_temperature: float = _option(1.0, "exponent T of p ~ Score^-T (1 = Eq. 4)", low=0.0, low_open=True)
    sampler_labels: str = _option("given", "labels of Eq. 2-3: the given ones (literal) or the refined ones",
                                  choices=("given", "refined"))
    lam_mode: str = _option("batch", "one Mixup lambda per batch (batch) or per pair (elem)",
                            choices=("batch", "elem"), group="mixing")
    # Label-wise management (Eq. 6-10).
    eps: float = _option(0.975, "re-labeling confidence threshold of Eq. 9, in (0.5, 1]",
                         low=0.5, high=1.0, low_open=True)
    warmup_epochs: int = _option(10, "epochs on the given labels before label management starts "
                                     "(paper: VOC 5, COCO 10)", low=0)
    label_management: str = _option(
        "full", "none | clean (Eq. 8) | relabel (+ Eq. 9) | full (+ ambiguous labels weighted by p_G, Eq. 10): "
                "the rows of Table 5", choices=("none", "clean", "relabel", "full"))
    base_loss: str = _option("bce", "element-wise loss of Eq. 10: bce (the paper), asl or hill (not in the paper; "
                                    "docs/design.md)", choices=BASE_LOSSES)
    clean_if_agrees: bool = _option(
        True, "a label that f(x) agrees with (BCE below ln 2) is clean whatever its p_G (not in the paper; "
              "docs/design.md)")
    record_momentum: float = _option(
        0.0, "m in [0, 1): recorded probabilities become m * previous + (1 - m) * new (an average over "
             "epochs, not in the paper); 0 keeps the latest", low=0.0, high=1.0, high_open=True)
    managed_labels: str = _option(
        "all", "all (the paper) manages positive and negative labels; negative treats every given positive "
               "as clean (missing-label / single-positive setting)", choices=("all", "negative"))
    # The predictions of Eq. 2, 6 and 9.
    label_source: str = _option(
        "views", "where the predictions come from: views (after each step, a no-grad forward of extra "
                 "views of the random instances) or epoch_pass (a no-grad pass over the training set "
                 "after each epoch)", choices=("views", "epoch_pass"), group="views")
    num_views: int = _option(2, "augmented views averaged per prediction (Eq. 9 uses two)", low=1, group="views")
    confidence_input: str = _option(
        "image", "f(x) of Eq. 2 and 6 (minority score, GMM losses): image (the un-augmented image through "
                 "the evaluation transform, as the paper writes Eq. 6; one more no-grad forward per sample) "
                 "or views (the mean of the augmented views); Eq. 9 always averages the views",
        choices=("image", "views"), group="views")
    view_fraction: float = _option(
        1.0, "share of each random batch whose views are forwarded (label_source=views): the others keep "
             "their last record; a cost option", low=0.0, high=1.0, low_open=True, group="views")
    views_for: str = _option(
        "all", "which random instances get their augmented views forwarded: all, or relabel: only those Eq. 9 "
               "can act on at the next refresh (none before the last warm-up epoch or without re-labeling, all "
               "in it, then those with a label not found clean at the last refresh); the others record the image "
               "alone and their unclean labels wait one refresh as ambiguous. Needs label_source=views, "
               "confidence_input=image, record_momentum=0; a cost option (docs/performance.md)",
        choices=("all", "relabel"), group="views")
    # The 2K GMMs (Eq. 7-8): LabelGMM's options.
    gmm_normalize: str = _option(_GMM_DEFAULTS["normalize"], "per-group loss normalisation before the GMM fit",
                                 choices=("minmax", "none"), group="gmm")
    gmm_max_iter: int = _option(_GMM_DEFAULTS["max_iter"], "EM iterations per GMM (0: the initial split only)", low=0,
                                 group="gmm")
    gmm_tol: float = _option(_GMM_DEFAULTS["tol"], "EM stops when the mean log-likelihood gains less",
                             low=0.0, group="gmm")
    gmm_reg_covar: float = _option(_GMM_DEFAULTS["reg_covar"], "variance floor added in every M-step",
                                   low=0.0, group="gmm")
    gmm_init: str = _option(_GMM_DEFAULTS["init"], "initial split of each group: kmeans (two-means) or quantile",
                            choices=("kmeans", "quantile"), group="gmm")
    gmm_dtype: str = _option(_GMM_DEFAULTS["dtype"], "per-label arithmetic of the GMM fits (auto: float32 unless "
                                                     "tol < 1e-4)", choices=("auto", "float32", "float64"),
                             group="gmm")
    gmm_min_group_size: int = _option(_GMM_DEFAULTS["min_group_size"],
                                      "(class, polarity) groups with fewer labels count as clean", low=2, group="gmm")

    def __post_init__(self) -> None:
        for spec in option_specs():
            value = getattr(self, spec.name)
            check_option(spec.name, value)
            if spec.type in ("int", "float") and spec.choices is None:  # NumPy scalars, 2 for 2.0
                object.__setattr__(self, spec.name, int(value) if spec.type == "int" else float(value))
        check_options_together(self.to_dict())

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "") -> BalanceMixOptions:
        """Options from a mapping of option names (unknown names are a ``ValueError``).

        Args:
            values: ``{name: value}`` for any subset of the options.
            where: Prefix of error messages (e.g. ``"config "``).
        """
        known = {spec.name for spec in option_specs()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}unknown BalanceMix options {unknown}; known: {sorted(known)}")
        for name, value in values.items():
            check_option(name, value, where=where)
        return cls(**dict(values))

    def replace(self, **changes: Any) -> BalanceMixOptions:
        """A copy with ``changes`` applied (checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """``{name: value}`` of every option."""
        return {spec.name: getattr(self, spec.name) for spec in option_specs()}

    def engine_kwargs(self) -> dict[str, Any]:
        """The :class:`~balancemix_timm.engine.BalanceMixEngine` keywords (``gmm_options`` included)."""
        out = {name: getattr(self, name) for name in ENGINE_OPTIONS}
        out["gmm_options"] = gmm_options(self.to_dict())
        return out


@dataclass(frozen=True)
class OptionSpec:
    """The rule of one option (read from :class:`BalanceMixOptions`' field metadata).

    Attributes:
        name: The option's name (a ``TrainConfig`` key; the flag is ``--bm-<name>``).
        type: ``"bool"``, ``"int"``, ``"float"`` or ``"str"``.
        default: The default value.
        help: One line for ``--help`` and the docs.
        choices: Allowed values of a ``str`` option (None: any).
        low, high, low_open, high_open: Bounds of a number (None: unbounded).
        group: ``"engine"``, ``"gmm"``, ``"views"`` or ``"mixing"``.
    """

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None
    low: float | None
    high: float | None
    low_open: bool
    high_open: bool
    group: str

    def describe(self) -> str:
        """The allowed values in words (``one of (...)``, ``a number in (0.5, 1.0]``)."""
        if self.choices is not None:
            return f"one of {self.choices}"
        kind = "an integer" if self.type == "int" else "a number" if self.type == "float" else "true or false"
        if self.low is None and self.high is None:
            return kind
        if self.high is None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"{kind} in {lo}{self.low:g}, {self.high:g}{hi}"


@functools.cache
def _specs() -> dict[str, OptionSpec]:
    """Name -> :class:`OptionSpec`, read once from the fields' metadata (declaration order)."""
    return {
        f.name: OptionSpec(
            name=f.name, type=str(f.type), default=f.default, help=f.metadata["help"],
            choices=f.metadata["choices"], low=f.metadata["low"], high=f.metadata["high"],
            low_open=f.metadata["low_open"], high_open=f.metadata["high_open"], group=f.metadata["group"],
        )
        for f in fields(BalanceMixOptions)
    }


def option_specs() -> Iterator[OptionSpec]:
    """The :class:`OptionSpec` of every option, in declaration order."""
    return iter(_specs().values())


def option_spec(name: str) -> OptionSpec:
    """The :class:`OptionSpec` of ``name``.

    Raises:
        ValueError: ``name`` is not an option.
    """
    spec = _specs().get(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a BalanceMix option")
    return spec


def check_option(name: str, value: Any, *, where: str = "") -> None:
    """Raise ``ValueError`` (prefixed by ``where``) unless ``value`` is allowed for option ``name``.

    Numbers: ``bool`` is never a number; an ``int`` option takes only integers (Python's or
    NumPy's), a ``float`` option any real number.
    """
    spec = option_spec(name)
    bad = False
    if spec.choices is not None:
        bad = value not in spec.choices
    elif spec.type == "bool":
        bad = not isinstance(value, bool)
    elif spec.type in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            bad = True
        elif spec.type == "int" and not isinstance(value, numbers.Integral):
            bad = True
        else:
            v = float(value)
            bad = math.isnan(v) or (spec.type == "float" and not math.isfinite(v))
            if spec.low is not None:
                bad |= v <= spec.low if spec.low_open else v < spec.low
            if spec.high is not None:
                bad |= v >= spec.high if spec.high_open else v > spec.high
    if bad:
        raise ValueError(f"{where}{name} must be {spec.describe()}, got {value!r}")


def check_options_together(values: Mapping[str, Any], *, where: str = "") -> None:
    """Raise ``ValueError`` (prefixed by ``where``) for options that contradict each other:
    ``view_fraction < 1`` and ``views_for="relabel"`` apply to ``label_source="views"`` only (an
    epoch pass records every sample), and the latter needs ``confidence_input="image"`` and
    ``record_momentum=0``."""
    if values.get("label_source") == "epoch_pass" and float(values.get("view_fraction", 1.0)) != 1.0:
        raise ValueError(
            f"{where}view_fraction < 1 applies to label_source='views' only; "
            "label_source='epoch_pass' records every sample"
        )
    if values.get("views_for", "all") != "all":
        if values.get("label_source", "views") != "views":
            raise ValueError(f"{where}views_for={values['views_for']!r} applies to label_source='views' only; "
                             "label_source='epoch_pass' records every sample")
        if values.get("confidence_input", "image") != "image":
            raise ValueError(f"{where}views_for={values['views_for']!r} needs confidence_input='image' "
                             "(the instances without views keep f(x) from the image)")
        if float(values.get("record_momentum", 0.0)) != 0.0:
            raise ValueError(f"{where}views_for={values['views_for']!r} needs record_momentum=0 (an average "
                             "over epochs of views recorded in some epochs only has no defined weight)")


#: Option name -> default.
OPTION_DEFAULTS: dict[str, Any] = {spec.name: spec.default for spec in option_specs()}
#: Options passed to the engine under their own names.
ENGINE_OPTIONS: tuple[str, ...] = tuple(spec.name for spec in option_specs() if spec.group == "engine")
#: ``gmm_<name>`` options, passed to the GMM as ``<name>``.
GMM_OPTIONS: tuple[str, ...] = tuple(spec.name for spec in option_specs() if spec.group == "gmm")


def gmm_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~balancemix_timm.gmm.LabelGMM` keywords of a mapping holding ``gmm_*`` options."""
    return {name[len("gmm_"):]: values[name] for name in GMM_OPTIONS if name in values}


def options_markdown() -> str:
    """A Markdown table of every option (name, default, allowed values, help), as
    ``docs/training.md`` lists them (a test keeps that page equal to it)."""
    rows = ["| option (`--bm-` flag) | default | allowed | what it does |", "| --- | --- | --- | --- |"]
    for spec in option_specs():
        allowed = spec.describe().replace("|", "\\|")
        rows.append(f"| `{spec.name}` | `{spec.default}` | {allowed} | {spec.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------- presets
# Named sets of options: the paper's literal text and this project's default. The paper fixes
# Eq. 1-10 but is silent on a few points where its literal form fails in practice
# (``docs/design.md``, "Options beyond the paper's text"). Each such point is an option whose value
# in the literal paper stays reachable as the preset ``"paper"``; ``"default"`` holds the values
# the project trains with (the defaults above, so every front end's). A preset is applied first
# and explicit options win over it: ``balancemix-train preset=paper clean_if_agrees=true`` is
# the paper with that one option changed.

#: The options a preset sets: those where the paper's text and the project's default differ or
#: where the paper is silent.
PRESET_KEYS = ("confidence_input", "clean_if_agrees", "record_momentum", "managed_labels")

#: Options each preset sets (trainer / ML-Decoder names; ``confidence_input`` is a front-end option).
PRESETS: dict[str, dict[str, Any]] = {
    # Eq. 2 and 6 read f(x) of the un-augmented image; every (class, polarity) group is split by
    # its GMM (Eq. 7-8); the latest record of a sample is used; positives and negatives are managed.
    "paper": dict(confidence_input="image", clean_if_agrees=False, record_momentum=0.0, managed_labels="all"),
    # The options' defaults (balancemix_timm.options): the paper, except that a label the model
    # agrees with stays clean (refine.clean_if_agrees).
    "default": {key: OPTION_DEFAULTS[key] for key in PRESET_KEYS},
}

#: The preset keys that are :class:`~balancemix_timm.engine.BalanceMixEngine` keywords.
ENGINE_KEYS = tuple(key for key in PRESET_KEYS if option_spec(key).group == "engine")


def preset_options(name: str) -> dict[str, Any]:
    """A copy of the options of preset ``name``.

    Raises:
        ValueError: ``name`` is not a preset.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return dict(PRESETS[name])


def engine_preset(name: str) -> dict[str, Any]:
    """The engine keywords of preset ``name`` (e.g. ``BalanceMixEngine(labels, **engine_preset("paper"))``)."""
    return {k: v for k, v in preset_options(name).items() if k in ENGINE_KEYS}
