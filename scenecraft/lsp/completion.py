"""Completion: what may come next at the cursor, from the block and the words typed so far.

Names come from the last analysis that parsed (concepts of every included file, the file's
scenes and a scene's objects); fixed words from the grammar and the schema tables; merge
parameters through `merge_params`; samplers from `scenecraft.names`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from lsprotocol.types import (
    CompletionItem,
    CompletionItemKind,
    CompletionList,
    MarkupContent,
    MarkupKind,
    Position,
    Range,
    TextEdit,
)

from scenecraft.language import schema
from scenecraft.layout import AREAS
from scenecraft.lsp import vocabulary as vocab
from scenecraft.lsp.context import Context, context_at
from scenecraft.lsp.index import Index, setting_text
from scenecraft.lsp.merge_params import ParamInfo, merge_parameters
from scenecraft.lsp.positions import Lines, to_utf16
from scenecraft.names import SAMPLERS

_NAME_TAIL = re.compile(r"[A-Za-z0-9_-]*$")
MAX_INCLUDE_FILES = 200  # include paths offered (the document's folder and below)
K = CompletionItemKind

BLOCK_KEYS: dict[str, dict[str, schema.Key]] = {
    "concept": schema.CONCEPT_KEYS,
    "defaults": schema.DEFAULTS_KEYS,
    "scene": schema.SCENE_KEYS,
    "storyboard": schema.STORYBOARD_KEYS,
    "model": schema.MODEL_KEYS,
}


class _Items:
    """Completion items that replace the text from ``start`` to the cursor."""

    def __init__(self, lines: Lines, line: int, start: int, end: int) -> None:
        self.text = lines.get(line)
        self.line = line
        self.end = Position(line, to_utf16(self.text, end))
        self.range = Range(Position(line, to_utf16(self.text, start)), self.end)
        self.items: list[CompletionItem] = []

    def restart(self, start: int) -> None:
        """Replace from character column ``start`` instead (a phrase of several words)."""
        self.range = Range(Position(self.line, to_utf16(self.text, start)), self.end)

    def add(self, label: str, kind: CompletionItemKind, detail: str = "", doc: str = "") -> None:
        self.items.append(
            CompletionItem(
                label=label,
                kind=kind,
                detail=detail or None,
                documentation=MarkupContent(MarkupKind.Markdown, doc) if doc else None,
                text_edit=TextEdit(self.range, label),
                sort_text=f"{len(self.items):04d}",
            )
        )

    def extend(self, labels: Iterable[str], kind: CompletionItemKind, detail: str = "") -> None:
        for label in labels:
            self.add(label, kind, detail)


def complete(index: Index | None, path: Path, text: str, pos: Position) -> CompletionList:
    """The completion items at ``pos`` of the document ``text`` (at ``path``)."""
    lines = Lines(text)
    col = lines.column(pos)
    ctx = context_at([lines.get(i) for i in range(len(lines.lines))], pos.line, col)
    index = index or Index()
    if ctx.in_string:
        out = _Items(lines, pos.line, ctx.string_start, col)
        _strings(out, ctx, path)
    else:
        start = col - len(_NAME_TAIL.search(ctx.prefix).group(0))  # type: ignore[union-attr]
        out = _Items(lines, pos.line, start, col)
        _words(out, ctx, index, lines, pos.line, col)
    return CompletionList(is_incomplete=False, items=out.items)


def _strings(out: _Items, ctx: Context, path: Path) -> None:
    words = ctx.words
    if ctx.block.kind == "top" and words[:1] == ["include"]:
        out.extend(include_paths(path), K.File, "scene file")
    elif words[:1] == ["sampler"] and ctx.block.kind in ("defaults", "scene"):
        out.extend(SAMPLERS, K.EnumMember, "sampler (A1111 name)")


def _words(out: _Items, ctx: Context, index: Index, lines: Lines, line: int, col: int) -> None:
    kind = ctx.block.kind
    settled = ctx.settled
    if kind == "top":
        _top(out, ctx, settled)
    elif kind == "merge":
        _merge(out, ctx.block.name, settled)
    elif kind == "scene":
        _scene(out, ctx, index, settled)
    elif kind == "storyboard" and settled[:1] == ["panel"]:
        if len(settled) == 1:  # a panel names a scene defined with `scene NAME { ... }`
            named = [s for s in index.scenes if s not in index.panel_scenes]
            out.extend(named, K.Function, "scene")
    elif kind in BLOCK_KEYS:
        _settings(
            out,
            BLOCK_KEYS[kind],
            settled,
            extra=vocab.BOARD_KEYWORDS if kind == "storyboard" else (),
        )


def _top(out: _Items, ctx: Context, settled: list[str]) -> None:
    if not settled:
        out.extend(vocab.item_keywords(), K.Keyword)
    elif settled == ["merge"]:
        for method, params in merge_parameters().items():
            names = ", ".join(p.name for p in params) or "no parameters"
            out.add(method, K.EnumMember, "merge method", f"parameters: {names}")
    elif settled[0] == "model" and len(settled) >= 2:
        _settings(out, schema.MODEL_KEYS, settled[2:] if len(settled) > 2 else [])


def _settings(
    out: _Items, table: dict[str, schema.Key], settled: list[str], extra: Iterable[str] = ()
) -> None:
    if not settled:
        for key, spec in table.items():
            out.add(key, K.Property, spec.kind, spec.doc)
        out.extend(extra, K.Keyword)
    elif len(settled) == 1 and settled[0] in table:
        spec = table[settled[0]]
        if spec.choices:
            out.extend(spec.choices, K.EnumMember, f"`{settled[0]}`")
        elif spec.kind == "bool":
            out.extend(("true", "false"), K.Keyword)


def _merge(out: _Items, method: str, settled: list[str]) -> None:
    params = {p.name: p for p in merge_parameters().get(method, [])}
    if not settled:
        for p in params.values():
            out.add(p.name, K.Property, param_detail(p), p.doc)
    elif len(settled) == 1 and settled[0] in params:
        p = params[settled[0]]
        if p.choices:
            out.extend(p.choices, K.EnumMember, f"default {p.default_text}")
        elif p.kind == "bool":
            out.extend(("true", "false"), K.Keyword, f"default {p.default_text}")


def param_detail(p: ParamInfo) -> str:
    """`float [0, 1]; default 0.01`, `one of ours, reference; default ours`."""
    if p.choices or p.kind == "bool":
        return f"{p.range_text}; default {p.default_text}"
    rng = f" {p.range_text}" if p.range_text else ""
    return f"{p.kind}{rng}; default {p.default_text}"


def _scene(out: _Items, ctx: Context, index: Index, settled: list[str]) -> None:
    objects = [
        o.name
        for o in index.occurrences
        if o.kind == "object" and o.definition and o.owner == ctx.block.name
    ]
    subjects = [*index.concepts, *dict.fromkeys(objects)]
    if not settled:
        for name in index.concepts:
            out.add(name, K.Class, concept_detail(index, name))
        out.extend(dict.fromkeys(objects), K.Variable, "object")
        _settings(out, schema.SCENE_KEYS, [], extra=vocab.SCENE_KEYWORDS)
        return
    first = settled[0]
    if first in schema.SCENE_KEYS:
        if first == "style" and len(settled) == 1:
            styles = [
                c for c in index.concepts if setting_text(index.concepts[c], "kind") == "style"
            ]
            out.extend(styles, K.Class, "style concept")
        _settings(out, schema.SCENE_KEYS, settled)
        return
    if first not in subjects:
        return
    # the words after the subject and its attribute strings: `blip wears "a hat" on top `
    prefix = ctx.prefix
    cut = prefix.rfind('"') + 1 if '"' in prefix else prefix.find(first) + len(first)
    partial = _NAME_TAIL.search(prefix).group(0)  # type: ignore[union-attr]
    typed = prefix[cut : len(prefix) - len(partial)]
    tail = " ".join(typed.split())
    if tail == "at":
        out.extend(AREAS, K.EnumMember, "area")
        return
    if tail in (*vocab.interactions(), *vocab.relations()) or tail.endswith((",", " and")):
        out.extend((s for s in subjects if s != first), K.Class, "concept or object")
        return
    out.restart(cut + len(typed) - len(typed.lstrip()))
    _phrases(out, f"{tail} " if tail else "")


def _phrases(out: _Items, typed: str) -> None:
    """Attribute words, relations, interactions and `at`, completed as whole phrases."""
    for words, kind, detail in (
        (vocab.attribute_words(), K.Keyword, 'attribute: `wears "a hat"`'),
        (vocab.relations(), K.Operator, "placement"),
        (vocab.interactions(), K.Event, "interaction"),
        (("at",), K.Keyword, "area: `at left half` or `at (x0, y0, x1, y1)`"),
    ):
        out.extend((w for w in words if w.startswith(typed)), kind, detail)


def concept_detail(index: Index, name: str) -> str:
    node = index.concepts.get(name)
    if node is None:
        return "concept"
    parts = [setting_text(node, "token"), setting_text(node, "class")]
    return "concept " + " ".join(p for p in parts if p)


def include_paths(path: Path) -> list[str]:
    """Scene files in the document's folder and below, relative to it (`concepts/cast.scene`)."""
    base = path.parent
    found: list[str] = []
    for pattern in ("*.scene", "*/*.scene", "*/*/*.scene", "*.scene.j2", "*/*.scene.j2"):
        for p in sorted(base.glob(pattern)):
            if p != path and len(found) < MAX_INCLUDE_FILES:
                found.append(p.relative_to(base).as_posix())
    return found
