"""Every shipped balancemix-train config loads, and the demo YAMLs match the demo command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from balancemix_timm.benchmark import plan_runs, run_config
from balancemix_timm.config import load_config, parse_overrides
from balancemix_timm.demo import DEMO_BUDGET

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.epochs >= 1


@pytest.mark.parametrize("name, method", [("demo_balancemix.yaml", "balancemix"), ("demo_bce.yaml", "bce")])
def test_demo_yaml_matches_demo_command(name, method, tmp_path):
    """The shipped demo recipes train what ``make demo`` trains (paths and the backbone's file aside)."""
    values = yaml.safe_load((CONFIGS[0].parent / name).read_text())
    assert values["method"] == method and values["pretrained_path"] == "offline"
    spec = next(s for s in plan_runs(DEMO_BUDGET) if s.method == method)
    expected = run_config(spec, DEMO_BUDGET, tmp_path)
    for key in set(expected) - {"data", "data_root", "output_dir", "run_name", "pretrained_path", "workers",
                                "ablation", "device", "progress", "plots"}:
        assert load_config(None, values).to_dict()[key] == load_config(None, expected).to_dict()[key], key


def test_overrides_are_typed_and_nested():
    out = parse_overrides(["epochs=3", "amp=false", "pretrained_path=null", "method_options.forget_rate=0.2",
                           "--lr=0.1"])
    assert out == {"epochs": 3, "amp": False, "pretrained_path": None, "method_options": {"forget_rate": 0.2},
                   "lr": 0.1}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])


def test_numeric_fields_read_as_numbers_from_yaml_and_overrides(tmp_path):
    # YAML 1.1 reads "1e-4" (no dot) as a string; numeric fields must still come out numeric.
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight_decay: 1e-4\nlr: '3e-3'\nepochs: '4'\nbatch_size: 8.0\n")
    cfg = load_config(recipe, ["eps=6e-1", "many_threshold=1e3", "grad_clip=null"])
    assert cfg.weight_decay == 1e-4 and isinstance(cfg.weight_decay, float)
    assert cfg.lr == 3e-3 and cfg.eps == 0.6
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


# --------------------------------------------------------------------------------------------
# Recipes by name (the wheel that ships them: .ci/check_wheel.py)
# --------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "configs" / "ml_decoder").glob("*.sh"))


def test_recipe_resolves_by_name_from_an_empty_working_folder(tmp_path, monkeypatch):
    from balancemix_timm.config import list_recipes, resolve_recipe

    monkeypatch.chdir(tmp_path)
    assert list_recipes() == sorted(p.stem for p in CONFIGS)
    for name in ("table6_tresnet_l_640", "table6_tresnet_l_640.yaml", "configs/table6_tresnet_l_640.yaml"):
        assert resolve_recipe(name).read_text() == (REPO / "configs" / "table6_tresnet_l_640.yaml").read_text()
    assert load_config("table6_tresnet_l_640").image_size == 640
    # a file in the working folder wins over a shipped recipe of the same name
    (tmp_path / "demo_bce.yaml").write_text("epochs: 3\n")
    assert load_config("demo_bce.yaml").epochs == 3
    with pytest.raises(ValueError, match=r"config 'table7_nope'.*table6_tresnet_l_640"):
        load_config("table7_nope")
    with pytest.raises(ValueError, match=r"config 'elsewhere/demo_bce.yaml'"):
        load_config("elsewhere/demo_bce.yaml")


def test_train_cli_lists_recipes(capsys):
    from balancemix_timm.trainer import main

    assert main(["--list-recipes"]) == 0
    out = capsys.readouterr().out
    for path in CONFIGS:
        assert f"  {path.stem}\n" in out
    for script in SCRIPTS:
        assert script.name in out


def test_an_ablation_row_sets_its_switches_and_refuses_a_contradicting_key():
    cfg = load_config(None, ["ablation=mixup"])
    assert (cfg.minority_sampler, cfg.label_management) == (False, "none")
    assert load_config(None, ["ablation=clean", "label_management=clean"]).label_management == "clean"
    with pytest.raises(ValueError, match="ablation='mixup' sets label_management='none', but the config also sets"):
        load_config(None, ["ablation=mixup", "label_management=full"])
    with pytest.raises(ValueError, match="is not a Table 5 row; rows:"):
        load_config(None, ["ablation=half"])
    with pytest.raises(ValueError, match="config preset='Paper' is not one of"):
        load_config(None, ["preset=Paper"])


def test_cli_reports_a_bad_config_value_in_one_line(capsys):
    from balancemix_timm.trainer import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eps=0.3"])
    assert exit_info.value.code == 2
    assert "error: config eps must be a number in (0.5, 1], got 0.3" in capsys.readouterr().err


@pytest.mark.parametrize("text, line, column, problem", [
    ("data: demo\nepochs: 1\n\tbatch_size: 16\n", 3, 1, "found character '\\t' that cannot start any token"),
    ("data: demo\nlr: [0.1\n", 3, 1, "expected ',' or ']'"),
    ("data: demo\nmethod_options: {a: 1\n", 3, 1, "expected ',' or '}'"),
    ("data: 'demo\n", 2, 1, "found unexpected end of stream"),
])
def test_a_config_file_that_is_not_yaml_is_refused_naming_file_line_and_column(tmp_path, capsys, text, line,
                                                                                column, problem):
    from balancemix_timm.trainer import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config file {path} is not valid YAML at line {line}, column {column}: ")
    assert problem in message and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: config file {path} is not valid YAML at line {line}" in err and "Traceback" not in err


@pytest.mark.parametrize("text, key, lines", [
    ("data: demo\nlr: 0.01\nepochs: 2\n# later\nlr: 0.5\n", "lr", (2, 5)),
    ("method_options:\n  gamma: 1\n  gamma: 2\n", "gamma", (2, 3)),
    ("epochs: 2\n'epochs': 3\n", "epochs", (1, 2)),
])
def test_a_config_file_that_gives_a_key_twice_is_refused_naming_key_file_and_lines(tmp_path, text, key, lines):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=(
            rf"^config file {re.escape(str(path))} gives key '{key}' twice, on lines {lines[0]} and {lines[1]}")):
        load_config(path)


def test_merge_keys_may_be_overridden_and_override_values_refuse_a_key_twice(tmp_path):
    from balancemix_timm.config import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 0.1, epochs: 2}\nrun:\n  <<: *b\n  lr: 0.5\n")
    assert read_yaml(path)["run"] == {"lr": 0.5, "epochs": 2}
    with pytest.raises(ValueError, match=r"override method_options=.* gives key 'a' twice"):
        parse_overrides(["method_options={a: 1, a: 2}"])


def test_benchmark_runner_counts_a_run_with_an_unreadable_config_as_not_finished(tmp_path, caplog):
    from balancemix_timm.benchmark.runner import _saved_config

    (tmp_path / "config.yaml").write_text("lr: 0.1\nlr: 0.2\n")
    with caplog.at_level("WARNING"):
        assert _saved_config(tmp_path) is None
    assert "gives key 'lr' twice" in caplog.text and str(tmp_path / "config.yaml") in caplog.text


@pytest.mark.parametrize("gpus, device, problem", [
    (0, "cuda", "this machine has no cuda device"),
    (0, "cuda:0", "this machine has no cuda device"),
    (1, "cuda:3", "this machine has 1 cuda device(s), cuda:0 to cuda:0"),
    (2, "cuda:2", "this machine has 2 cuda device(s), cuda:0 to cuda:1"),
    (1, "gpu", "is not a device name"),
    (0, "cuda:x", "is not a device name"),
    (1, "meta", "meta devices are not supported"),
])
def test_a_device_this_machine_lacks_is_refused_at_config_time(monkeypatch, capsys, gpus, device, problem):
    import torch

    from balancemix_timm.trainer import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    available = ["auto", "cpu"] + (["cuda", *(f"cuda:{i}" for i in range(gpus))] if gpus else [])
    with pytest.raises(ValueError) as info:
        load_config(None, [f"device={device}"])
    assert str(info.value).startswith(f"config device={device!r}")
    assert problem in str(info.value) and str(info.value).endswith(f"available: {available}")
    with pytest.raises(SystemExit) as exit_info:   # before any data set or model is built
        main([f"device={device}", "data=coco", "data_root=/nonexistent"])
    assert exit_info.value.code == 2
    assert f"error: config device={device!r}" in capsys.readouterr().err


def test_devices_this_machine_has_are_accepted(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:1"):
        assert load_config(None, [f"device={device}"]).device == device
