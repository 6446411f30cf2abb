"""The diagnostics catalogue: one small bad input per diagnostic code, with its exact rendering.

Each ``tests/catalogue/<name>.scene`` (or ``.scene.j2``) is loaded from inside the catalogue
folder, so file names in the snapshots are relative and machine-independent. Its rendered
diagnostics (errors and warnings, `scenecraft.diagnostics.render_all`) must equal
``<name>.expected``; ``SCENECRAFT_UPDATE_SNAPSHOTS=1`` rewrites the snapshots.

A directive in a comment on the first line changes how an entry is run:
``# catalogue: strict`` (missing LoRAs are errors), ``fmt`` (run `scenecraft fmt --check`),
``vars=FILE`` (a --vars file), ``var=KEY=VALUE`` (a --var).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from scenecraft.api import load
from scenecraft.cli.args import build_parser
from scenecraft.cli.common import Output, variables
from scenecraft.cli.language import cmd_fmt
from scenecraft.diagnostics import Diagnostic, DiagnosticError, render_all

sys.path.insert(0, str(Path(__file__).parent / "catalogue"))
import refresh_errors_doc  # noqa: E402 - the docs-refresh script next to the catalogue

CATALOGUE = Path(__file__).parent / "catalogue"
ROOT = Path(__file__).parent.parent
ERRORS_MD = ROOT / "docs" / "errors.md"
LANGUAGE_END = "<!-- end of the language's codes -->"
ENTRIES = sorted(p.name for p in CATALOGUE.iterdir() if p.name.endswith((".scene", ".scene.j2")))
# Codes documented in docs/errors.md that no input can trigger (they report bugs, not input).
UNREACHABLE_FROM_INPUT = {"internal-error"}
_DIRECTIVE = re.compile(r"^(?:#|\{#)\s*catalogue:\s*(?P<opts>.*?)\s*(?:#\})?$")


def stem(entry: str) -> str:
    return entry.removesuffix(".j2").removesuffix(".scene")


def entry_code(entry: str) -> str:
    """`unclosed-block-2.scene` -> `unclosed-block`: a suffix marks an extra entry for a code
    that has its own plain entry (so `size-not-multiple-of-8` keeps its `-8`)."""
    name = stem(entry)
    base = re.sub(r"-(\d+|strict)$", "", name)
    return base if base != name and base in {stem(e) for e in ENTRIES} else name


def directives(entry: str) -> list[str]:
    first = (CATALOGUE / entry).read_bytes().split(b"\n", 1)[0].decode("utf-8", "replace")
    m = _DIRECTIVE.match(first)
    return m.group("opts").split() if m else []


def run_entry(entry: str) -> list[Diagnostic]:
    """Every diagnostic the entry produces, run the way its directives say."""
    opts = directives(entry)
    if "fmt" in opts:
        args = build_parser().parse_args(["fmt", "--check", entry])
        try:
            cmd_fmt(args, Output())
        except DiagnosticError as exc:
            return exc.diagnostics
        return []
    argv = ["check", entry]
    argv += [f"--vars={o[5:]}" for o in opts if o.startswith("vars=")]
    argv += [f"--var={o[4:]}" for o in opts if o.startswith("var=")]
    args = build_parser().parse_args(argv)
    try:
        loaded = load(entry, variables(args), allow_missing="strict" not in opts)
    except DiagnosticError as exc:
        return exc.diagnostics
    return loaded.warnings


def render_entry(entry: str) -> str:
    diagnostics = run_entry(entry)
    sources = {
        d.span.file: (CATALOGUE / d.span.file).read_text("utf-8", errors="replace")
        for d in diagnostics
        if d.span is not None and (CATALOGUE / d.span.file).is_file()
    }
    # notes quote absolute paths ("looked for /…/lib/x"); keep snapshots machine-independent
    return render_all(diagnostics, sources).replace(str(CATALOGUE), "$CATALOGUE") + "\n"


@pytest.fixture
def in_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CATALOGUE)


@pytest.mark.parametrize("entry", ENTRIES)
def test_snapshot(entry: str, in_catalogue: None) -> None:
    rendered = render_entry(entry)
    expected_path = CATALOGUE / f"{stem(entry)}.expected"
    if os.environ.get("SCENECRAFT_UPDATE_SNAPSHOTS") == "1":
        expected_path.write_text(rendered, encoding="utf-8")
    assert expected_path.is_file(), "no snapshot; run with SCENECRAFT_UPDATE_SNAPSHOTS=1"
    assert rendered == expected_path.read_text(encoding="utf-8")


@pytest.mark.parametrize("entry", ENTRIES)
def test_entry_produces_its_code(entry: str, in_catalogue: None) -> None:
    codes = {d.code for d in run_entry(entry)}
    assert entry_code(entry) in codes


def test_strict_turns_missing_lora_into_an_error(in_catalogue: None) -> None:
    [lenient] = run_entry("lora-not-found.scene")
    [strict] = run_entry("lora-not-found-strict.scene")
    assert (lenient.code, lenient.severity) == ("lora-not-found", "warning")
    assert (strict.code, strict.severity) == ("lora-not-found", "error")


def test_every_snapshot_has_an_input() -> None:
    inputs = {stem(e) for e in ENTRIES}
    orphans = [p.name for p in CATALOGUE.glob("*.expected") if p.stem not in inputs]
    assert orphans == []


def documented_codes() -> set[str]:
    """Codes with a `## `code`` section in docs/errors.md, up to the end-of-language marker
    (codes of the merge and render engines may be documented after it)."""
    text = ERRORS_MD.read_text("utf-8").split(LANGUAGE_END)[0]
    return set(re.findall(r"^## `([a-z0-9-]+)`", text, re.M))


def source_codes() -> set[str]:
    """Codes the language modules and the CLI can emit, read from their source."""
    cli = ROOT / "scenecraft" / "cli"
    files = [
        *(ROOT / "scenecraft" / "language").glob("*.py"),
        *(cli / f"{m}.py" for m in ("main", "common", "args", "language")),
    ]
    codes: set[str] = set()
    for f in files:
        text = f.read_text("utf-8")
        codes |= set(re.findall(r'(?:Diagnostic|error|warn)\(\s*"([a-z0-9-]+)"', text))
        for pair in re.findall(r'code = "([a-z0-9-]+)" if .* else "([a-z0-9-]+)"', text):
            codes |= set(pair)
        codes |= set(re.findall(r"error\[([a-z0-9-]+)\]", text))
    return codes


def test_every_code_in_the_source_is_documented() -> None:
    assert len(source_codes()) >= 45
    assert source_codes() == documented_codes()


def test_catalogue_covers_exactly_the_documented_codes() -> None:
    covered = {entry_code(e) for e in ENTRIES}
    assert covered == documented_codes() - UNREACHABLE_FROM_INPUT


def test_at_least_25_error_codes(in_catalogue: None) -> None:
    errors = {d.code for e in ENTRIES for d in run_entry(e) if d.is_error}
    assert len(errors) >= 25


def test_examples_in_the_docs_are_the_snapshots() -> None:
    text = ERRORS_MD.read_text("utf-8")
    assert len(refresh_errors_doc.EXAMPLE.findall(text)) == len(documented_codes()) - len(
        UNREACHABLE_FROM_INPUT
    )
    assert refresh_errors_doc.refreshed(text) == text, (
        "run: python tests/catalogue/refresh_errors_doc.py"
    )


def test_every_documented_code_has_severity_example_and_fix() -> None:
    text = ERRORS_MD.read_text("utf-8").split(LANGUAGE_END)[0]
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    for section in sections:
        code = section.split("`")[1]
        assert "**Severity:**" in section, code
        assert "```" in section, code
        assert "**Fix:**" in section, code
