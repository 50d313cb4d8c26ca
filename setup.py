"""Packaging: metadata and options live in setup.cfg; this file only lists the packages.

The YAML recipes and Table 6 scripts have one source, ``configs/`` at the repository root (the
paths the docs use from a checkout). setup.cfg maps that folder to the package
``balancemix_timm.configs`` (``package_dir``) and ships ``*.yaml`` and ``ml_decoder/*.sh`` as its
package data, so a wheel holds them under ``balancemix_timm/configs/``, where
``balancemix_timm.config.resolve_recipe`` finds them by name; ``patches/`` (the ML-Decoder patch) is mapped and
shipped the same way. ``find_packages`` cannot see mapped folders (they have no ``__init__.py``),
hence the explicit names here.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"])
    + ["balancemix_timm.configs", "balancemix_timm.configs.ml_decoder", "balancemix_timm.patches"],
)
