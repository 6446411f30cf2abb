"""The package's import graph has no circle, counting every import the source holds: at module
level, inside functions, under ``if TYPE_CHECKING`` and relative ones (``from . import x``).

A function-level or TYPE_CHECKING import hides a circle from the interpreter, it does not remove
it: the modules still cannot be understood (or split, or loaded) one without the other. Dynamic
imports (``importlib.import_module`` with a computed name) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent


def modules(root: Path, package: str = "scenecraft") -> dict[str, Path]:
    """Dotted module name -> its file, for every ``.py`` under ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _targets(node: ast.AST, name: str, is_package: bool) -> set[str]:
    """The dotted names an import statement may load (module, or module.attribute)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:  # relative: from the importer's package, one level up per extra dot
        package = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return {base} | {f"{base}.{a.name}" for a in node.names}


def _with_parents(target: str) -> set[str]:
    """``a.b.c`` and the packages Python initialises to reach it: ``a.b``, ``a``."""
    parts = target.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_graph(root: Path, package: str = "scenecraft") -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its source (its own ancestor
    packages left out: Python initialises those before the module, whatever it imports)."""
    known = modules(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(tree):
            for target in _targets(node, name, is_package):
                found |= _with_parents(target)
        ancestors = _with_parents(name)
        graph[name] = {m for m in found if m in known and m not in ancestors}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_circle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle through a component's first module, as a path ``a, b, ..., a``."""
    start, inside = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & inside):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{component} is not strongly connected")


def test_the_finder_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A circle through a relative import, a function-level one and a TYPE_CHECKING one."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.sub.c import g\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n"
    )
    (pkg / "d.py").write_text("import pkg.a\n")  # into the circle, not part of it
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    [component] = strongly_connected(graph)
    assert component == ["pkg.a", "pkg.sub.b", "pkg.sub.c"]
    assert a_circle(graph, component) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import json\n")
    assert strongly_connected(import_graph(tmp_path, "pkg")) == []


def test_scenecraft_has_no_import_circle() -> None:
    graph = import_graph(ROOT)
    assert graph["scenecraft.cli.main"] and graph["scenecraft.render.engine"]
    circles = [" -> ".join(a_circle(graph, c)) for c in strongly_connected(graph)]
    assert circles == [], "import circles:\n" + "\n".join(circles)
