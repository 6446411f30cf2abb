"""The light commands stay light: `check`, `compile`, `fmt`, `layout`, `lsp`, `cache` and
`render --dry-run` never import torch, diffusers or transformers (an editor may run them on every
keystroke). The import graph's circles are tests/test_import_graph.py."""

from __future__ import annotations

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
        ["render", "--dry-run", "scenes/toyworld.scene", "--out", "{tmp}", "--cache-dir", "{tmp}"],
        [
            "render",
            "--dry-run",
            "--json",
            "scenes/toyworld.scene",
            "--out",
            "{tmp}",
            "--cache-dir",
            "{tmp}",
        ],
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
