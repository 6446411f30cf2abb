"""The language commands stay light: `check`, `compile`, `fmt`, `layout`, `lsp` (and `cache`) never import torch,
diffusers or transformers (an editor may run them on every keystroke); and the package has no
import circles, counting imports inside functions too."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._optional import require_module

ROOT = Path(__file__).parent.parent
HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")

PROBE = """
import io, json, sys, contextlib
from scenecraft.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "scenes/toyworld.scene"],
        ["check", "--format", "json", "scenes/garden.scene"],
        ["compile", "scenes/toyworld.scene"],
        ["compile", "--json", "scenes/toyworld.scene"],
        ["fmt", "--stdout", "scenes/toyworld.scene"],
        ["layout", "scenes/toyworld.scene", "--out", "{tmp}"],
        ["cache", "list", "--cache-dir", "{tmp}"],
    ],
)
def test_language_commands_never_import_torch(argv: list[str], tmp_path: Path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["code"] == 0
    assert "scenecraft" in report["modules"] and "pydantic" in report["modules"]
    assert sorted(set(HEAVY) & set(report["modules"])) == []


LSP_PROBE = """
import json, sys
from scenecraft.cli import main
code = main(["lsp"])  # stdin is empty: the server starts, reads the end of its input, stops
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m)}),
      file=sys.stderr)
"""


def test_the_language_server_never_imports_torch() -> None:
    require_module("pygls", install='pip install "scenecraft[lsp]"')
    done = subprocess.run(
        [sys.executable, "-c", LSP_PROBE],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stderr.splitlines()[-1])
    assert report["code"] == 0
    assert {"scenecraft", "pygls", "lark"} <= set(report["modules"])
    assert sorted(set(HEAVY) & set(report["modules"])) == []


def module_imports(root: Path) -> dict[str, set[str]]:
    """scenecraft module -> the scenecraft modules it imports, at module level or inside a
    function (a function-level import hides a circle, it does not remove it); imports under
    ``if TYPE_CHECKING`` never run and are left out."""
    package = root / "scenecraft"
    names = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in ast.walk(node)
        }
        found: set[str] = set()
        for sub in ast.walk(tree):
            if id(sub) in skipped:
                continue
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found |= {sub.module} | {f"{sub.module}.{a.name}" for a in sub.names}
        graph[name] = {
            m for m in found if m in names and m != name and not name.startswith(m + ".")
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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


def test_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    graph = module_imports(ROOT)
    assert "scenecraft.cli.main" in graph and graph["scenecraft.cli.main"]
    assert cycles(graph) == []
