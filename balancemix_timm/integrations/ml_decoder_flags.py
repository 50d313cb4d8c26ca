"""The ``--balancemix`` / ``--bm-*`` flags of ML-Decoder's ``train.py``.

Every BalanceMix option of :class:`~balancemix_timm.options.BalanceMixOptions` becomes the flag
``--bm-<name>`` (``_`` written ``-``) with the option's default, allowed values and help; a
boolean option is ``--bm-<name>`` / ``--no-bm-<name>``. The flags declared here are the
plugin's own (loss scale, ASL gammas, devices, seed, checkpoints, logging, model building).

``--bm-preset NAME`` applies a named option set (:data:`balancemix_timm.options.PRESETS`) to every option
flag not given on the command line; a given flag wins, even when it repeats the default.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..options import (
    OPTION_DEFAULTS,
    PRESETS,
    BalanceMixOptions,
    OptionSpec,
    check_option,
    option_specs,
    preset_options,
)

__all__ = [
    "add_args", "option_values_from_args", "flag_defaults", "resolve_plugin_options", "MODEL_FLAGS", "ASL_DEFAULTS",
]

_logger = logging.getLogger("balancemix_timm.integrations.ml_decoder")

#: ML-Decoder's ASL setting in ``train.py`` (``AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05)``).
ASL_DEFAULTS = dict(gamma_neg=4.0, gamma_pos=0.0, clip=0.05)

#: Flags that act without --balancemix (model building); the others are ignored without it.
MODEL_FLAGS = ("bm_model", "bm_normalize")

_TYPES = {"int": int, "float": float, "str": str}


def _parse_number(spec: OptionSpec) -> Any:
    """An argparse ``type`` reading a number within the option's range (an error names the flag)."""
    base = _TYPES[spec.type]

    def parse(text: str) -> Any:
        try:
            value = base(text)
            check_option(spec.name, value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {spec.describe()}, got {text!r}") from None
        return value

    parse.__name__ = spec.type  # argparse names the type in its messages
    return parse


def _add_option(group: argparse._ArgumentGroup, spec: OptionSpec) -> None:
    """The option's flag, parsed to None when not given (so that a preset can fill it)."""
    flag = "--bm-" + spec.name.replace("_", "-")
    help_text = f"{spec.help} (default {spec.default}, or --bm-preset's value)"
    if spec.type == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        kind = _TYPES[spec.type] if spec.choices is not None or spec.type == "str" else _parse_number(spec)
        group.add_argument(flag, type=kind, choices=spec.choices, default=None, help=help_text)


def add_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add BalanceMix's flags to ML-Decoder's parser (all ``--balancemix`` / ``--bm-*``).

    Option defaults are the default preset's (the paper's Alg. 1 on COCO: alpha 4, eps 0.975,
    10 warm-up epochs, the minority sampler and full label management, plus the project's
    ``clean_if_agrees``); the loss is summed over the batch, as ML-Decoder's criterion.

    Args:
        parser: The script's ``argparse.ArgumentParser``.

    Returns:
        The argument group holding the new flags.

    Raises:
        ValueError: ``parser`` is not an ``argparse.ArgumentParser``.
    """
    if not isinstance(parser, argparse.ArgumentParser):
        raise ValueError(f"parser must be an argparse.ArgumentParser, got {type(parser).__name__}")
    g = parser.add_argument_group(
        "BalanceMix (balancemix-timm)",
        "Train with BalanceMix (Song et al., AAAI 2024) in place of ASL. Every --bm-* flag except "
        "--bm-model/--bm-normalize is ignored without --balancemix.",
    )
    g.add_argument("--balancemix", action="store_true",
                   help="train with BalanceMix (minority-augmented mixing + label-wise management)")
    g.add_argument("--bm-preset", choices=sorted(PRESETS), default=None,
                   help="named option set (balancemix_timm.options.PRESETS): paper (the literal paper) or "
                        "default; option flags not given take the preset's value")
    for spec in option_specs():
        _add_option(g, spec)
    g.add_argument("--bm-asl-gamma-neg", type=float, default=ASL_DEFAULTS["gamma_neg"],
                   help="ASL gamma- of --bm-base-loss asl")
    g.add_argument("--bm-asl-gamma-pos", type=float, default=ASL_DEFAULTS["gamma_pos"],
                   help="ASL gamma+ of --bm-base-loss asl")
    g.add_argument("--bm-asl-clip", type=float, default=ASL_DEFAULTS["clip"],
                   help="ASL probability margin of --bm-base-loss asl")
    g.add_argument("--bm-reduction", choices=("sum", "mean"), default="sum",
                   help="sum over the batch (default: ML-Decoder's criterion scale, which sets "
                        "the weight of Adam's coupled weight decay) or mean (Eq. 10 as written)")
    g.add_argument("--bm-gmm-device", default=None,
                   help="device of the GMM fits (default: where the engine's tables live)")
    g.add_argument("--bm-device", default="auto",
                   help="device of the engine's per-sample tables: auto (the training device, "
                        "from the first batch), cpu, or a device such as cuda:0")
    g.add_argument("--bm-seed", type=int, default=0,
                   help="seed of the samplers, the Mixup lambdas and the loader's worker seeds")
    g.add_argument("--bm-checkpoint-dir", default="models/",
                   help="folder of balancemix-last.pth (model, EMA, optimiser, schedule, scaler "
                        "and BalanceMix state, every epoch); '' disables. Like ML-Decoder's own "
                        "saves, nothing is written when the folder does not exist")
    g.add_argument("--bm-resume", default=None, metavar="PATH",
                   help="resume from a balancemix-last.pth")
    g.add_argument("--bm-log-level", default="INFO", help="level of the BalanceMix log lines")
    g.add_argument("--bm-model", default=None, metavar="NAME",
                   help="build the model with balancemix_timm (timm backbone + an ML-Decoder head "
                        "that runs on torch >= 2.1): a timm name (e.g. resnet101), an alias "
                        "(tresnet_l_mldecoder = timm tresnet_v2_l) or 'auto' (from --model-name); "
                        "--model-path must then be a local file or ''")
    g.add_argument("--bm-normalize", choices=("auto", "imagenet", "none"), default="auto",
                   help="input normalisation inside a --bm-model model: auto (ImageNet mean/std "
                        "for ResNets, none for TResNets), imagenet or none")
    return g


def flag_defaults() -> dict[str, Any]:
    """``{dest: default}`` of every flag of :func:`add_args` (None for the option flags: their
    values come from :func:`option_values_from_args`)."""
    p = argparse.ArgumentParser(add_help=False)
    add_args(p)
    return vars(p.parse_args([]))


def option_values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The BalanceMix options of parsed flags, ``--bm-preset`` applied.

    An option flag counts as given when its value is not None (:func:`add_args` parses an
    absent flag to None); a preset sets the options whose flag was not given, the option's
    default the rest.

    Returns:
        ``{option name: value}`` of every option; ``confidence_input`` only when its flag was
        given (or its value differs from the default), so that the plugin's fallback without an
        evaluation transform applies to the default.
    """
    preset = preset_options(args.bm_preset) if getattr(args, "bm_preset", None) is not None else {}
    out: dict[str, Any] = {}
    for spec in option_specs():
        value = getattr(args, "bm_" + spec.name, None)
        if value is not None:
            out[spec.name] = value
        elif spec.name in preset and (spec.name != "confidence_input" or preset[spec.name] != spec.default):
            out[spec.name] = preset[spec.name]
        elif spec.name != "confidence_input":
            out[spec.name] = spec.default
    return out


def resolve_plugin_options(
    options: BalanceMixOptions | None, values: Mapping[str, Any], gmm_options: Mapping[str, Any] | None,
    image_transform: Callable[[Any], Any] | None,
) -> BalanceMixOptions:
    """``options`` with ``values`` and ``gmm_options`` (LabelGMM names) over it; the default
    ``confidence_input`` falls back to the views, with a warning, without ``image_transform``."""
    values = dict(values)
    for key, value in dict(gmm_options or {}).items():
        name = "gmm_" + key
        if name not in OPTION_DEFAULTS:
            raise ValueError(f"gmm_options has unknown key {key!r}; allowed: "
                             f"{sorted(s.name[4:] for s in option_specs() if s.group == 'gmm')}")
        values.setdefault(name, value)
    base = BalanceMixOptions() if options is None else options
    if not isinstance(base, BalanceMixOptions):
        raise ValueError(f"options must be BalanceMixOptions, got {type(base).__name__}")
    if options is None and "confidence_input" not in values and base.confidence_input == "image" \
            and image_transform is None:
        _logger.warning(
            "no image_transform given: f(x) of Eq. 2 and 6 is the mean of the RandAugment "
            "views (confidence_input='views'); pass the evaluation transform as "
            "image_transform= for the un-augmented image"
        )
        values["confidence_input"] = "views"
    unknown = sorted(set(values) - set(OPTION_DEFAULTS))
    if unknown:
        raise TypeError(f"BalanceMixPlugin got unexpected keyword arguments {unknown}")
    for name, value in values.items():
        check_option(name, value)
    return base.replace(**values)
