"""The shipped ``balancemix-train`` recipes (YAML) and Table 6 scripts, found by name.

One source: the repository's ``configs/`` folder. A wheel ships it as package data under
``balancemix_timm/configs/`` (``setup.py`` maps the folder into the package); a checkout or an
editable install reads ``configs/`` at the repository root. :func:`recipe_dir` returns whichever
exists, so ``balancemix-train table6_tresnet_l_640`` and ``load_config("configs/demo_bce.yaml")``
work with or without a checkout.

Resolution rule (:func:`resolve_recipe`): an existing file is used as given; otherwise a name
``NAME``, ``NAME.yaml`` or ``configs/NAME.yaml`` is looked up among the shipped recipes; anything
else raises ``ValueError`` listing the recipe names.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["recipe_dir", "list_recipes", "list_scripts", "resolve_recipe"]

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
