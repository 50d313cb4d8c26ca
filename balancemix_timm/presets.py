"""Named sets of BalanceMix options: the paper's literal text and this project's default.

The paper fixes Eq. 1-10 but is silent on a few points where its literal form fails in practice
(``docs/design.md``, "Options beyond the paper's text"). Each such point is a named option whose
value in the literal paper is kept reachable as the preset ``"paper"``; the preset
``"default"`` holds the values the project trains with (the trainer's, the ML-Decoder plugin's
and the engine's defaults), each chosen by a paired 3-seed measurement on the four Table 5 label
settings (``docs/weak/results.md``).

A preset is applied first and explicit options win over it: ``balancemix-train preset=paper
clean_if_agrees=true`` is the paper with that one option changed.
"""

from __future__ import annotations

from typing import Any

from .options import OPTION_DEFAULTS, option_spec

__all__ = ["PRESETS", "PRESET_KEYS", "ENGINE_KEYS", "preset_options", "engine_preset"]

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
