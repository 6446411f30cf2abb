"""Checks for one scene body: names in scope, settings, placements that contradict each other.

``check_scene_body`` also records what the scene says, typed, so that the compiler never walks
the syntax tree: its subjects in order of first mention, each subject's attributes, the
interactions and placements as clauses, the group activity, and every name it mentions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from scenecraft import layout
from scenecraft.diagnostics import Collector, Label, did_you_mean
from scenecraft.language import nodes as n
from scenecraft.language import schema
from scenecraft.prompts import Clause


class _Concept(Protocol):
    """What a scene body reads of a checked concept (`scenecraft.language.check.ConceptInfo`)."""

    @property
    def node(self) -> n.Concept: ...

    @property
    def kind(self) -> str: ...


class Checker(Protocol):
    """What a scene body needs of the file's checker (`scenecraft.language.check.Checker`):
    its diagnostics, the concepts declared so far and two of its checks."""

    @property
    def c(self) -> Collector: ...

    @property
    def concepts(self) -> Mapping[str, _Concept]: ...

    def duplicate(self, what: str, item: n.Node, first: n.Node, name: str = "") -> None: ...

    def check_sampler(self, setting: n.Setting) -> None: ...


@dataclass
class SceneBody:
    """What one scene says, as the checker resolved it."""

    settings: dict[str, Any]  # setting overrides read from the body
    objects: dict[str, str]  # object name -> prompt words
    areas: dict[str, layout.Box]  # explicit boxes: `ziggy at left half`
    order: list[str] = field(default_factory=list)  # subjects in order of first mention
    attributes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (verb, text)
    clauses: list[Clause] = field(default_factory=list)  # interactions and placements, in order
    activity: str | None = None  # `together "..."`
    mentions: set[str] = field(default_factory=set)  # every name the scene mentions

    def see(self, name: str) -> None:
        self.mentions.add(name)
        if name not in self.order:
            self.order.append(name)

    def record(self, stmt: n.SceneStmt) -> None:
        """Add one statement's subjects, attributes, clause or activity."""
        if isinstance(stmt, n.SubjectStmt):
            self.see(stmt.subject.name)
            for a in stmt.attributes:
                verb = a.verb.replace(" ", "-")
                self.attributes.setdefault(stmt.subject.name, []).append((verb, a.text.value))
            action = stmt.action
            if isinstance(action, n.Interaction):
                for t in action.targets:
                    self.see(t.name)
                targets = tuple(t.name for t in action.targets)
                self.clauses.append(Clause(stmt.subject.name, action.verb, targets))
            elif isinstance(action, n.Placement):
                self.see(action.target.name)
                target = (action.target.name,)
                self.clauses.append(Clause(stmt.subject.name, action.relation, target, True))
        elif isinstance(stmt, n.Presence):
            for x in stmt.names:
                self.see(x.name)
        elif isinstance(stmt, n.ObjectDecl):
            self.see(stmt.name.name)  # a declared object is in the picture
        elif isinstance(stmt, n.Together):
            self.activity = stmt.text.value
        elif isinstance(stmt, n.Setting):
            self.mentions.add(stmt.key.name)  # `ziggy "a hat"` (missing verb) mentions ziggy
            if stmt.key.name == "style":
                self.mentions.update(v.name for v in stmt.values if isinstance(v, n.Ident))


def check_scene_body(ck: Checker, scene: n.Scene) -> SceneBody:
    """Validate ``scene``; returns what it says (settings, objects, areas, subjects, clauses)."""
    c = ck.c
    objects = _declare_objects(ck, scene)
    scope = {**{k: "concept" for k in ck.concepts}, **{k: "object" for k in objects}}
    settings: dict[str, tuple[Any, n.Setting]] = {}
    placements: list[tuple[str, str, str, n.Placement]] = []
    areas: dict[str, tuple[layout.Box, n.Area]] = {}
    together: n.Together | None = None
    mentioned = False
    body = SceneBody({}, objects, {})
    for stmt in scene.body:
        body.record(stmt)
        if isinstance(stmt, n.Setting):
            mentioned = mentioned or stmt.key.name in ck.concepts  # a missing-verb line
            _scene_setting(ck, stmt, settings)
        elif isinstance(stmt, n.SubjectStmt):
            mentioned = True
            _subject(ck, stmt, scope, placements, areas)
        elif isinstance(stmt, n.Presence):
            mentioned = True
            for name in stmt.names:
                _resolve(ck, name, scope)
        elif isinstance(stmt, n.Together):
            if together is not None:
                c.error(
                    "duplicate-setting",
                    "`together` is given twice",
                    stmt.span,
                    labels=(Label(together.span, "first given here"),),
                    help="describe the group activity in one `together` line",
                )
            together = stmt
    _contradictions(ck, placements)
    _cycles(ck, placements)
    _explicit_layout(ck, placements, areas)
    if not mentioned and not objects:
        c.warn(
            "empty-scene",
            f"scene `{scene.name.name or 'panel'}` mentions no concept or object",
            scene.name.span if scene.name.name else scene.span,
            help="add a line such as `gosling waves at taylor`",
        )
    body.settings = {k: v for k, (v, _) in settings.items()}
    body.areas = {name: box for name, (box, _) in areas.items()}
    return body


def _declare_objects(ck: Checker, scene: n.Scene) -> dict[str, str]:
    objects: dict[str, str] = {}
    first: dict[str, n.ObjectDecl] = {}
    for stmt in scene.body:
        if not isinstance(stmt, n.ObjectDecl):
            continue
        name = stmt.name.name
        if name in first:
            ck.duplicate("object", stmt.name, first[name].name, name)
            continue
        if name in ck.concepts:
            ck.c.error(
                "duplicate-definition",
                f"object `{name}` has the name of a concept",
                stmt.name.span,
                labels=(Label(ck.concepts[name].node.name.span, "concept defined here"),),
                help=f"use the concept directly (`{name} on top of ...`) or rename the object",
            )
            continue
        first[name] = stmt
        objects[name] = stmt.text.value if stmt.text else f"a {name.replace('_', ' ')}"
    return objects


def _scene_setting(ck: Checker, s: n.Setting, out: dict[str, tuple[Any, n.Setting]]) -> None:
    key = s.key.name
    if key in ck.concepts:
        value = s.values[0]
        shown = f'"{value.value}"' if isinstance(value, n.Str) else "..."
        ck.c.error(
            "missing-verb",
            f"`{key}` is a concept, but this line says nothing about it",
            s.span,
            label="what does the concept do?",
            help=f"add a verb: `{key} wears {shown}`, `{key} holding {shown}`, `{key} in {shown}`",
        )
        return
    if key == "batch_size":
        ck.c.error(
            "unknown-setting",
            "`batch_size` can only be set in `defaults`",
            s.key.span,
            help="move it into the `defaults` block (it does not change the images)",
        )
        return
    spec = schema.SCENE_KEYS.get(key)
    if spec is None:
        schema.unknown_setting(ck.c, s, schema.SCENE_KEYS, "a scene", tuple(ck.concepts))
        return
    if key == "style" and _style_concept(ck, s, out):
        return
    canon = "seeds" if key == "seed" else key
    if canon in out:
        schema.duplicate_setting(ck.c, s, out[canon][1])
        return
    value = schema.read_setting(ck.c, s, spec)
    if value is not None:
        out[canon] = (value, s)
        if key == "sampler":
            ck.check_sampler(s)


def _style_concept(ck: Checker, s: n.Setting, out: dict[str, tuple[Any, n.Setting]]) -> bool:
    """`style noir` where `noir` is a concept of kind style: the scene uses that concept."""
    value = s.values[0]
    if len(s.values) != 1 or not isinstance(value, n.Ident) or value.name not in ck.concepts:
        return False
    if ck.concepts[value.name].kind != "style":
        ck.c.error(
            "wrong-value-type",
            f"`{value.name}` is a {ck.concepts[value.name].kind} concept, not a style",
            value.span,
            label="not a style concept",
            help=f'write the style as text (`style "..."`), or give `{value.name}` `kind style`',
        )
        return True
    out["style_concept"] = (value.name, s)
    return True


def _resolve(ck: Checker, name: n.Ident, scope: dict[str, str]) -> bool:
    if name.name in scope:
        return True
    ck.c.error(
        "unknown-concept",
        f"unknown concept `{name.name}`",
        name.span,
        label="not defined",
        notes=(
            ("concepts in scope: " + ", ".join(f"`{x}`" for x in sorted(scope)),)
            if scope
            else ("no concepts are defined",)
        ),
        help=did_you_mean(name.name, scope)
        or f"define it with `concept {name.name} {{ ... }}`, or `object {name.name}` for a plain object",
    )
    return False


def _subject(
    ck: Checker,
    stmt: n.SubjectStmt,
    scope: dict[str, str],
    placements: list[tuple[str, str, str, n.Placement]],
    areas: dict[str, tuple[layout.Box, n.Area]],
) -> None:
    ok = _resolve(ck, stmt.subject, scope)
    subject = stmt.subject.name
    action = stmt.action
    if isinstance(action, n.Area):
        if ok and not _is_style(ck, subject, action):
            _area(ck, subject, action, areas)
        return
    if isinstance(action, n.Interaction):
        for t in action.targets:
            if _resolve(ck, t, scope) and t.name == subject:
                _self_reference(ck, t, subject)
    elif isinstance(action, n.Placement):
        target_ok = _resolve(ck, action.target, scope)
        if target_ok and action.target.name == subject:
            _self_reference(ck, action.target, subject)
        elif ok and target_ok:
            if any(_is_style(ck, who, action) for who in (subject, action.target.name)):
                return
            placements.append((subject, action.relation, action.target.name, action))


def _is_style(ck: Checker, who: str, action: n.Node) -> bool:
    """A style concept has no place in the picture: say so (``style-not-placeable``)."""
    info = ck.concepts.get(who)
    if info is None or info.kind != "style":
        return False
    ck.c.error(
        "style-not-placeable",
        f"`{who}` is a style concept and has no place in the picture",
        action.span,
        label="a style cannot be placed",
        help=f"write `style {who}` (or `{who}` on a line of its own): "
        "a style applies to the whole picture",
    )
    return True


def _area(
    ck: Checker, subject: str, node: n.Area, areas: dict[str, tuple[layout.Box, n.Area]]
) -> None:
    """``subject at AREA``: a named area or a box inside the canvas, once per subject."""
    if subject in areas:
        ck.c.error(
            "duplicate-area",
            f"`{subject}` is given two areas",
            node.span,
            label="second area",
            labels=(Label(areas[subject][1].span, "first area"),),
            help="keep one `at` line per subject",
        )
        return
    if node.box is None:
        words = node.words or ""
        if words not in layout.AREAS:
            ck.c.error(
                "unknown-area",
                f"unknown area `{words}`",
                node.span,
                label="not a named area",
                notes=("areas: " + ", ".join(f"`{a}`" for a in layout.AREAS),),
                help=did_you_mean(words, layout.AREAS)
                or "or give a box of fractions: `at (x0, y0, x1, y1)`, e.g. `at (0, 0, 0.5, 1)`",
            )
            return
        areas[subject] = (layout.AREAS[words], node)
        return
    x0, y0, x1, y1 = (v.value for v in node.box)
    outside = [v for v in node.box if not 0 <= v.value <= 1]
    if outside:
        ck.c.error(
            "box-outside-canvas",
            f"the box of `{subject}` reaches outside the canvas",
            outside[0].span,
            label="not between 0 and 1",
            help="box values are fractions of the canvas: (x0, y0, x1, y1), each from 0 to 1",
        )
        return
    if x0 >= x1 or y0 >= y1:
        ck.c.error(
            "empty-box",
            f"the box of `{subject}` is empty",
            node.span,
            label="x0 < x1 and y0 < y1 are needed",
            help="write the box as (left, top, right, bottom), e.g. `at (0.1, 0.2, 0.5, 0.9)`",
        )
        return
    areas[subject] = ((x0, y0, x1, y1), node)


def _cycles(ck: Checker, placements: list[tuple[str, str, str, n.Placement]]) -> None:
    """``a left of b``, ``b left of c``, ``c left of a``: no layout can keep all three."""
    triples = [(a, rel, b) for a, rel, b, _ in placements]
    nodes = {(a, rel, b): node for a, rel, b, node in placements}
    for axis, words in (("x", "left to right"), ("y", "top to bottom")):
        cycle = layout.find_cycle(layout.edges(triples, axis))
        if cycle is None or len(cycle) <= 3:  # two subjects: `contradictory-placement`
            continue
        pairs = set(zip(cycle, cycle[1:], strict=False))
        involved = [
            node
            for (a, rel, b), node in nodes.items()
            if rel in layout.AXES
            and layout.AXES[rel][0] == axis
            and ((a, b) if layout.AXES[rel][1] < 0 else (b, a)) in pairs
        ]
        involved.sort(key=lambda x: (x.span.line, x.span.col))
        ck.c.error(
            "placement-cycle",
            "placements go round in a circle: " + " -> ".join(f"`{x}`" for x in cycle),
            involved[-1].span,
            label="closes the circle",
            labels=tuple(Label(x.span, "part of the circle") for x in involved[:-1]),
            notes=(f"no order of these subjects from {words} keeps every placement",),
            help="drop or reverse one of these placements",
        )


def _explicit_layout(
    ck: Checker,
    placements: list[tuple[str, str, str, n.Placement]],
    areas: dict[str, tuple[layout.Box, n.Area]],
) -> None:
    """Explicit areas must keep the placements between them; heavy overlap is a warning."""
    for a, rel, b, node in placements:
        if a in areas and b in areas and not layout.holds(rel, areas[a][0], areas[b][0]):
            ck.c.error(
                "layout-contradiction",
                f"the areas of `{a}` and `{b}` contradict `{a} {rel.replace('-', ' ')} {b}`",
                node.span,
                label="this placement",
                labels=(
                    Label(areas[a][1].span, f"area of `{a}`"),
                    Label(areas[b][1].span, f"area of `{b}`"),
                ),
                help="move one of the areas, or drop the placement",
            )
    names = list(areas)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            share = layout.overlap(areas[a][0], areas[b][0])
            if share > 0.5:
                ck.c.warn(
                    "regions-overlap",
                    f"the areas of `{a}` and `{b}` overlap by {share:.0%}",
                    areas[b][1].span,
                    label="overlaps",
                    labels=(Label(areas[a][1].span, f"area of `{a}`"),),
                    notes=("where regions overlap, their prompts are averaged",),
                    help="give each subject an area of its own",
                )


def _self_reference(ck: Checker, t: n.Ident, subject: str) -> None:
    ck.c.error(
        "self-reference",
        f"`{subject}` refers to itself",
        t.span,
        label="same as the subject",
        help="an interaction or placement needs two different subjects",
    )


def _contradictions(ck: Checker, placements: list[tuple[str, str, str, n.Placement]]) -> None:
    seen: dict[tuple[str, str, str], tuple[int, n.Placement]] = {}
    for a, rel, b, node in placements:
        if rel not in layout.RELATIONS:
            continue
        axis, sign = layout.RELATIONS[rel]
        key, direction = ((a, b, axis), sign) if a < b else ((b, a, axis), -sign)
        if key in seen and seen[key][0] != direction:
            ck.c.error(
                "contradictory-placement",
                f"placements of `{a}` and `{b}` contradict each other",
                node.span,
                label="contradicts the earlier placement",
                labels=(Label(seen[key][1].span, "earlier placement"),),
                help="keep one of the two placements",
            )
        seen.setdefault(key, (direction, node))
