"""Every shipped balancemix-train config loads, and the demo YAMLs match the demo command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balancemix_timm.config import load_config, parse_overrides
from balancemix_timm.demo import DEMO_SETTINGS

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.epochs >= 1


@pytest.mark.parametrize("name, method", [("demo_balancemix.yaml", "balancemix"), ("demo_bce.yaml", "bce")])
def test_demo_yaml_matches_demo_command(name, method):
    values = yaml.safe_load((CONFIGS[0].parent / name).read_text())
    assert values["method"] == method
    for key, value in DEMO_SETTINGS.items():
        assert values[key] == value, key


def test_overrides_are_typed_and_nested():
    out = parse_overrides(["epochs=3", "amp=false", "pretrained_path=null", "method_options.forget_rate=0.2", "--lr=0.1"])
    assert out == {"epochs": 3, "amp": False, "pretrained_path": None, "method_options": {"forget_rate": 0.2}, "lr": 0.1}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])
