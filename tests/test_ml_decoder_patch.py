"""ML-Decoder integration: the train.py patch, its command, and the patched script of a checkout."""

from __future__ import annotations

import configparser
import difflib
import hashlib
import importlib
import importlib.util
import os
import py_compile
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from balancemix_timm.integrations import patch_ml_decoder as pm
from tests._ml_decoder import (
    N_TRAIN,
    REPO,
    STUB_COCO,
    _checkout,
    needs_checkout,
)


# ============================================================================ patch files
def test_patch_file_is_shipped_and_identical():
    shipped = pm.patch_text()
    assert shipped == (REPO / "patches" / "ml_decoder_train.patch").read_text()
    hunks = pm.parse_patch(shipped)
    assert (sum(h.added for h in hunks), sum(h.removed for h in hunks)) == (25, 5)
    # --bm-confidence-input image reads the un-augmented image through ML-Decoder's validation transform.
    assert "balancemix.setup(args, train_dataset, image_transform=val_dataset.transform)" in shipped
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    line = next(s for s in scripts.splitlines() if s.strip().startswith("balancemix-patch-ml-decoder"))
    module, func = line.split("=")[1].strip().split(":")
    assert getattr(importlib.import_module(module), func) is pm.main
    assert cfg["options.package_data"]["balancemix_timm.patches"].strip() == "*.patch"


def test_apply_hunks_against_difflib():
    rng = np.random.default_rng(0)
    old = [f"line {i}" for i in range(60)]
    new = list(old)
    new[0:0] = ["first"]
    new[10] = "changed 9"
    del new[30:33]
    new[40:40] = ["ins a", "ins b"]
    new += ["last"]
    diff = "\n".join(difflib.unified_diff(old, new, "a/f", "b/f", lineterm=""))
    hunks = pm.parse_patch(diff)
    assert pm.apply_hunks(old, hunks) == new
    assert pm.apply_hunks(new, hunks, reverse=True) == old
    shifted = ["extra"] + old
    with pytest.raises(pm.PatchError):
        pm.apply_hunks(shifted[: int(rng.integers(40, 50))], hunks)


def test_command_refuses_other_files_and_changes_nothing(tmp_path, capsys):
    target = tmp_path / "train.py"
    target.write_text("print('not ML-Decoder')\n")
    before = target.read_bytes()
    assert pm.main([str(tmp_path)]) == 1
    assert "Nothing was changed" in capsys.readouterr().err
    assert target.read_bytes() == before
    target.write_text("import balancemix\n")
    assert pm.main([str(target)]) == 1
    assert "already holds BalanceMix lines" in capsys.readouterr().err
    assert pm.main([str(tmp_path / "nowhere")]) == 1
    assert pm.main(["--print-patch"]) == 0 and capsys.readouterr().out == pm.patch_text()
    with pytest.raises(SystemExit):
        pm.main([])


# ============================================================================ with a checkout


def _copy_checkout(dst: Path) -> Path:
    src = _checkout()
    shutil.copytree(src / "src_files", dst / "src_files")
    shutil.copy2(src / "train.py", dst / "train.py")
    stubs = dst / "stubs"
    (stubs / "pycocotools").mkdir(parents=True)
    (stubs / "pycocotools" / "__init__.py").write_text("")
    (stubs / "pycocotools" / "coco.py").write_text(STUB_COCO)
    (stubs / "randaugment.py").write_text("class RandAugment:\n    def __call__(self, img):\n        return img\n")
    if importlib.util.find_spec("pandas") is None:
        (stubs / "pandas.py").write_text("")
    return dst


def _env(stubs: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), str(REPO), env.get("PYTHONPATH", "")])
    env["PYTHONWARNINGS"] = "ignore"
    return env


@needs_checkout
def test_checkout_patch_apply_compile_help_refuse(tmp_path, capsys):
    work = _copy_checkout(tmp_path)
    original = (work / "train.py").read_bytes()
    assert hashlib.sha256(original).hexdigest() == pm.ORIGINAL_SHA256
    assert pm.main([str(work)]) == 0
    out = capsys.readouterr().out
    assert "was patched" in out and "total: +25 -5 lines in 7 hunks" in out
    patched = (work / "train.py").read_bytes()
    if shutil.which("patch"):  # the same result as `patch -p1` from the checkout's root
        ref = tmp_path / "ref"
        ref.mkdir()
        (ref / "train.py").write_bytes(original)
        subprocess.run(["patch", "-s", "-p1", "-i", str(REPO / "patches" / "ml_decoder_train.patch")], cwd=ref,
                       check=True)
        assert (ref / "train.py").read_bytes() == patched
    assert pm.main([str(work)]) == 0 and "already patched" in capsys.readouterr().out
    assert (work / "train.py").read_bytes() == patched
    py_compile.compile(str(work / "train.py"), doraise=True)
    help_run = subprocess.run([sys.executable, "train.py", "--help"], cwd=work, env=_env(work / "stubs"),
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr[-2000:]
    for flag in ("--balancemix", "--bm-alpha", "--bm-eps", "--bm-warmup-epochs", "--bm-minority-sampler",
                 "--bm-label-management", "--bm-base-loss", "--bm-reduction", "--bm-gmm-tol", "--bm-label-source",
                 "--bm-seed", "--bm-model", "--bm-confidence-input", "--bm-clean-if-agrees", "--model-name",
                 "--batch-size"):
        assert flag in help_run.stdout
    # A train.py of another version: refused, unchanged.
    other = tmp_path / "other"
    other.mkdir()
    edited = original.replace(b"Epochs = 40", b"Epochs = 41")
    (other / "train.py").write_bytes(edited)
    assert pm.main([str(other)]) == 1
    assert "Nothing was changed" in capsys.readouterr().err
    assert (other / "train.py").read_bytes() == edited
    assert pm.main(["--revert", str(work)]) == 0
    assert (work / "train.py").read_bytes() == original
    # CRLF checkouts (git autocrlf) are recognised and keep their line endings.
    crlf = tmp_path / "crlf"
    crlf.mkdir()
    (crlf / "train.py").write_bytes(original.replace(b"\n", b"\r\n"))
    assert pm.main([str(crlf)]) == 0
    assert (crlf / "train.py").read_bytes() == patched.replace(b"\n", b"\r\n")


RUNNER = textwrap.dedent('''
    import sys, torch
    torch.Tensor.cuda = lambda self, *a, **k: self        # CPU stand-ins for .cuda()
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.set_num_threads(2)
    source = open("train.py").read().replace("Epochs = 40", "Epochs = 2")  # in memory only
    sys.argv = ["train.py"] + sys.argv[1:]
    exec(compile(source, "train.py", "exec"), {"__name__": "__main__", "__file__": "train.py"})
''')


@needs_checkout
def test_checkout_patched_script_trains_on_cpu(tmp_path, demo):
    work = _copy_checkout(tmp_path)
    assert pm.main([str(work)]) == 0
    data = work / "data"
    (data / "annotations").mkdir(parents=True)
    shutil.copytree(demo.train_images, data / "train2014")
    shutil.copytree(demo.val_images, data / "val2014")
    shutil.copy(demo.train_annotations, data / "annotations" / "instances_train2014.json")
    shutil.copy(demo.val_annotations, data / "annotations" / "instances_val2014.json")
    (work / "models").mkdir()
    (work / "run.py").write_text(RUNNER)
    common = ["--data", "data", "--bm-model", "resnet10t", "--model-path", "", "--image-size", "32",
              "--batch-size", "16", "-j", "0", "--decoder-embedding", "32"]

    def run(extra):
        r = subprocess.run([sys.executable, "run.py", *common, *extra], cwd=work, env=_env(work / "stubs"),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        return r.stdout + r.stderr

    plain = run([])
    assert "[balancemix]" not in plain and plain.count("highest_mAP") == 2
    assert not (work / "models" / "balancemix-last.pth").exists()
    mixed = run(["--balancemix", "--bm-warmup-epochs", "1"])
    assert mixed.count("highest_mAP") == 2 and "[balancemix]" in mixed
    ckpt = torch.load(work / "models" / "balancemix-last.pth", weights_only=True)
    engine = ckpt["balancemix"]["engine"]
    assert ckpt["epoch"] == 2 and engine["seen"].all() and engine["applied"]
    assert [h["epoch"] for h in engine["history"]] == [0, 1]
    assert ckpt["balancemix"]["engine"]["given_labels"].shape == (N_TRAIN, 80)
    # f(x) of the un-augmented image: the patched script hands the plugin its validation transform.
    run(["--balancemix", "--bm-warmup-epochs", "1", "--bm-confidence-input", "image", "--bm-clean-if-agrees",
         "--bm-record-momentum", "0.5"])
    ckpt = torch.load(work / "models" / "balancemix-last.pth", weights_only=True)
    engine = ckpt["balancemix"]["engine"]
    assert ckpt["balancemix"]["config"]["confidence_input"] == "image"
    assert engine["config"]["clean_if_agrees"] and engine["config"]["record_momentum"] == 0.5
    assert engine["seen"].all() and not torch.allclose(engine["probs"], engine["view_mean"])
