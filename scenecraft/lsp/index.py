"""Where every name is written: concepts, scenes, storyboards, objects, includes, settings.

`build_index` walks the parsed files of a program once and records each occurrence with its
span in the file's own text (for a Jinja template: only lines the template wrote as they are,
since a generated line has no place in the template to point at). Navigation, hover, rename,
symbols and semantic tokens all read this index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scenecraft.diagnostics import Span
from scenecraft.language import nodes as n
from scenecraft.language.loader import Program, Source, resolve_path
from scenecraft.lsp.positions import contains

Kind = Literal[
    "concept", "scene", "storyboard", "object", "include", "merge-method", "merge-param", "setting"
]


@dataclass(frozen=True)
class Occurrence:
    kind: Kind
    name: str  # the name as written (the include's path for an include)
    span: Span  # in the file's own text
    definition: bool = False  # where the name is declared
    owner: str = ""  # merge method of a parameter; block of a setting; scene of an object


@dataclass
class Index:
    occurrences: list[Occurrence] = field(default_factory=list)
    concepts: dict[str, n.Concept] = field(default_factory=dict)  # every file's
    scenes: dict[str, n.Scene] = field(default_factory=dict)  # by name (inline panels too)
    panel_scenes: set[str] = field(default_factory=set)  # the inline panels' names (`day-2`)
    storyboards: dict[str, n.Storyboard] = field(default_factory=dict)
    includes: dict[Span, Path] = field(default_factory=dict)  # an include's span -> its target
    merge: n.Merge | None = None

    def at(self, file: str, line: int, col: int) -> Occurrence | None:
        """The occurrence under 1-based (line, col) of ``file``, the narrowest if several."""
        hits = [o for o in self.occurrences if o.span.file == file and contains(o.span, line, col)]
        return min(hits, key=_width, default=None)

    def of(self, kind: Kind, name: str, owner: str | None = None) -> list[Occurrence]:
        """Every occurrence of ``name`` as a ``kind``, definitions first."""
        found = [
            o
            for o in self.occurrences
            if o.kind == kind and o.name == name and (owner is None or o.owner == owner)
        ]
        return sorted(found, key=lambda o: (not o.definition, o.span))

    def definition(self, kind: Kind, name: str, owner: str | None = None) -> Occurrence | None:
        return next((o for o in self.of(kind, name, owner) if o.definition), None)


def _width(o: Occurrence) -> tuple[int, int]:
    return (o.span.end_line - o.span.line, o.span.end_col - o.span.col)


def template_span(span: Span, src: Source | None) -> Span | None:
    """A span in the parsed text -> the same span in the file's own text (None: generated)."""
    if src is None or src.rendered is None:
        return span
    if span.end_line != span.line or not src.rendered.line_map:
        return None
    idx = span.line - 1
    if idx >= len(src.rendered.line_map):
        return None
    out_lines = src.rendered.text.split("\n")
    tline = src.rendered.line_map[idx]
    tpl_lines = src.text.split("\n")
    if not (0 < tline <= len(tpl_lines)) or out_lines[idx] != tpl_lines[tline - 1]:
        return None
    return Span(span.file, tline, span.col, tline, span.end_col)


class _Walker:
    def __init__(self, program: Program) -> None:
        self.program = program
        self.index = Index()

    def add(
        self, kind: Kind, name: str, span: Span, definition: bool = False, owner: str = ""
    ) -> None:
        mapped = template_span(span, self.program.sources.get(span.file))
        if mapped is not None and span.file != n.NOWHERE.file:
            self.index.occurrences.append(Occurrence(kind, name, mapped, definition, owner))

    def run(self) -> Index:
        files = [*self.program.includes, self.program.main]
        for f in files:  # concept names first: a scene's names are concepts or its objects
            for item in f.items:
                if isinstance(item, n.Concept):
                    self.index.concepts.setdefault(item.name.name, item)
        for f in files:
            for item in f.items:
                self.item(item)
        return self.index

    def item(self, item: n.Item) -> None:
        if isinstance(item, n.Include):
            self.add("include", item.path.value, item.path.span)
            base = Path(item.span.file).parent
            self.index.includes[item.path.span] = resolve_path(base, item.path.value)
        elif isinstance(item, n.Concept):
            self.add("concept", item.name.name, item.name.span, definition=True)
            self.settings(item.settings, "concept")
        elif isinstance(item, n.Merge):
            self.index.merge = item
            self.add("merge-method", item.method.name, item.method.span)
            for s in item.settings:
                self.add("merge-param", s.key.name, s.key.span, owner=item.method.name)
        elif isinstance(item, n.Defaults):
            self.settings(item.settings, "defaults")
        elif isinstance(item, n.Model):
            self.settings(item.options, "model")
        elif isinstance(item, n.Scene):
            self.index.scenes.setdefault(item.name.name, item)
            self.add("scene", item.name.name, item.name.span, definition=True)
            self.scene(item, item.name.name)
        elif isinstance(item, n.Storyboard):
            self.storyboard(item)

    def settings(self, settings: tuple[n.Setting, ...], owner: str) -> None:
        for s in settings:
            self.add("setting", s.key.name, s.key.span, owner=owner)

    def storyboard(self, item: n.Storyboard) -> None:
        name = item.name.name
        self.index.storyboards.setdefault(name, item)
        self.add("storyboard", name, item.name.span, definition=True)
        self.settings(item.settings, "storyboard")
        for i, panel in enumerate(item.panels):
            if panel.ref is not None:
                self.add("scene", panel.ref.name, panel.ref.span)
            elif panel.scene is not None:
                scene_name = f"{name}-{i + 1}"
                self.index.scenes.setdefault(scene_name, panel.scene)
                self.index.panel_scenes.add(scene_name)
                self.scene(panel.scene, scene_name)

    def scene(self, scene: n.Scene, name: str) -> None:
        objects = {s.name.name for s in scene.body if isinstance(s, n.ObjectDecl)}

        def ref(ident: n.Ident) -> None:
            if ident.name in objects:
                self.add("object", ident.name, ident.span, owner=name)
            else:
                self.add("concept", ident.name, ident.span)

        for stmt in scene.body:
            if isinstance(stmt, n.Setting):
                self.add("setting", stmt.key.name, stmt.key.span, owner="scene")
                for v in stmt.values:  # `style noir` names a style concept
                    if isinstance(v, n.Ident) and v.name in self.index.concepts:
                        ref(v)
            elif isinstance(stmt, n.ObjectDecl):
                self.add("object", stmt.name.name, stmt.name.span, definition=True, owner=name)
            elif isinstance(stmt, n.Presence):
                for ident in stmt.names:
                    ref(ident)
            elif isinstance(stmt, n.SubjectStmt):
                ref(stmt.subject)
                action = stmt.action
                if isinstance(action, n.Interaction):
                    for t in action.targets:
                        ref(t)
                elif isinstance(action, n.Placement):
                    ref(action.target)


def build_index(program: Program) -> Index:
    """The occurrences of every name in ``program``'s files."""
    return _Walker(program).run()


def setting_text(concept: n.Concept, key: str) -> str:
    """A concept's setting as written, values joined by spaces ("" when it is not set)."""
    for s in concept.settings:
        if s.key.name == key:
            return " ".join(_value_text(v) for v in s.values).strip()
    return ""


def _value_text(v: n.Value) -> str:
    if isinstance(v, n.Str):
        return v.value
    if isinstance(v, n.Ident):
        return v.name
    if isinstance(v, n.Num):
        return f"{v.value:g}"
    return ""
