"""The text files the package reads and writes: UTF-8, strict JSON, written whole or not at all.

Contracts every module of the package keeps by going through these functions:

* Every text file (configs, JSON, JSON lines, CSV, Markdown, logs) is read and written as
  UTF-8 (:data:`ENCODING`), whatever the locale's encoding (``LANG=C``, a Windows code page).
* JSON is strict (RFC 8259): a float that is not finite (an undefined figure such as the
  re-label accuracy before anything was re-labeled) is written as ``null``, and the encoder runs
  with ``allow_nan=False``, so no ``NaN`` / ``Infinity`` token reaches a file. Readers map
  ``null`` back to NaN where they compute with it (:func:`float_or_nan`).
* A written file appears whole or not at all: it is written to a temporary file in the same
  folder and renamed over the target; on failure the temporary file is removed.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ENCODING",
    "append_json_line",
    "atomic_write",
    "dumps_json",
    "float_or_nan",
    "json_safe",
    "read_json",
    "read_json_lines",
    "read_text",
    "write_json",
    "write_text",
]

#: The encoding of every text file the package reads or writes.
ENCODING = "utf-8"


def json_safe(obj: Any) -> Any:
    """``obj`` with every value JSON can hold as is: non-finite floats become ``None``.

    Mappings, lists and tuples are walked; NumPy / torch scalars and arrays (anything with
    ``tolist``) become Python numbers and lists; other real numbers become ``float``. Anything
    else is returned unchanged (the JSON encoder then rejects it).

    Args:
        obj: The value to write.

    Returns:
        A value made of dicts, lists, strings, finite numbers, booleans and ``None``.
    """
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return json_safe(float(obj))
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (:func:`json_safe` first, then ``allow_nan=False``).

    Args:
        obj: The value.
        **kwargs: Passed to :func:`json.dumps` (``indent``, ``sort_keys``, ``separators``...).

    Raises:
        TypeError: ``obj`` holds a value JSON cannot represent.
    """
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], *, binary: bool = False) -> None:
    """Write ``path`` whole or not at all: ``write(fh)`` fills a temporary file in the same
    folder (text files UTF-8, newlines untranslated), which is then renamed over ``path``.

    The parent folder is created. On any failure the temporary file is removed and ``path``
    keeps its previous content (if any).

    Args:
        path: The file.
        write: Writes the content to the open file object it is given.
        binary: Open the temporary file in binary mode instead of UTF-8 text.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if binary:
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=ENCODING, newline="")
        with fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(text))


def write_json(path: str | os.PathLike[str], obj: Any, **kwargs: Any) -> None:
    """Write ``obj`` as strict JSON (:func:`dumps_json`, ``kwargs`` passed on) to ``path``,
    UTF-8, atomically."""
    write_text(path, dumps_json(obj, **kwargs))


def append_json_line(path: str | os.PathLike[str], obj: Any) -> None:
    """Append ``obj`` as one strict JSON line to the JSON-lines file ``path`` (UTF-8)."""
    line = dumps_json(obj) + "\n"
    with Path(path).open("a", encoding=ENCODING) as fh:
        fh.write(line)


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of ``path``, decoded as UTF-8.

    Raises:
        ValueError: ``path`` is not valid UTF-8 (the message names the file and the byte).
    """
    try:
        return Path(path).read_text(encoding=ENCODING)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text file: {err}") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path`` (UTF-8; ``null`` stays ``None``; ``NaN`` tokens of files
    written by older versions are still read, as NaN).

    Raises:
        ValueError: ``path`` is not UTF-8 or not JSON (the message names the file).
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_json_lines(path: str | os.PathLike[str], *, skip_invalid: bool = False) -> list[Any]:
    """The values of the JSON-lines file ``path`` (blank lines skipped).

    Args:
        path: The file (UTF-8).
        skip_invalid: Skip lines that are not JSON (a line cut by an interrupted write)
            instead of raising.

    Raises:
        ValueError: A line is not JSON and ``skip_invalid`` is false (the message names the
            file and the line).
    """
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if not skip_invalid:
                raise ValueError(f"{path}, line {number}: not valid JSON: {err}") from None
    return rows


def float_or_nan(value: Any) -> float:
    """A figure read from a JSON file as a float: ``None`` (an undefined figure, ``null``) is NaN."""
    return math.nan if value is None else float(value)
