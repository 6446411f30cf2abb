"""Benchmark tables in the docs are the benchmarks' own output (benchmarks/readme_tables.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_tables", ROOT / "benchmarks/readme_tables.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_results_block_matches_its_file() -> None:
    t = tables()
    blocks = [m for doc in t.documents() for m in t.BLOCK.finditer(doc.read_text(encoding="utf-8"))]
    assert any(m["path"] == "benchmarks/results/toyworld_eval.md" for m in blocks)
    for doc in t.documents():
        text = doc.read_text(encoding="utf-8")
        assert t.refreshed(text) == text, f"{doc.name}: run python benchmarks/readme_tables.py"


def test_a_hand_edited_number_is_caught(tmp_path: Path) -> None:
    t = tables()
    (tmp_path / "r.md").write_text("| a | 0.50 |\n", encoding="utf-8")
    doc = "x\n<!-- results: r.md -->\n| a | 0.90 |\n<!-- /results -->\ny\n"
    assert (
        t.refreshed(doc, tmp_path)
        == "x\n<!-- results: r.md -->\n| a | 0.50 |\n<!-- /results -->\ny\n"
    )
