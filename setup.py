"""Packaging: metadata and options live in setup.cfg; this file only maps the recipes.

The YAML recipes and Table 6 scripts have one source, ``configs/`` at the repository root (the
paths the docs use from a checkout). They ship inside the wheel as the package data folder
``balancemix_timm/configs/`` (``*.yaml`` and ``ml_decoder/*.sh``), where
``balancemix_timm.recipes`` finds them by name.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"])
    + ["balancemix_timm.configs", "balancemix_timm.configs.ml_decoder"],
    package_dir={"balancemix_timm.configs": "configs"},
    package_data={
        "balancemix_timm": ["integrations/*.patch"],
        "balancemix_timm.configs": ["*.yaml"],
        "balancemix_timm.configs.ml_decoder": ["*.sh"],
    },
)
