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


def test_numeric_fields_read_as_numbers_from_yaml_and_overrides(tmp_path):
    # YAML 1.1 reads "1e-4" (no dot) as a string; numeric fields must still come out numeric.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight_decay: 1e-4\nlr: '3e-3'\nepochs: '4'\nbatch_size: 8.0\n")
    cfg = load_config(recipe, ["eps=5e-1", "many_threshold=1e3", "grad_clip=null"])
    assert cfg.weight_decay == 1e-4 and isinstance(cfg.weight_decay, float)
    assert cfg.lr == 3e-3 and cfg.eps == 0.5
    assert cfg.epochs == 4 and isinstance(cfg.epochs, int)
    assert cfg.batch_size == 8 and isinstance(cfg.batch_size, int)
    assert cfg.many_threshold == 1000 and isinstance(cfg.many_threshold, int)
    assert cfg.grad_clip is None


@pytest.mark.parametrize("override, field", [
    ("lr=fast", "lr"), ("epochs=2.5", "epochs"), ("batch_size=true", "batch_size"),
    ("weight_decay=[1]", "weight_decay"), ("amp=maybe", "amp"), ("noise_rate=null", "noise_rate"),
])
def test_non_numeric_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ValueError, match=f"config {field} must be"):
        load_config(None, [override])
