"""CI step: the wheel ships every recipe, Table 6 script and the ML-Decoder patch, and an install
of it alone resolves them (no checkout on the path).

Builds the wheel offline from a copy of the checkout (``pip wheel --no-deps --no-build-isolation
--no-index``), unpacks it and, from an empty folder with only the unpacked wheel on
``PYTHONPATH``, loads a recipe by name, lists the scripts and parses the patch.

Usage: ``python .ci/check_wheel.py`` (exit status 1 with the reason when a check fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check(work: Path) -> list[str]:
    """Problems found building and using the wheel inside ``work`` (empty: none)."""
    src = work / "src"  # a copy, so the build leaves the checkout alone
    src.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for folder in ("balancemix_timm", "configs", "patches"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = work / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=600,
    )
    if build.returncode:
        return [f"pip wheel failed: {build.stdout}{build.stderr}"]
    (wheel,) = out.glob("balancemix_timm-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(work / "site")
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    scripts = sorted((ROOT / "configs" / "ml_decoder").glob("*.sh"))
    expected = ([f"balancemix_timm/configs/{p.name}" for p in configs]
                + [f"balancemix_timm/configs/ml_decoder/{p.name}" for p in scripts]
                + [f"balancemix_timm/patches/{p.name}" for p in sorted((ROOT / "patches").glob("*.patch"))])
    problems = [f"the wheel lacks {name}" for name in expected if name not in names]
    empty = work / "empty"
    empty.mkdir()
    code = (
        "import balancemix_timm, balancemix_timm.config as r; from balancemix_timm.config import load_config; "
        "from balancemix_timm.integrations import patch_ml_decoder as pm; "
        "print(balancemix_timm.__file__); print(r.recipe_dir()); "
        "print(load_config('table6_tresnet_l_640').image_size); print(len(r.list_scripts())); "
        "print(len(pm.parse_patch(pm.patch_text())))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(work / "site")
    run = subprocess.run([sys.executable, "-c", code], cwd=empty, env=env, capture_output=True, text=True, timeout=300)
    if run.returncode:
        return problems + [f"the unpacked wheel does not import and resolve: {run.stderr}"]
    module, folder, size, n_scripts, hunks = run.stdout.split()
    site = work / "site"
    if not Path(module).is_relative_to(site):
        problems.append(f"balancemix_timm imported from {module}, not from the wheel")
    if Path(folder) != site / "balancemix_timm" / "configs":
        problems.append(f"recipes resolved to {folder}, not to the wheel's configs/")
    if (size, int(n_scripts)) != ("640", len(scripts)):
        problems.append(f"recipe image_size {size} (expected 640), {n_scripts} scripts (expected {len(scripts)})")
    if int(hunks) < 1:
        problems.append("the shipped ML-Decoder patch has no hunk")
    return problems


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        problems = check(Path(tmp))
    for line in problems:
        print(line)
    print(f"check_wheel: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
