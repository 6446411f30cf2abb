"""`scenecraft lsp` driven by a real LSP client (pygls' own) over stdio.

One server process serves the whole module (started on ``python -m scenecraft.cli lsp``); each
test opens its own documents in a temporary folder and asserts what the server answers:
diagnostics (broken, then fixed), completion, hover, definition, references, rename,
formatting, code actions, document symbols and semantic tokens. Without pygls the tests skip
(``pip install "scenecraft[lsp]"``); under ``SCENECRAFT_CI=1`` they fail instead.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scenecraft.api import load
from scenecraft.diagnostics import DiagnosticError
from scenecraft.language.fmt import format_file
from scenecraft.language.parser import parse
from tests._optional import missing

if importlib.util.find_spec("pygls") is not None:
    from lsprotocol import types as t
    from pygls.exceptions import JsonRpcException
    from pygls.lsp.client import LanguageClient
    from pygls.uris import from_fs_path

ROOT = Path(__file__).parent.parent
ZIGGY_LORA = ROOT / "scenecraft" / "toyworld" / "weights" / "loras" / "ziggy.safetensors"
WAIT_S = 15.0

LIB = """\
concept blip {
  token "<BLIP>"
  class "square"
}
"""

MAIN = f"""\
# a park and the sea
model "runwayml/stable-diffusion-v1-5" family sd15
include "lib.scene"

concept ziggy {{
  token "<ZIGGY>"
  class "circle"
  lora "{ZIGGY_LORA}"
}}

merge loraclr {{
  margin 0.5
}}

defaults {{
  sampler "DDIM"
  seeds 1..2
}}

scene park {{
  setting "in a park"
  ziggy left of blip
}}

scene sea {{
  setting "at sea"
  ziggy wears "a hat"
}}

storyboard day {{
  panel park "first"
  panel sea "second"
}}
"""


class Session:
    """The client, its event loop and the diagnostics the server published, by URI."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = LanguageClient("scenecraft-tests", "1")
        self.diagnostics: dict[str, list[Any]] = {}
        self.versions: dict[str, int] = {}

        @self.client.feature(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def _published(params: Any) -> None:
            self.diagnostics[params.uri] = list(params.diagnostics)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, WAIT_S))

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.run(self.client.start_io(sys.executable, "-m", "scenecraft.cli", "lsp", env=env))
        caps = t.ClientCapabilities(
            general=t.GeneralClientCapabilities(position_encodings=[t.PositionEncodingKind.Utf8])
        )
        result = self.run(
            self.client.initialize_async(t.InitializeParams(capabilities=caps, process_id=None))
        )
        self.capabilities = result.capabilities
        self.client.initialized(t.InitializedParams())

    def stop(self) -> None:
        try:
            self.run(self.client.shutdown_async(None))
            self.client.exit(None)
            self.run(self.client.stop())
        finally:
            self.loop.close()

    def open(self, path: Path, text: str) -> str:
        uri = from_fs_path(str(path))
        self.diagnostics.pop(uri, None)
        self.versions[uri] = 1
        lang = "scene-j2" if path.suffix == ".j2" else "scene"
        self.client.text_document_did_open(
            t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, lang, 1, text))
        )
        return uri

    def change(self, uri: str, text: str) -> None:
        self.versions[uri] += 1
        self.client.text_document_did_change(
            t.DidChangeTextDocumentParams(
                t.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
                [t.TextDocumentContentChangeWholeDocument(text=text)],
            )
        )

    def wait_for(self, uri: str, ok: Callable[[list[Any]], bool]) -> list[Any]:
        """The diagnostics of ``uri`` once ``ok`` holds (fails after WAIT_S)."""

        async def poll() -> list[Any]:
            while True:
                found = self.diagnostics.get(uri)
                if found is not None and ok(found):
                    return found
                await asyncio.sleep(0.02)

        try:
            return self.run(poll())  # type: ignore[no-any-return]
        except TimeoutError:
            pytest.fail(f"no such diagnostics for {uri}: {self.diagnostics.get(uri)}")

    def doc(self, uri: str) -> Any:
        return t.TextDocumentIdentifier(uri=uri)


@pytest.fixture(scope="module")
def lsp() -> Iterator[Session]:
    if importlib.util.find_spec("pygls") is None:
        missing('python module pygls is not installed; pip install "scenecraft[lsp]"')
    session = Session()
    session.start()
    yield session
    session.stop()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "lib.scene").write_text(LIB)
    (tmp_path / "main.scene").write_text(MAIN)
    return tmp_path


def pos(text: str, needle: str, offset: int = 0, nth: int = 0) -> Any:
    """The LSP position of the ``nth`` ``needle`` in ``text`` (plus ``offset`` characters)."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    at += offset
    line = text.count("\n", 0, at)
    return t.Position(line, at - (text.rfind("\n", 0, at) + 1))


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
    assert "repel margin" in by_label["margin"].documentation.value
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
    assert "parameter `margin`**: float (0, 10]; default 1.0" in param and "repel margin" in param


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
