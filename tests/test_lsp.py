"""`scenecraft lsp` over stdio, part 1: diagnostics (broken, then fixed), completion, hover,
formatting, code actions, and the command without pygls. Part 2 (tests/test_lsp_navigation.py):
definition, references, rename, document symbols, semantic tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scenecraft.api import load
from scenecraft.diagnostics import DiagnosticError
from scenecraft.language.fmt import format_file
from scenecraft.language.parser import parse
from tests import _lsp_client as harness
from tests._lsp_client import LIB, MAIN, ROOT, Session, pos

try:
    from lsprotocol import types as t
    from pygls.uris import from_fs_path
except ImportError:  # the `lsp` fixture skips (or fails under CI) with the reason
    pass

lsp = harness.lsp  # the server, one per test session
files = harness.files  # main.scene and lib.scene in a temporary folder


# ---------------------------------------------------------------------------- diagnostics


def test_diagnostics_appear_with_check_s_code_span_and_help_then_clear(
    lsp: Session, files: Path
) -> None:
    assert lsp.capabilities.position_encoding == t.PositionEncodingKind.Utf16
    uri = lsp.open(files / "main.scene", MAIN)
    assert lsp.wait_for(uri, lambda d: True) == []
    broken = MAIN.replace("  ziggy left of blip", "  zigy left of blip")
    (files / "broken.scene").write_text(broken)
    lsp.change(uri, broken)
    found = lsp.wait_for(uri, lambda d: len(d) > 0)
    assert [(d.code, d.severity) for d in found] == [
        ("unknown-concept", t.DiagnosticSeverity.Error)
    ]
    start = pos(broken, "zigy left")
    assert (found[0].range.start, found[0].range.end) == (
        start,
        t.Position(start.line, start.character + 4),
    )
    assert "help: did you mean `ziggy`?" in found[0].message
    # the same code, span and help as `scenecraft check` on the same text
    with pytest.raises(DiagnosticError) as exc:
        load(files / "broken.scene")
    (want,) = exc.value.errors  # (the include's warning goes to lib.scene)
    assert (want.code, want.span.line - 1, want.span.col - 1, want.help) == (
        found[0].code,
        found[0].range.start.line,
        found[0].range.start.character,
        found[0].data["help"],
    )
    lsp.change(uri, MAIN)
    assert lsp.wait_for(uri, lambda d: d == []) == []


def test_an_included_file_gets_its_own_diagnostics(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lib_uri = from_fs_path(str(files / "lib.scene"))
    found = lsp.wait_for(lib_uri, lambda d: len(d) > 0)
    assert [d.code for d in found] == ["concept-without-weights"]
    assert found[0].range.start == t.Position(0, 8)  # `blip` in `concept blip {`
    assert lsp.diagnostics[uri] == []


def test_an_edit_to_an_open_include_rechecks_the_file_that_includes_it(
    lsp: Session, files: Path
) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: d == [])
    lib_uri = lsp.open(files / "lib.scene", LIB)  # unsaved edits are read from the editor
    lsp.change(lib_uri, LIB.replace("concept blip", "concept blop"))
    found = lsp.wait_for(uri, lambda d: len(d) > 0)
    assert [d.code for d in found] == ["unknown-concept"]
    assert "did you mean `blop`?" in found[0].message
    lsp.change(lib_uri, LIB)
    lsp.wait_for(uri, lambda d: d == [])
    lsp.client.text_document_did_close(t.DidCloseTextDocumentParams(lsp.doc(lib_uri)))


def test_a_syntax_error_then_its_fix(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    broken = MAIN.replace('  setting "at sea"', '  setting "at sea')
    lsp.change(uri, broken)
    found = lsp.wait_for(uri, lambda d: len(d) > 0)
    assert found[0].code == "unterminated-string"
    assert found[0].range.start.line == pos(broken, 'setting "at sea').line
    lsp.change(uri, MAIN)
    lsp.wait_for(uri, lambda d: d == [])


def test_a_template_s_error_points_at_the_template_line(lsp: Session, tmp_path: Path) -> None:
    template = (
        'model "runwayml/stable-diffusion-v1-5"\n'
        "concept ziggy {\n"
        '  token "<ZIGGY>"\n'
        "}\n"
        "{% for place in places %}\n"
        "scene {{ place }} {\n"
        "  zigy\n"
        "}\n"
        "{% endfor %}\n"
    )
    (tmp_path / "t.vars.toml").write_text('places = ["park", "sea"]\n')
    uri = lsp.open(tmp_path / "t.scene.j2", template)
    found = lsp.wait_for(uri, lambda d: len(d) > 0)
    errors = [d for d in found if d.severity == t.DiagnosticSeverity.Error]
    assert {d.code for d in errors} == {"unknown-concept"}
    assert {(d.range.start.line, d.range.start.character) for d in errors} == {(6, 2)}


def test_edits_are_debounced_into_one_analysis(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    for typed in ("z", "zi", "zig", "zigg"):  # typing, faster than the pause
        lsp.change(uri, MAIN.replace("  ziggy wears", f"  {typed} wears"))
    found = lsp.wait_for(uri, lambda d: len(d) > 0)
    assert len(found) == 1 and "`zigg`" in found[0].message
    lsp.change(uri, MAIN)
    lsp.wait_for(uri, lambda d: d == [])


# ---------------------------------------------------------------------------- completion


def complete(lsp: Session, uri: str, text: str, at: Any) -> list[Any]:
    lsp.change(uri, text)
    result = lsp.run(
        lsp.client.text_document_completion_async(t.CompletionParams(lsp.doc(uri), at))
    )
    return list(result.items)


def test_completion_in_each_place(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    # a new statement in a scene: concepts (from the include too), settings, keywords
    text = MAIN.replace('  setting "at sea"\n', '  setting "at sea"\n  \n')
    labels = [i.label for i in complete(lsp, uri, text, pos(text, "  \n", 2))]
    assert {"ziggy", "blip", "setting", "seeds", "object", "together"} <= set(labels)
    # after a subject: attribute words, placements, interactions
    text = MAIN.replace('  setting "at sea"\n', '  setting "at sea"\n  ziggy \n')
    labels = [i.label for i in complete(lsp, uri, text, pos(text, "  ziggy \n", 8))]
    assert {"wears", "dressed as", "left of", "on top of", "waves at", "at"} <= set(labels)
    # after a relation: the other subjects
    text = MAIN.replace("  ziggy left of blip", "  ziggy left of ")
    items = complete(lsp, uri, text, pos(text, "left of ", 8))
    assert [i.label for i in items] == ["blip"]
    # a merge parameter: range and default from the parameter table
    text = MAIN.replace("  margin 0.5\n", "  margin 0.5\n  \n")
    items = complete(lsp, uri, text, pos(text, "  \n", 2))
    by_label = {i.label: i for i in items}
    assert by_label["margin"].detail == "float (0, 10]; default 1.0"
    assert (
        by_label["init"].detail == "one of gradient-fusion, fusion, zero; default gradient-fusion"
    )
    from scenecraft.merge.config import Loraclr

    doc = Loraclr.model_fields["margin"].description or ""
    assert doc and doc in by_label["margin"].documentation.value  # the model's own doc
    # a merge method, a sampler, an include path, a panel's scene
    text = MAIN.replace("merge loraclr {", "merge lo")
    assert "gradient-fusion" in [
        i.label for i in complete(lsp, uri, text, pos(text, "merge lo", 8))
    ]
    text = MAIN.replace('sampler "DDIM"', 'sampler "D')
    labels = [i.label for i in complete(lsp, uri, text, pos(text, 'sampler "D', 10))]
    assert {"DDIM", "DPM++ 2M Karras", "Euler a"} <= set(labels)
    text = MAIN.replace('include "lib.scene"', 'include "')
    assert [i.label for i in complete(lsp, uri, text, pos(text, 'include "', 9))] == ["lib.scene"]
    text = MAIN.replace('  panel sea "second"', "  panel ")
    labels = [i.label for i in complete(lsp, uri, text, pos(text, "  panel \n", 8))]
    assert labels == ["park", "sea"]
    lsp.change(uri, MAIN)


# ---------------------------------------------------------------------------- hover


def hover_text(lsp: Session, uri: str, at: Any) -> str:
    result = lsp.run(lsp.client.text_document_hover_async(t.HoverParams(lsp.doc(uri), at)))
    assert result is not None
    return str(result.contents.value)


def test_hover_on_a_concept_a_scene_and_a_merge_parameter(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    concept = hover_text(lsp, uri, pos(MAIN, "ziggy left", 1))
    assert "token: `<ZIGGY>`" in concept and "class: `circle`" in concept
    assert "format: diffusers (attention processors)" in concept and "rank: 4" in concept
    scene = hover_text(lsp, uri, pos(MAIN, "panel park", 7))
    assert "**scene `park`**: 2 images, 512x512, 30 steps, `DDIM`, seeds 1, 2" in scene
    assert "prompt: `circle left of square, in a park`" in scene
    assert "- `ziggy` (0.00, 0.00, 0.50, 1.00): `<ZIGGY> circle, circle left of square" in scene
    assert "- `blip` (0.50, 0.00, 1.00, 1.00)" in scene
    param = hover_text(lsp, uri, pos(MAIN, "margin 0.5", 2))
    assert "parameter `margin`**: float (0, 10]; default 1.0" in param and "margin m" in param


# ---------------------------------------------------------------------------- edits


def test_formatting_returns_fmt_s_result(lsp: Session, files: Path) -> None:
    messy = MAIN.replace("scene sea {", "scene   sea   {").replace(
        "  margin 0.5", "      margin   0.5"
    )
    uri = lsp.open(files / "main.scene", messy)
    lsp.wait_for(uri, lambda d: True)
    edits = lsp.run(
        lsp.client.text_document_formatting_async(
            t.DocumentFormattingParams(lsp.doc(uri), t.FormattingOptions(2, True))
        )
    )
    assert len(edits) == 1
    assert edits[0].new_text == format_file(parse(messy, "main.scene"))
    assert "scene sea {" in edits[0].new_text and "  margin 0.5\n" in edits[0].new_text
    assert edits[0].range.start == t.Position(0, 0)
    assert edits[0].range.end.line == messy.count("\n")


def test_code_action_applies_the_did_you_mean(lsp: Session, files: Path) -> None:
    uri = lsp.open(files / "main.scene", MAIN)
    lsp.wait_for(uri, lambda d: True)
    broken = MAIN.replace('sampler "DDIM"', 'sampler "ddim"').replace("ziggy wears", "zigy wears")
    lsp.change(uri, broken)
    found = lsp.wait_for(uri, lambda d: len(d) == 2)
    whole = t.Range(t.Position(0, 0), t.Position(broken.count("\n"), 0))
    actions = lsp.run(
        lsp.client.text_document_code_action_async(
            t.CodeActionParams(lsp.doc(uri), whole, t.CodeActionContext(diagnostics=found))
        )
    )
    fixes = sorted(
        (a.title, e.new_text, e.range.start.line) for a in actions for e in a.edit.changes[uri]
    )
    assert fixes == sorted(
        [
            ("replace `ddim` with `DDIM`", '"DDIM"', pos(broken, "ddim").line),
            ("replace `zigy` with `ziggy`", "ziggy", pos(broken, "zigy wears").line),
        ]
    )
    assert all(a.kind == t.CodeActionKind.QuickFix and a.diagnostics for a in actions)
    lsp.change(uri, MAIN)


# ---------------------------------------------------------------------------- the command


def test_without_pygls_lsp_says_how_to_install_it() -> None:
    probe = "import sys; sys.modules['pygls'] = None\nfrom scenecraft.cli import main\nsys.exit(main(['lsp']))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'error: `scenecraft lsp` needs pygls, which is not installed: pip install "scenecraft[lsp]"'
    ]
