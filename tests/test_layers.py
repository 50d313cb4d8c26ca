"""Import layers of the package: the library never imports the application, and no module
imports itself back through others.

Every ``import`` statement of every module counts, wherever it stands: at module level, inside a
function, or under ``if TYPE_CHECKING`` (a type-only import still couples the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import balancemix_timm

PACKAGE = "balancemix_timm"
ROOT = Path(balancemix_timm.__file__).resolve().parent

#: Application modules (and packages): the trainer, the CLIs and the paper tables. Library
#: modules must not import any of them.
APPLICATION = (
    f"{PACKAGE}.train",
    f"{PACKAGE}.trainer",
    f"{PACKAGE}.benchmark",
    f"{PACKAGE}.demo",
    f"{PACKAGE}.pretrain",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (packages by their ``__init__``)."""
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports, resolved to module names.

    ``from X import y`` counts as an import of ``X.y`` when that is a module, else of ``X``.
    Parent packages that Python runs on the way (``a`` for ``a.b``) are not edges: they would
    make every submodule of a package that imports it look circular.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` names the deepest module that exists.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and _is_under(target, PACKAGE) and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _is_application(name: str) -> bool:
    return any(_is_under(name, app) for app in APPLICATION)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first, three colours)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, black) == grey:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == white:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for start in sorted(graph):
        if colour[start] == white:
            found = visit(start)
            if found:
                return found
    return None


def test_the_walk_sees_the_package():
    graph = _graph()
    assert f"{PACKAGE}.engine" in graph and f"{PACKAGE}.methods.standard" in graph
    # Relative imports are resolved (the methods import the engine), function-local ones too
    # (the demo runs the trainer from inside a function).
    assert f"{PACKAGE}.recipe" in graph[f"{PACKAGE}.methods.standard"]
    assert any(_is_application(t) for t in graph[f"{PACKAGE}.demo"])


def test_find_cycle_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = _graph()
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_library_never_imports_the_application():
    bad = sorted(
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if not _is_application(name)
        for target in targets
        if _is_application(target)
    )
    assert not bad, "library modules import application code:\n" + "\n".join(bad)


def test_every_module_imports_and_runs_nothing(monkeypatch):
    """Every module of the package imports (the re-exports of moved code resolve), and importing
    one runs no command line: with an argument no parser accepts, a ``main()`` run at import
    time would exit."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "argv", ["balancemix", "--no-such-flag-anywhere"])
    names = sorted(_graph())
    assert len(names) > 50
    for name in names:
        importlib.import_module(name)
