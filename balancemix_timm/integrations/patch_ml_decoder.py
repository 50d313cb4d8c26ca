"""``balancemix-patch-ml-decoder PATH``: apply BalanceMix's patch to ML-Decoder's ``train.py``.

The patch (the repository's ``patches/ml_decoder_train.patch``, which a wheel ships as
``balancemix_timm/patches/ml_decoder_train.patch``) is a unified diff against ``train.py`` of
Alibaba-MIIL/ML_Decoder at commit 8a9e984. The command

1. checks that the target is exactly that file (SHA-256 of its text, line endings
   normalised), or exactly that file already patched (then it says so and changes nothing);
2. applies the hunks strictly at their recorded positions (no fuzz), keeping the file's line
   endings and permissions, and writes it atomically;
3. prints what changed, hunk by hunk.

Any other file is refused with a message and left unchanged. ``--revert`` undoes the patch,
``--dry-run`` only reports. The same file also applies with ``patch -p1`` from the
ML-Decoder root.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ML_DECODER_COMMIT",
    "ORIGINAL_SHA256",
    "PATCH_NAME",
    "Hunk",
    "PatchError",
    "PatchResult",
    "patch_text",
    "parse_patch",
    "apply_hunks",
    "file_state",
    "patch_file",
    "main",
]

#: The ML-Decoder commit the patch is written against.
ML_DECODER_COMMIT = "8a9e984"
#: SHA-256 of ``train.py`` at that commit (LF line endings).
ORIGINAL_SHA256 = "2b1bfd2242e4a242cfccae86c68b93665a6a9b72151c91f8b4e112d69104e23f"
#: File name of the patch (in ``patches/``).
PATCH_NAME = "ml_decoder_train.patch"
#: Where the patch is: shipped in a wheel (``setup.cfg`` maps ``patches/`` into the package), or
#: in the checkout of an editable install.
_PACKAGED = Path(__file__).resolve().parents[1] / "patches" / PATCH_NAME
_CHECKOUT = Path(__file__).resolve().parents[2] / "patches" / PATCH_NAME

_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(ValueError):
    """The target does not match the patch (raised before anything is written)."""


@dataclass
class Hunk:
    """One hunk of a unified diff.

    Attributes:
        old_start: 1-based first line in the original file.
        new_start: 1-based first line in the patched file.
        lines: The hunk body: ``(tag, text)`` with tag ``" "``, ``"-"`` or ``"+"`` and the
            text without its newline.
    """

    old_start: int
    new_start: int
    lines: list[tuple[str, str]] = field(default_factory=list)

    def side(self, tags: str) -> list[str]:
        """The text of the lines whose tag is in ``tags`` (``" -"``: old side, ``" +"``: new)."""
        return [text for tag, text in self.lines if tag in tags]

    @property
    def added(self) -> int:
        """Number of ``+`` lines."""
        return sum(tag == "+" for tag, _ in self.lines)

    @property
    def removed(self) -> int:
        """Number of ``-`` lines."""
        return sum(tag == "-" for tag, _ in self.lines)


@dataclass
class PatchResult:
    """What :func:`patch_file` found and did.

    Attributes:
        path: The target file.
        state: ``"original"``, ``"patched"`` or ``"unknown"`` before the call.
        changed: Whether the file was (or, with ``dry_run``, would be) written.
        hunks: The hunks of the patch.
        message: A one-line explanation for the user.
    """

    path: Path
    state: str
    changed: bool
    hunks: list[Hunk]
    message: str


def patch_text() -> str:
    """The patch: the wheel's ``balancemix_timm/patches/`` copy, else the checkout's ``patches/``.

    Raises:
        FileNotFoundError: neither exists (a broken install).
    """
    for path in (_PACKAGED, _CHECKOUT):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"the ML-Decoder patch is missing: neither {_PACKAGED} nor {_CHECKOUT} exists; reinstall")


def parse_patch(text: str) -> list[Hunk]:
    """Parse a single-file unified diff into hunks (headers ``---``/``+++`` are skipped).

    Raises:
        ValueError: on a malformed diff, or hunk line counts that disagree with the headers.
    """
    hunks: list[Hunk] = []
    counts: list[tuple[int, int]] = []
    for raw in text.splitlines():
        if raw.startswith(("--- ", "+++ ")) and (not hunks or _hunk_complete(hunks[-1], counts[-1])):
            continue
        m = _HUNK_RE.match(raw)
        if m:
            old_n = 1 if m.group(2) is None else int(m.group(2))
            new_n = 1 if m.group(4) is None else int(m.group(4))
            hunks.append(Hunk(int(m.group(1)), int(m.group(3))))
            counts.append((old_n, new_n))
            continue
        if not hunks:
            continue
        if raw.startswith("\\"):  # "\ No newline at end of file"
            continue
        tag, body = (raw[:1] or " "), raw[1:]
        if tag not in " +-":
            raise ValueError(f"patch: unexpected line in hunk {len(hunks)}: {raw!r}")
        hunks[-1].lines.append((tag, body))
    if not hunks:
        raise ValueError("patch: no hunk found")
    for i, (hunk, (old_n, new_n)) in enumerate(zip(hunks, counts), 1):
        if len(hunk.side(" -")) != old_n or len(hunk.side(" +")) != new_n:
            raise ValueError(f"patch: hunk {i} line counts disagree with its header")
    return hunks


def _hunk_complete(hunk: Hunk, count: tuple[int, int]) -> bool:
    return len(hunk.side(" -")) >= count[0] and len(hunk.side(" +")) >= count[1]


def apply_hunks(lines: Sequence[str], hunks: Sequence[Hunk], *, reverse: bool = False) -> list[str]:
    """Apply ``hunks`` to ``lines`` (no newlines), strictly at their recorded positions.

    Args:
        lines: The file's lines.
        hunks: From :func:`parse_patch`.
        reverse: Undo the patch (the new side is matched and replaced by the old side).

    Returns:
        The new lines.

    Raises:
        PatchError: if a hunk's context or removed lines are not found where recorded.
    """
    out: list[str] = []
    pos = 0  # next unread index in ``lines``
    for i, hunk in enumerate(hunks, 1):
        start = (hunk.new_start if reverse else hunk.old_start) - 1
        expect = hunk.side(" +" if reverse else " -")
        repl = hunk.side(" -" if reverse else " +")
        if not expect:  # pure insertion: the header names the line after which to insert
            start += 1
        if start < pos or lines[start : start + len(expect)] != expect:
            raise PatchError(f"hunk {i} does not match at line {start + 1}")
        out.extend(lines[pos:start])
        out.extend(repl)
        pos = start + len(expect)
    out.extend(lines[pos:])
    return out


def _sha256(lines: Sequence[str], trailing_newline: bool) -> str:
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(path: Path) -> tuple[list[str], str, bool]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PatchError(f"{path} is not UTF-8 text ({err})") from None
    newline = "\r\n" if "\r\n" in text else "\n"
    text = text.replace("\r\n", "\n")
    trailing = text.endswith("\n")
    return (text[:-1] if trailing else text).split("\n"), newline, trailing


def file_state(path: str | os.PathLike[str], hunks: Sequence[Hunk] | None = None) -> str:
    """``"original"``, ``"patched"`` or ``"unknown"``: what ``path`` is with respect to the patch."""
    hunks = parse_patch(patch_text()) if hunks is None else hunks
    lines, _, trailing = _read(Path(path))
    if _sha256(lines, trailing) == ORIGINAL_SHA256:
        return "original"
    try:
        undone = apply_hunks(lines, hunks, reverse=True)
    except PatchError:
        return "unknown"
    return "patched" if _sha256(undone, trailing) == ORIGINAL_SHA256 else "unknown"


def _write(path: Path, lines: Sequence[str], newline: str, trailing: bool) -> None:
    data = (newline.join(lines) + (newline if trailing else "")).encode("utf-8")
    mode = path.stat().st_mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve_target(path: str | os.PathLike[str]) -> Path:
    """``PATH/train.py`` for a folder (the ML-Decoder root), else ``PATH`` itself."""
    p = Path(path)
    if p.is_dir():
        p = p / "train.py"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found (give the ML-Decoder root or its train.py)")
    return p


def patch_file(path: str | os.PathLike[str], *, revert: bool = False, dry_run: bool = False) -> PatchResult:
    """Patch (or un-patch) ML-Decoder's ``train.py``; writes only when the file matches exactly.

    Args:
        path: The ML-Decoder root or its ``train.py``.
        revert: Restore the original from a patched file.
        dry_run: Check and report only.

    Returns:
        A :class:`PatchResult`.

    Raises:
        PatchError: when the file is neither the expected original nor the patched version
            (nothing is written).
        FileNotFoundError: when there is no such file.
    """
    target = resolve_target(path)
    hunks = parse_patch(patch_text())
    state = file_state(target, hunks)
    if state == "unknown":
        lines, _, trailing = _read(target)
        hint = (" It already holds BalanceMix lines, from another version of the patch or edited by hand."
                if any("balancemix" in line for line in lines) else "")
        raise PatchError(
            f"{target} is not train.py of ML-Decoder {ML_DECODER_COMMIT} (sha256 {_sha256(lines, trailing)[:12]}..., "
            f"expected {ORIGINAL_SHA256[:12]}...), patched or not.{hint} Nothing was changed. Check out that "
            f"version (git -C <ML_Decoder> checkout {ML_DECODER_COMMIT} -- train.py) or port the "
            f"patch by hand (patches/ml_decoder_train.patch)."
        )
    want = "original" if revert else "patched"
    if state == want:
        msg = (f"{target} is the original train.py; nothing to revert" if revert
               else f"{target} is already patched; nothing changed")
        return PatchResult(target, state, False, hunks, msg)
    lines, newline, trailing = _read(target)
    new_lines = apply_hunks(lines, hunks, reverse=revert)
    if not dry_run:
        _write(target, new_lines, newline, trailing)
    verb = "would be" if dry_run else "was"
    msg = f"{target} {verb} {'reverted to the original' if revert else 'patched'}"
    return PatchResult(target, state, True, hunks, msg)


def _summary(result: PatchResult, revert: bool) -> list[str]:
    """Per hunk: its position, counts and the lines it adds (+) and removes (-)."""
    out = []
    flip = {"+": "-", "-": "+"}
    for i, h in enumerate(result.hunks, 1):
        plus, minus = (h.removed, h.added) if revert else (h.added, h.removed)
        line = h.old_start if revert else h.new_start
        out.append(f"  hunk {i} near line {line}: +{plus} -{minus}")
        for tag, text in h.lines:
            if tag != " ":
                out.append(f"    {flip[tag] if revert else tag} {text.strip()}")
    plus = sum(h.removed if revert else h.added for h in result.hunks)
    minus = sum(h.added if revert else h.removed for h in result.hunks)
    out.append(f"  total: +{plus} -{minus} lines in {len(result.hunks)} hunks")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``balancemix-patch-ml-decoder``.

    Returns:
        0 when the file was patched / reverted or already was; 1 when it was refused.
    """
    parser = argparse.ArgumentParser(
        prog="balancemix-patch-ml-decoder",
        description=f"Patch ML-Decoder's train.py (commit {ML_DECODER_COMMIT}) to train with BalanceMix "
                    "(flags --balancemix, --bm-*; see docs/reproduce-table6.md).",
    )
    parser.add_argument("path", nargs="?", help="the ML-Decoder checkout (folder) or its train.py")
    parser.add_argument("--revert", action="store_true", help="undo the patch")
    parser.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    parser.add_argument("--print-patch", action="store_true", help="print the patch and exit")
    args = parser.parse_args(argv)
    if args.print_patch:
        sys.stdout.write(patch_text())
        return 0
    if args.path is None:
        parser.error("the path of the ML-Decoder checkout (or its train.py) is required")
    try:
        result = patch_file(args.path, revert=args.revert, dry_run=args.dry_run)
    except (PatchError, FileNotFoundError) as err:
        print(f"balancemix-patch-ml-decoder: refused: {err}", file=sys.stderr)
        return 1
    print(result.message)
    if result.changed:
        print("\n".join(_summary(result, args.revert)))
        if not args.revert and not args.dry_run:
            print("Train with: python train.py --balancemix ... (python train.py --help lists the --bm-* flags); "
                  f"undo with: balancemix-patch-ml-decoder --revert {args.path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
