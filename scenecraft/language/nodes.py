"""The scene language's syntax tree. Every node carries a `Span`, set by the parser in one place.

Nodes are frozen dataclasses; ``span`` is excluded from equality so that two parses of
differently formatted but equivalent text compare equal (the fmt round-trip property).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from scenecraft.diagnostics import Span

NOWHERE = Span("<unknown>", 1, 1, 1, 2)


@dataclass(frozen=True)
class Node:
    span: Span = field(default=NOWHERE, compare=False, kw_only=True)


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Str(Node):
    value: str
    triple: bool = field(default=False, compare=False)  # written as """..."""


@dataclass(frozen=True)
class Num(Node):
    value: float
    is_int: bool


@dataclass(frozen=True)
class Size(Node):
    width: int
    height: int


@dataclass(frozen=True)
class Range(Node):
    start: int
    stop: int  # inclusive


@dataclass(frozen=True)
class Ident(Node):
    name: str


@dataclass(frozen=True)
class Bool(Node):
    value: bool


Value = Union[Str, Num, Size, Range, Ident, Bool]


@dataclass(frozen=True)
class Setting(Node):
    """``key value, value, ...`` inside a block (or a scene)."""

    key: Ident
    values: tuple[Value, ...]


# ---------------------------------------------------------------------------- top-level items


@dataclass(frozen=True)
class Model(Node):
    source: Value
    options: tuple[Setting, ...] = ()


@dataclass(frozen=True)
class Include(Node):
    path: Str


@dataclass(frozen=True)
class Concept(Node):
    name: Ident
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class Merge(Node):
    method: Ident
    settings: tuple[Setting, ...] = ()


@dataclass(frozen=True)
class Defaults(Node):
    settings: tuple[Setting, ...]


# ---------------------------------------------------------------------------- scene statements


@dataclass(frozen=True)
class Attribute(Node):
    verb: str  # canonical words: "wears", "dressed as", "holding", "in", ...
    text: Str


@dataclass(frozen=True)
class Interaction(Node):
    verb: str  # "waves at" or a free verb written as a string
    targets: tuple[Ident, ...]
    free: bool = False  # True for a quoted free verb


@dataclass(frozen=True)
class Placement(Node):
    relation: str  # kebab-case relation: "left-of", "on-top-of", ...
    target: Ident


@dataclass(frozen=True)
class Area(Node):
    """`at left half` (a named area) or `at (0.1, 0.5, 0.45, 0.95)` (x0, y0, x1, y1)."""

    words: str | None = None  # the area's name as written, words joined by one space
    box: tuple[Num, Num, Num, Num] | None = None  # fractions of the canvas, origin top left


@dataclass(frozen=True)
class SubjectStmt(Node):
    subject: Ident
    attributes: tuple[Attribute, ...] = ()
    action: Interaction | Placement | Area | None = None


@dataclass(frozen=True)
class Presence(Node):
    names: tuple[Ident, ...]


@dataclass(frozen=True)
class ObjectDecl(Node):
    name: Ident
    text: Str | None = None


@dataclass(frozen=True)
class Together(Node):
    text: Str


SceneStmt = Union[Setting, SubjectStmt, Presence, ObjectDecl, Together]


@dataclass(frozen=True)
class Scene(Node):
    name: Ident
    body: tuple[SceneStmt, ...]


@dataclass(frozen=True)
class Panel(Node):
    ref: Ident | None  # a scene by name, or
    scene: Scene | None  # an inline scene (named "<storyboard>-<n>")
    caption: Str | None = None


@dataclass(frozen=True)
class Storyboard(Node):
    name: Ident
    settings: tuple[Setting, ...]
    panels: tuple[Panel, ...]


Item = Union[Model, Include, Concept, Merge, Defaults, Scene, Storyboard]


@dataclass(frozen=True)
class Comment(Node):
    text: str  # including the leading '#'


@dataclass(frozen=True)
class File(Node):
    path: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
