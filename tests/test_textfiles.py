"""Text files of the package: UTF-8 whatever the locale, strict JSON, written whole.

Two kinds of check: the helpers of :mod:`balancemix_timm.textfiles` on small inputs, and a walk
over every module of the package (and of ``benchmarks/``) that fails on a text file opened
without an explicit encoding or on JSON written around the strict helper.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import balancemix_timm
from balancemix_timm.textfiles import (
    append_json_line,
    dumps_json,
    float_or_nan,
    read_json,
    read_json_lines,
    read_text,
    write_json,
    write_text,
)

PACKAGE_ROOT = Path(balancemix_timm.__file__).resolve().parent
SOURCES = sorted(PACKAGE_ROOT.rglob("*.py")) + sorted((PACKAGE_ROOT.parent / "benchmarks").glob("*.py"))

#: Calls that open a text stream unless given a binary mode; the position of their mode argument.
_OPENERS = {"open": 1, "fdopen": 1, "NamedTemporaryFile": 0, "TemporaryFile": 0, "SpooledTemporaryFile": 1,
            "TextIOWrapper": None, "FileHandler": 1, "read_text": None, "write_text": None}
#: Receivers whose ``open`` is not a text file (PIL images).
_BINARY_OPENERS = {"Image"}


def reject(token: str) -> None:
    raise ValueError(f"non-JSON constant {token}")


def _mode(call: ast.Call, position: int | None) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    if position is not None and len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return str(call.args[position].value)
    return None


def _text_io_without_encoding(path: Path, root: Path = PACKAGE_ROOT.parent) -> list[str]:
    """``file:line name(...)`` of each call in ``path`` that opens a text file without ``encoding=``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name not in _OPENERS or (name in ("read_text", "write_text") and isinstance(func, ast.Name)):
            continue  # a bare read_text / write_text is balancemix_timm.textfiles' (UTF-8)
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in _BINARY_OPENERS:
            continue
        if any(kw.arg == "encoding" for kw in node.keywords):
            continue
        position = _OPENERS[name]
        if isinstance(func, ast.Attribute) and name == "open" and not (
                isinstance(func.value, ast.Name) and func.value.id in ("io", "builtins")):
            position = 0  # Path.open(mode, ...)
        mode = _mode(node, position)
        if name in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile") and mode is None:
            continue  # their default mode is binary (w+b)
        if mode is not None and "b" in mode:
            continue
        found.append(f"{path.relative_to(root)}:{node.lineno} {name}(...) without encoding=")
    return found


def test_every_text_file_is_opened_with_an_explicit_encoding():
    found = [hit for path in SOURCES for hit in _text_io_without_encoding(path)]
    assert not found, "text files must be read and written as UTF-8 (balancemix_timm.textfiles):\n" + "\n".join(found)


def test_the_walk_finds_text_io_without_encoding(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from pathlib import Path\nopen('a')\nPath('b').read_text()\nPath('c').open('w')\n"
                   "open('d', 'rb')\nopen('e', encoding='utf-8')\nImage.open('f')\n", encoding="utf-8")
    hits = _text_io_without_encoding(src, root=tmp_path)
    assert [hit.split()[0] for hit in hits] == ["m.py:2", "m.py:3", "m.py:4"]


def test_json_is_written_through_the_strict_helper_only():
    found = []
    for path in SOURCES:
        if path.name == "textfiles.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            if (isinstance(func, ast.Attribute) and func.attr in ("dump", "dumps")
                    and isinstance(func.value, ast.Name) and func.value.id == "json"):
                found.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno}")
    assert not found, "write JSON with balancemix_timm.textfiles (strict, UTF-8): " + ", ".join(found)


def test_undefined_figures_are_written_as_null(tmp_path):
    value = dict(a=math.nan, b=[np.float32(1.5), torch.tensor(2.0), np.array([1.0, np.nan])], c=-math.inf,
                 d=np.int64(3), e=np.bool_(True), f="café")
    text = dumps_json(value)
    assert json.loads(text, parse_constant=reject) == dict(a=None, b=[1.5, 2.0, [1.0, None]], c=None, d=3, e=True,
                                                           f="café")
    write_json(tmp_path / "x.json", value, indent=1)
    append_json_line(tmp_path / "x.jsonl", value)
    append_json_line(tmp_path / "x.jsonl", {"relabel_accuracy": math.nan})
    assert read_json(tmp_path / "x.json")["a"] is None
    assert read_json_lines(tmp_path / "x.jsonl")[1] == {"relabel_accuracy": None}
    assert math.isnan(float_or_nan(None)) and float_or_nan(2) == 2.0
    with pytest.raises(TypeError):
        dumps_json({"a": object()})


def test_text_is_utf8_and_written_whole(tmp_path):
    path = tmp_path / "sub" / "notes.md"
    write_text(path, "行人, Straße\n")
    assert path.read_bytes() == "行人, Straße\n".encode()
    assert read_text(path) == "行人, Straße\n"

    def boom(fh):
        fh.write("partial")
        raise OSError("disk full")

    from balancemix_timm.textfiles import atomic_write

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, boom)
    assert read_text(path) == "行人, Straße\n"  # the previous content stays
    assert sorted(p.name for p in path.parent.iterdir()) == ["notes.md"]  # no temporary file left


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "cp1252.yaml"
    path.write_bytes("# caf\xe9\nepochs: 1\n".encode("cp1252"))
    with pytest.raises(ValueError, match="cp1252.yaml is not a UTF-8 text file"):
        read_text(path)
    from balancemix_timm.config import load_config

    with pytest.raises(ValueError, match="cp1252.yaml"):
        load_config(str(path))
