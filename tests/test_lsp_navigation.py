"""`scenecraft lsp` over stdio, part 2: definition, references, rename, document symbols and
semantic tokens (part 1 is tests/test_lsp.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import _lsp_client as harness
from tests._lsp_client import MAIN, Session, pos

try:
    from lsprotocol import types as t
    from pygls.exceptions import JsonRpcException
    from pygls.uris import from_fs_path
except ImportError:  # the `lsp` fixture skips (or fails under CI) with the reason
    pass

lsp = harness.lsp  # the server, one per test session
files = harness.files  # main.scene and lib.scene in a temporary folder


# ---------------------------------------------------------------------------- navigation


def test_definition_of_a_concept_an_include_and_a_panel(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    lib_uri = from_fs_path(str(files / "lib.scene"))

    def define(at: Any) -> list[tuple[str, int, int]]:
        found = lsp.run(
            lsp.client.text_document_definition_async(t.DefinitionParams(lsp.doc(uri), at))
        )
        return [(x.uri, x.range.start.line, x.range.start.character) for x in found]

    assert define(pos(MAIN, "of blip", 4)) == [(lib_uri, 0, 8)]
    assert define(pos(MAIN, '"lib.scene"', 3)) == [(lib_uri, 0, 0)]
    scene_at = pos(MAIN, "scene sea", 6)
    assert define(pos(MAIN, "panel sea", 7)) == [(uri, scene_at.line, scene_at.character)]
    ziggy_at = pos(MAIN, "concept ziggy", 8)
    assert define(pos(MAIN, "ziggy wears")) == [(uri, ziggy_at.line, ziggy_at.character)]


def test_references_across_the_include(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    found = lsp.run(
        lsp.client.text_document_references_async(
            t.ReferenceParams(
                context=t.ReferenceContext(include_declaration=True),
                text_document=lsp.doc(uri),
                position=pos(MAIN, "of blip", 4),
            )
        )
    )
    lib_uri = from_fs_path(str(files / "lib.scene"))
    assert [(x.uri, x.range.start.line) for x in found] == [
        (lib_uri, 0),
        (uri, pos(MAIN, "of blip").line),
    ]


def test_references_of_an_include_are_the_includes_of_that_file(lsp: Session, files: Path) -> None:
    (files / "other.scene").write_text('include "lib.scene"\n')
    text = MAIN.replace('include "lib.scene"', 'include "lib.scene"\ninclude "other.scene"')
    uri = lsp.open(files / "main.scene", text)
    lsp.wait_for(uri, lambda d: True)
    found = lsp.run(
        lsp.client.text_document_references_async(
            t.ReferenceParams(
                context=t.ReferenceContext(include_declaration=True),
                text_document=lsp.doc(uri),
                position=pos(text, '"lib.scene"', 2),
            )
        )
    )
    other = from_fs_path(str(files / "other.scene"))
    assert sorted((x.uri, x.range.start.line, x.range.start.character) for x in found) == sorted(
        [(other, 0, 8), (uri, pos(text, '"lib.scene"').line, 8)]
    )


def test_rename_a_concept_everywhere(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    edit = lsp.run(
        lsp.client.text_document_rename_async(
            t.RenameParams(lsp.doc(uri), pos(MAIN, "ziggy left"), "zed")
        )
    )
    edits = edit.changes[uri]
    assert {e.new_text for e in edits} == {"zed"}
    lines = MAIN.split("\n")
    renamed = sorted((e.range.start.line, e.range.start.character) for e in edits)
    assert [lines[ln][c : c + 5] for ln, c in renamed] == ["ziggy"] * 3
    assert list(edit.changes) == [uri]


def test_rename_refuses_a_taken_name_and_a_non_name(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    for new, why in (("blip", "a concept named `blip` already exists"), ("2x", "is not a name")):
        with pytest.raises(JsonRpcException) as exc:
            lsp.run(
                lsp.client.text_document_rename_async(
                    t.RenameParams(lsp.doc(uri), pos(MAIN, "ziggy left"), new)
                )
            )
        assert why in str(exc.value)


# ---------------------------------------------------------------------------- outline, tokens


def test_document_symbols_outline(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    symbols = lsp.run(
        lsp.client.text_document_document_symbol_async(t.DocumentSymbolParams(lsp.doc(uri)))
    )
    assert [(s.name, s.kind) for s in symbols] == [
        ("ziggy", t.SymbolKind.Class),
        ("merge loraclr", t.SymbolKind.Module),
        ("park", t.SymbolKind.Function),
        ("sea", t.SymbolKind.Function),
        ("day", t.SymbolKind.Namespace),
    ]
    assert [c.name for c in symbols[-1].children] == ["park", "sea"]
    assert symbols[2].selection_range.start == pos(MAIN, "scene park", 6)


def test_semantic_tokens_classify_names(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    legend = lsp.capabilities.semantic_tokens_provider.legend.token_types
    data = lsp.run(
        lsp.client.text_document_semantic_tokens_full_async(t.SemanticTokensParams(lsp.doc(uri)))
    ).data
    tokens: dict[tuple[int, int], tuple[int, str]] = {}
    line = col = 0
    for i in range(0, len(data), 5):
        d_line, d_col, length, kind, _ = data[i : i + 5]
        line += d_line
        col = col + d_col if d_line == 0 else d_col
        tokens[(line, col)] = (length, legend[kind])

    def at(needle: str, offset: int = 0) -> tuple[int, str]:
        p = pos(MAIN, needle, offset)
        return tokens[(p.line, p.character)]

    assert at("# a park") == (len("# a park and the sea"), "comment")
    assert at("ziggy left") == (5, "class")
    assert at("left of blip") == (4, "operator")
    assert at("of blip", 3) == (4, "class")
    assert at("scene park", 6) == (4, "function")
    assert at("panel park", 6) == (4, "function")
    assert at("day {") == (3, "namespace")
    assert at("margin") == (6, "property")
    assert at("loraclr") == (7, "enumMember")
    assert at('"in a park"') == (11, "string")
    assert at("1..2") == (4, "number")
    assert at("storyboard") == (10, "keyword")
