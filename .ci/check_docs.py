"""CI step: the docs stand alone.

Every relative link of ``README.md`` and ``docs/*.md`` resolves inside the repository (files and
heading anchors), and no page points at material outside it (``../shared``, absolute ``/work/``
paths), at numbered issues instead of stating the rule, or at a working session's history.

Pages written by the benchmark's report commands (``docs/results.md``, ``docs/results_variants.md``,
the label-issue block of ``docs/label-issues.md``) are checked too: fix their wording in the
generator (``balancemix_timm/benchmark/report.py``, ``benchmarks/study_variants.py``,
``balancemix_timm/benchmark/label_issues_report.py``) or in ``docs/results_discussion.md``, which
``balancemix-benchmark --notes`` appends, then regenerate.

Usage: ``python .ci/check_docs.py`` (exit status 1 and one line per problem when any).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.I)
FORBIDDEN = [
    (re.compile(r"\.\./shared\b|\bshared/(paper|spec)\b"), "material outside the repository (../shared)"),
    (re.compile(r"/work/"), "an absolute path of one machine (/work/)"),
    (re.compile(r"\bissues?\s*#?\s*\d+", re.I), "an issue number instead of the rule"),
    (re.compile(r"(?<![\w&/])#\d+\b"), "an issue number (#N) instead of the rule"),
    (re.compile(r"\bsessions?\s+\d+|\bearlier sessions?\b|\bthe session before\b", re.I),
     "the history of a working session instead of the current rule"),
]


def anchors(text: str) -> set[str]:
    """GitHub-style heading anchors (loosely: lower case, punctuation dropped, spaces to -)."""
    out = set()
    for line in text.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            title = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def link_problems(page: Path) -> list[str]:
    """Relative links of ``page`` that point at no file, outside the repository or at no heading."""
    text = page.read_text(encoding="utf-8")
    bad = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if URL.match(target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            bad.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target}: no heading with anchor #{anchor}")
    return bad


def reference_problems(page: Path) -> list[str]:
    """Lines of ``page`` naming material outside the repository, issue numbers or session history."""
    text = page.read_text(encoding="utf-8")
    text = LINK.sub(lambda m: m.group(0).split("](")[0] + "]()", text)  # link targets: link_problems
    text = URL.sub("", text)                                              # public URLs are fine
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, why in FORBIDDEN:
            bad += [f"line {n}: {m.group(0)!r} ({why})" for m in pattern.finditer(line)]
    return bad


def main() -> int:
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    problems = [f"{page.relative_to(ROOT)}: {p}"
                for page in pages for p in link_problems(page) + reference_problems(page)]
    for line in problems:
        print(line)
    print(f"check_docs: {len(pages)} pages, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
