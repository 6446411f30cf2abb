"""Formatting (the `scenecraft fmt` result as one edit) and code actions (the diagnostics'
did-you-mean fixes as quick fixes)."""

from __future__ import annotations

import re

from lsprotocol.types import (
    CodeAction,
    CodeActionKind,
    Range,
    TextEdit,
    WorkspaceEdit,
)
from lsprotocol.types import (
    Diagnostic as LspDiagnostic,
)
from pygls.uris import from_fs_path

from scenecraft.diagnostics import Diagnostic, DiagnosticError
from scenecraft.language.fmt import format_file
from scenecraft.language.parser import parse
from scenecraft.language.templating import is_template
from scenecraft.lsp.analysis import Analysis
from scenecraft.lsp.positions import Lines

_DID_YOU_MEAN = re.compile(r"did you mean `([^`]+)`\?")
_TEMPLATE_NOTE = "the template produced"


def formatting(analysis: Analysis) -> list[TextEdit]:
    """The whole document replaced by its formatted text; nothing for a template, a file that
    does not parse (fmt refuses both) or one already formatted."""
    if is_template(analysis.path, analysis.text):
        return []
    try:
        formatted = format_file(parse(analysis.text, analysis.name))
    except DiagnosticError:
        return []
    if formatted == analysis.text:
        return []
    return [TextEdit(Lines(analysis.text).whole(), formatted)]


def to_lsp_range(lines: Lines, d: Diagnostic) -> Range | None:
    return lines.range_of(d.span) if d.span else None


def suggestion(d: Diagnostic) -> str | None:
    """The name a diagnostic's `help: did you mean `x`?` suggests (None: no such help, or a
    diagnostic pointing at a whole generated template line)."""
    if not d.help or any(note.startswith(_TEMPLATE_NOTE) for note in d.notes):
        return None
    m = _DID_YOU_MEAN.search(d.help)
    return m.group(1) if m else None


def code_actions(
    analysis: Analysis, requested: Range, sent: list[LspDiagnostic]
) -> list[CodeAction]:
    """Quick fixes for the document's diagnostics that touch ``requested``."""
    lines = Lines(analysis.text)
    uri = from_fs_path(analysis.name) or analysis.path.as_uri()
    out: list[CodeAction] = []
    for d in analysis.diagnostics:
        if d.span is None or d.span.file != analysis.name:
            continue
        name = suggestion(d)
        rng = lines.range_of(d.span)
        if name is None or not _overlaps(rng, requested):
            continue
        written = _text(lines, d)
        new = f'"{name}"' if written.startswith('"') else name
        matching = [s for s in sent if s.code == d.code and s.range == rng]
        out.append(
            CodeAction(
                title=f"replace `{written.strip(chr(34))}` with `{name}`",
                kind=CodeActionKind.QuickFix,
                diagnostics=matching or None,
                is_preferred=True,
                edit=WorkspaceEdit(changes={uri: [TextEdit(rng, new)]}),
            )
        )
    return out


def _text(lines: Lines, d: Diagnostic) -> str:
    assert d.span is not None
    if d.span.end_line != d.span.line:
        return ""
    return lines.get(d.span.line - 1)[d.span.col - 1 : d.span.end_col - 1]


def _overlaps(a: Range, b: Range) -> bool:
    def key(p: object) -> tuple[int, int]:
        return (p.line, p.character)  # type: ignore[attr-defined]

    return key(a.start) <= key(b.end) and key(b.start) <= key(a.end)
