"""Training configuration: one flat dataclass, loaded from YAML (a file or a shipped recipe's
name) plus ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .engine import ABLATIONS
from .options import PRESETS, BalanceMixOptions, check_option, check_options_together, option_specs, preset_options
from .textfiles import dumps_json
from .utils import resolve_device

__all__ = [
    "TrainConfig", "load_config", "parse_overrides", "read_yaml", "UniqueKeyLoader", "DuplicateKeyError",
    "RESUME_IGNORED_KEYS", "LOCATION_KEYS", "recipe_dir", "list_recipes", "list_scripts", "resolve_recipe",
]


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A YAML mapping gives the same key twice (PyYAML alone keeps the last value).

    Attributes:
        key: The repeated key.
        first_line, line: 1-based lines of its first and its repeated occurrence.
    """

    def __init__(self, key: Any, first_mark: yaml.Mark, mark: yaml.Mark) -> None:
        self.key = key
        self.first_line = first_mark.line + 1
        self.line = mark.line + 1
        super().__init__(
            problem=f"key {key!r} is given twice, on lines {self.first_line} and {self.line}; keep one of them",
            problem_mark=mark,
        )


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's ``SafeLoader`` that refuses a mapping key given twice (:class:`DuplicateKeyError`).

    Keys merged in with ``<<`` may be overridden by the mapping's own keys, as YAML specifies.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in first:
                raise DuplicateKeyError(key, first[key], key_node.start_mark)
            first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse the YAML file ``path`` with :class:`UniqueKeyLoader`.

    Args:
        path: The file.
        what: How messages name the file (``"config file"``: ``config file <path>``).

    Returns:
        The file's content (None for an empty file).

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not UTF-8 text, is not valid YAML (the message names the file,
            the line and the column, 1-based) or gives a mapping key twice (the message names
            the key and both lines).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text ({err})") from None
    except yaml.MarkedYAMLError as err:
        raise ValueError(f"{what} {path} {_yaml_error_text(err)}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None


def _yaml_error_text(err: yaml.MarkedYAMLError) -> str:
    """One line for a PyYAML parse error: where (1-based line, column) and what."""
    if isinstance(err, DuplicateKeyError):
        return f"gives key {err.key!r} twice, on lines {err.first_line} and {err.line}; keep one of them"
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
    text = f"is not valid YAML at {where}: {err.problem or err.context}"
    if err.context and err.problem:
        context = err.context
        if err.context_mark is not None and err.context_mark is not mark:
            context += f" that starts at line {err.context_mark.line + 1}, column {err.context_mark.column + 1}"
        text += f" ({context})"
    return text


def _with_balancemix_options(cls: type) -> type:
    """Insert one field per :class:`~balancemix_timm.options.BalanceMixOptions` option after
    ``preset`` (same name, type and default), before ``dataclass`` processes ``cls``."""
    annotations: dict[str, Any] = {}
    for name, kind in cls.__annotations__.items():
        annotations[name] = kind
        if name == "preset":
            for spec in option_specs():
                annotations[spec.name] = spec.type
                setattr(cls, spec.name, spec.default)
    cls.__annotations__ = annotations
    return cls


@dataclass
@_with_balancemix_options
class TrainConfig:
    """Every option of ``balancemix-train``; YAML files in ``configs/`` set a subset.

    Groups of fields: data, label noise, model, method (the BalanceMix options of
    :class:`~balancemix_timm.options.BalanceMixOptions`, inserted after ``preset``, and the
    baselines' ``method_options``), optimisation, evaluation and output. See
    ``docs/training.md`` for each field.
    """

    # --- data ---------------------------------------------------------------------------
    data: str = "demo"  # "demo" | "coco" | "voc"
    data_root: str = "demo_data"
    train_images: str | None = None  # default: <data_root>/train (coco) ; ignored for voc
    val_images: str | None = None
    train_ann: str | None = None  # default: <data_root>/annotations/instances_train.json
    val_ann: str | None = None
    voc_train_split: str = "trainval"
    voc_val_split: str = "test"
    voc_val_root: str | None = None
    # "ignore" (VOC protocol) | "negative" (difficult-only labels count as negatives)
    voc_difficult_eval: str = "ignore"
    include_empty: bool = False
    num_classes: int | None = None  # checked against the data when given
    image_size: int = 64
    randaugment: bool = True
    cutout: bool = True
    normalize: str | None = "auto"  # "auto" | "imagenet" | None
    workers: int = 0
    # demo data set (data == "demo")
    demo_num_train: int = 2000
    demo_num_val: int = 500
    demo_num_classes: int = 24
    demo_imbalance_ratio: float = 100.0
    demo_seed: int = 0
    demo_min_val_positives: int = 10  # floor on each class's validation positives (capped at 5% of demo_num_val)
    # --- label noise ----------------------------------------------------------------------
    noise: str = "clean"  # "clean" | "mislabel" | "random_flip" | "single_positive"
    noise_rate: float = 0.0
    noise_seed: int = 0
    # --- model ----------------------------------------------------------------------------
    model: str = "resnet10t"
    head: str = "linear"  # "linear" | "ml_decoder"
    pretrained_path: str | None = None
    drop_rate: float = 0.0
    # --- method ---------------------------------------------------------------------------
    method: str = "balancemix"  # "bce" | "balancemix" (+ baselines)
    ablation: str | None = None  # "mixup" | "minority" | "clean" | "relabel" | "full" (Table 5)
    preset: str | None = None  # "paper" | "default": named option sets (balancemix_timm.options.PRESETS)
    # Here the fields of balancemix_timm.options.BalanceMixOptions are inserted (alpha, eps, ...,
    # gmm_min_group_size): each BalanceMix option is declared once, there.
    method_options: dict[str, Any] = field(default_factory=dict)
    # --- optimisation ---------------------------------------------------------------------
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" | "adam" | "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # "cosine" | "onecycle" | "none"
    onecycle_pct_start: float = 0.2
    ema_decay: float = 0.0  # 0 disables; ML-Decoder uses 0.9997
    amp: bool | None = None  # None: on for CUDA only; true: float16 on CUDA, bfloat16 on CPU
    channels_last: bool = False  # model and inputs in NHWC (faster convolutions under CPU bfloat16)
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    # --- evaluation -----------------------------------------------------------------------
    # default: COCO's 10,000 / 1,000 scaled by N_train / 82,081 (metrics.scaled_group_thresholds)
    many_threshold: int | None = None
    few_threshold: int | None = None
    eval_batch_size: int = 128
    # --- output ---------------------------------------------------------------------------
    output_dir: str = "runs"
    run_name: str | None = None
    plots: bool = True
    # BalanceMix: label_diagnostics/epoch_XXX.npz at the end of warm-up and of training
    # (per-label GMM losses, p_G, states, given / clean labels, GMM thresholds; two files)
    label_diagnostics: bool = True
    progress: bool = True
    max_steps_per_epoch: int | None = None  # for smoke tests

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        # A Table 5 row is its switches (engine.ABLATIONS): set them here, the one place, so that
        # every configuration, however built, holds the values the run uses.
        if self.ablation in ABLATIONS:
            for key, value in ABLATIONS[self.ablation].items():
                setattr(self, key, value)

    def balancemix_options(self) -> BalanceMixOptions:
        """The BalanceMix options of this configuration."""
        return BalanceMixOptions(**{spec.name: getattr(self, spec.name) for spec in option_specs()})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option."""
        choices = {
            "data": ("demo", "coco", "voc"),
            "noise": ("clean", "mislabel", "random_flip", "single_positive"),
            "head": ("linear", "ml_decoder"),
            "optimizer": ("sgd", "adam", "adamw"),
            "scheduler": ("cosine", "onecycle", "none"),
            "preset": (None, *PRESETS),
            "voc_difficult_eval": ("ignore", "negative"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config {key}={getattr(self, key)!r} is not one of {allowed}")
        if self.ablation is not None and self.ablation not in ("mixup", "minority", "clean", "relabel", "full"):
            raise ValueError(f"config ablation={self.ablation!r} is not a Table 5 row; rows: {sorted(ABLATIONS)}")
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"config noise_rate must be in [0, 1], got {self.noise_rate}")
        for key in ("epochs", "batch_size", "image_size", "eval_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"config {key} must be >= 1, got {getattr(self, key)}")
        if int(self.batch_size) < 2:
            raise ValueError(
                f"config batch_size must be >= 2, got {self.batch_size}: a training batch of one "
                "sample breaks BatchNorm (one value per channel) and the per-label statistics"
            )
        if self.workers < 0:
            raise ValueError(f"config workers must be >= 0, got {self.workers}")
        if self.lr < 0:
            raise ValueError(f"config lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config ema_decay must be in [0, 1), got {self.ema_decay}")
        resolve_device(self.device, what="config device")
        for spec in option_specs():
            check_option(spec.name, getattr(self, spec.name), where="config ")
        check_options_together({spec.name: getattr(self, spec.name) for spec in option_specs()}, where="config ")


#: Keys only the BalanceMix method reads: they cannot make another method's run differ.
BALANCEMIX_ONLY_KEYS = frozenset({"preset", *PRESETS["default"]})

#: Keys that may change between a checkpoint and its resumed run.
RESUME_IGNORED_KEYS = frozenset(
    {"output_dir", "run_name", "plots", "label_diagnostics", "progress", "workers", "device", "eval_batch_size",
     # a preset is compared through the options it sets
     "preset"}
)

#: Keys naming files or folders: :func:`config_diff` compares them as resolved paths, so one
#: location spelled two ways (relative, absolute, through a link) is the same value.
LOCATION_KEYS = frozenset(
    {"data_root", "train_images", "val_images", "train_ann", "val_ann", "voc_val_root", "pretrained_path"}
)


def _coerce(key: str, value: str) -> Any:
    """Parse the override value of ``key`` with YAML rules (numbers, booleans, null, lists);
    text that is not YAML stays a string. A mapping that gives a key twice is refused."""
    try:
        return yaml.load(value, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as err:
        raise ValueError(f"override {key}={value!r} gives key {err.key!r} twice") from None
    except yaml.YAMLError:
        return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; ``method_options.key=value`` nests one level."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if "." in key:
            outer, inner = key.split(".", 1)
            out.setdefault(outer, {})[inner] = _coerce(key, value)
        else:
            out[key] = _coerce(key, value)
    return out


def _coerce_field(name: str, annotation: str, value: Any) -> Any:
    """``value`` as the type the field declares, or ``ValueError`` naming the field.

    YAML 1.1 reads ``1e-4`` (no dot) as a string, and a recipe may quote a number; numeric fields
    therefore accept numeric strings. Integers are accepted for float fields, integral floats for
    int fields; booleans are never numbers. Other fields are passed through unchanged.
    """
    kinds = {part.strip() for part in annotation.split("|")}
    if value is None and "None" in kinds:
        return None
    if "float" in kinds:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"config {name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config {name} must be a number, got {value!r}")
        return float(value)
    if "int" in kinds:
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                raise ValueError(f"config {name} must be an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config {name} must be an integer, got {value!r}")
        return value
    if kinds <= {"bool", "None"} and "bool" in kinds and not isinstance(value, bool):
        allowed = "true, false or null" if "None" in kinds else "true or false"
        raise ValueError(f"config {name} must be {allowed}, got {value!r}")
    return value


def _from_mapping(values: Mapping[str, Any]) -> TrainConfig:
    known = {f.name: f for f in fields(TrainConfig)}
    if values.get("preset") is not None:  # the preset first, explicit keys over it
        if values["preset"] not in PRESETS:
            raise ValueError(f"config preset={values['preset']!r} is not one of {sorted(PRESETS)}")
        values = {**preset_options(values["preset"]), **values}
    row = values.get("ablation")
    if row in ABLATIONS:  # the row sets its switches (TrainConfig.__post_init__); a contradicting key is an error
        for key, value in ABLATIONS[row].items():
            if key in values and values[key] != value:
                raise ValueError(
                    f"config ablation={row!r} sets {key}={value!r}, but the config also sets {key}={values[key]!r}"
                )
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys: {unknown}; known keys are listed in docs/training.md")
    values = {k: _coerce_field(k, str(known[k].type), v) for k, v in values.items()}
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """Load a YAML config file (or defaults) and apply overrides.

    Args:
        path: YAML file with a flat mapping of :class:`TrainConfig` fields, the name of a
            shipped recipe (``table6_tresnet_l_640``, ``configs/demo_bce.yaml``: see
            :func:`resolve_recipe`), or None.
        overrides: ``key=value`` strings or an already-parsed mapping.

    Returns:
        A validated :class:`TrainConfig`.

    Raises:
        ValueError: ``path`` is neither a file nor a shipped recipe (the message lists the
            recipe names), is not valid YAML or gives a key twice (:func:`read_yaml`), or a
            value is invalid.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = resolve_recipe(path)
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        values.update(loaded)
    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    for key, value in extra.items():
        if key == "method_options" or (isinstance(value, dict) and key in values and isinstance(values[key], dict)):
            merged = dict(values.get(key) or {})
            merged.update(value)
            values[key] = merged
        else:
            values[key] = value
    return _from_mapping(values)


def config_diff(
    a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = RESUME_IGNORED_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config dictionaries (JSON-normalised; the
    :data:`LOCATION_KEYS` compared as resolved paths)."""
    ignore = set(ignore)
    keys = (set(a) | set(b)) - ignore

    def norm(key: str, value: Any) -> str:
        if key in LOCATION_KEYS and isinstance(value, str) and value:
            value = str(Path(value).expanduser().resolve())
        return dumps_json(value, sort_keys=True, default=str)

    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if norm(k, a.get(k)) != norm(k, b.get(k))}


# ---------------------------------------------------------------------- shipped recipes
# The ``balancemix-train`` recipes (YAML) and Table 6 scripts have one source, the repository's
# ``configs/`` folder. A wheel ships it as package data under ``balancemix_timm/configs/``
# (``setup.py`` maps the folder into the package); a checkout or an editable install reads
# ``configs/`` at the repository root. :func:`recipe_dir` returns whichever exists, so
# ``balancemix-train table6_tresnet_l_640`` and ``load_config("configs/demo_bce.yaml")`` work with
# or without a checkout. An existing file is used as given; otherwise a name ``NAME``,
# ``NAME.yaml`` or ``configs/NAME.yaml`` is looked up among the shipped recipes
# (:func:`resolve_recipe`).

_PACKAGED = Path(__file__).resolve().parent / "configs"
_CHECKOUT = Path(__file__).resolve().parents[1] / "configs"
_SUFFIXES = (".yaml", ".yml")


def recipe_dir() -> Path:
    """The folder of the shipped recipes: the package's ``configs/`` when installed from a
    wheel, else the checkout's ``configs/``.

    Raises:
        FileNotFoundError: Neither folder exists (a broken installation).
    """
    for folder in (_PACKAGED, _CHECKOUT):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    raise FileNotFoundError(
        f"no shipped recipes: neither {_PACKAGED} nor {_CHECKOUT} holds configs/*.yaml; "
        "reinstall balancemix-timm"
    )


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``configs/*.yaml`` without the suffix), sorted."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def list_scripts() -> list[Path]:
    """The shipped Table 6 scripts for the patched ML-Decoder (``configs/ml_decoder/*.sh``)."""
    return sorted((recipe_dir() / "ml_decoder").glob("*.sh"))


def resolve_recipe(config: str | os.PathLike[str]) -> Path:
    """The YAML file meant by ``config``: a path, or the name of a shipped recipe.

    Args:
        config: An existing file (used as given), or ``NAME`` / ``NAME.yaml`` /
            ``configs/NAME.yaml`` of a shipped recipe (looked up when no such file exists in the
            working folder).

    Returns:
        The file's path.

    Raises:
        ValueError: ``config`` is neither an existing file nor a shipped recipe; the message
            lists the recipe names.
    """
    path = Path(config)
    if path.is_file():
        return path
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    parent = path.parent.as_posix()
    if name and parent in (".", "configs"):
        shipped = recipe_dir() / f"{name}.yaml"
        if shipped.is_file():
            return shipped
    raise ValueError(
        f"config {str(config)!r}: no such file, and not a shipped recipe; give a YAML file or one "
        f"of the recipe names {list_recipes()} (shipped in {recipe_dir()})"
    )
