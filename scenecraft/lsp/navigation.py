"""Go to definition, find references, rename, and the document's outline (symbols)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from lsprotocol.types import (
    DocumentSymbol,
    Location,
    Position,
    Range,
    SymbolKind,
    TextEdit,
    WorkspaceEdit,
)
from pygls.uris import from_fs_path

from scenecraft.diagnostics import Span
from scenecraft.language import nodes as n
from scenecraft.lsp.analysis import Analysis
from scenecraft.lsp.index import Index, Occurrence, template_span
from scenecraft.lsp.positions import Lines

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(-[A-Za-z0-9_]+)*")  # the grammar's NAME
RENAMEABLE = ("concept", "scene", "object", "storyboard")


class RenameError(ValueError):
    """The rename cannot be done (the message says why)."""


class Texts:
    """Lines of the files spans point into: the editor's text for open ones, else the disk."""

    def __init__(self, analysis: Analysis) -> None:
        self.cache: dict[str, Lines] = {analysis.name: Lines(analysis.text)}
        if analysis.program is not None:
            for name, src in analysis.program.sources.items():
                self.cache.setdefault(name, Lines(src.text))

    def lines(self, file: str) -> Lines:
        if file not in self.cache:
            try:
                self.cache[file] = Lines(Path(file).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                self.cache[file] = Lines("")
        return self.cache[file]

    def location(self, span: Span) -> Location:
        return Location(uri(span.file), self.lines(span.file).range_of(span))


def uri(file: str) -> str:
    return from_fs_path(str(Path(file).resolve())) or Path(file).as_uri()


def occurrence_at(analysis: Analysis, index: Index, pos: Position) -> Occurrence | None:
    lines = Lines(analysis.text)
    return index.at(analysis.name, pos.line + 1, lines.column(pos) + 1)


def definition(analysis: Analysis, index: Index, pos: Position) -> list[Location]:
    occ = occurrence_at(analysis, index, pos)
    if occ is None:
        return []
    if occ.kind == "include":
        target = index.includes.get(occ.span) or (Path(occ.span.file).parent / occ.name)
        if not target.is_file():
            return []
        return [Location(uri(str(target)), Range(Position(0, 0), Position(0, 0)))]
    owner = occ.owner if occ.kind == "object" else None
    found = index.definition(occ.kind, occ.name, owner)
    return [Texts(analysis).location(found.span)] if found else []


def references(
    analysis: Analysis, index: Index, pos: Position, include_declaration: bool = True
) -> list[Location]:
    """Where the name under the cursor is written; for an include, every include of that file."""
    occ = occurrence_at(analysis, index, pos)
    if occ is None:
        return []
    texts = Texts(analysis)
    if occ.kind == "include":
        target = index.includes.get(occ.span)
        return [texts.location(s) for s, p in index.includes.items() if p == target]
    if occ.kind not in RENAMEABLE:
        return []
    owner = occ.owner if occ.kind == "object" else None
    return [
        texts.location(o.span)
        for o in index.of(occ.kind, occ.name, owner)
        if include_declaration or not o.definition
    ]


def rename(analysis: Analysis, index: Index, pos: Position, new_name: str) -> WorkspaceEdit | None:
    """Rename the concept (scene, object, storyboard) under the cursor everywhere it is written."""
    occ = occurrence_at(analysis, index, pos)
    if occ is None or occ.kind not in RENAMEABLE:
        return None
    if not NAME.fullmatch(new_name):
        raise RenameError(f"`{new_name}` is not a name: letters, digits, `_` and inner `-`")
    owner = occ.owner if occ.kind == "object" else None
    taken = {o.name for o in index.occurrences if o.kind == occ.kind and o.definition}
    if new_name in taken and new_name != occ.name:
        raise RenameError(f"a {occ.kind} named `{new_name}` already exists")
    texts = Texts(analysis)
    changes: dict[str, list[TextEdit]] = {}
    for o in index.of(occ.kind, occ.name, owner):
        loc = texts.location(o.span)
        changes.setdefault(loc.uri, []).append(TextEdit(loc.range, new_name))
    return WorkspaceEdit(changes=changes)


def symbols(analysis: Analysis) -> list[DocumentSymbol]:
    """The outline of the document: model, concepts, merge, defaults, scenes, storyboards."""
    if analysis.program is None:
        return []
    lines = Lines(analysis.text)
    src = analysis.program.sources.get(analysis.name)
    out: list[DocumentSymbol] = []

    def symbol(
        name: str, kind: SymbolKind, whole: Span, pick: Span, detail: str = ""
    ) -> DocumentSymbol | None:
        sel = template_span(pick, src)
        if sel is None:
            return None
        full = template_span(whole, src) if src and src.rendered else whole
        return DocumentSymbol(
            name=name,
            kind=kind,
            range=lines.range_of(full or sel),
            selection_range=lines.range_of(sel),
            detail=detail or None,
            children=[],
        )

    for item in analysis.program.main.items:
        found = _item_symbol(item, symbol)
        if found is not None:
            out.append(found)
    return out


MakeSymbol = Callable[[str, SymbolKind, Span, Span, str], "DocumentSymbol | None"]


def _item_symbol(item: n.Item, make: MakeSymbol) -> DocumentSymbol | None:
    if isinstance(item, n.Concept):
        return make(item.name.name, SymbolKind.Class, item.span, item.name.span, "concept")
    if isinstance(item, n.Merge):
        return make(f"merge {item.method.name}", SymbolKind.Module, item.span, item.method.span, "")
    if isinstance(item, n.Scene):
        sym = make(item.name.name, SymbolKind.Function, item.span, item.name.span, "scene")
        objects = [
            make(s.name.name, SymbolKind.Variable, s.span, s.name.span, "object")
            for s in item.body
            if isinstance(s, n.ObjectDecl)
        ]
        if sym is not None:
            sym.children = [o for o in objects if o is not None]
        return sym
    if isinstance(item, n.Storyboard):
        sym = make(item.name.name, SymbolKind.Namespace, item.span, item.name.span, "storyboard")
        panels = [
            make(
                p.ref.name if p.ref else f"{item.name.name}-{i + 1}",
                SymbolKind.Event,
                p.span,
                p.ref.span if p.ref else p.span,
                "panel",
            )
            for i, p in enumerate(item.panels)
        ]
        if sym is not None:
            sym.children = [p for p in panels if p is not None]
        return sym
    return None
