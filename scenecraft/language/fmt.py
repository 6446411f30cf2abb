"""Canonical formatting: syntax tree -> text. Idempotent; ``parse(fmt(x)) == parse(x)``.

Comments are kept: a comment on its own line stays before the statement that follows it, a
comment at the end of a line stays on that statement's line.
"""

from __future__ import annotations

from collections.abc import Sequence

from scenecraft.language import nodes as n
from scenecraft.prompts import RELATION_WORDS

INDENT = "  "
_ESC = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def quote(s: n.Str) -> str:
    if s.triple and '"""' not in s.value and not s.value.endswith('"') and "\0" not in s.value:
        return f'"""{s.value}"""'  # raw; a NUL cannot be written raw (the parser rejects it)
    return f'"{"".join(_escape(ch) for ch in s.value)}"'


def _escape(ch: str) -> str:
    if ch in _ESC:
        return _ESC[ch]
    # \uXXXX holds 4 hex digits: characters beyond U+FFFF are written as themselves
    return ch if ch.isprintable() or ord(ch) > 0xFFFF else f"\\u{ord(ch):04x}"


def value(v: n.Value) -> str:
    if isinstance(v, n.Str):
        return quote(v)
    if isinstance(v, n.Num):
        return str(int(v.value)) if v.is_int else repr(v.value)
    if isinstance(v, n.Size):
        return f"{v.width}x{v.height}"
    if isinstance(v, n.Range):
        return f"{v.start}..{v.stop}"
    if isinstance(v, n.Bool):
        return "true" if v.value else "false"
    return v.name


def setting(s: n.Setting) -> str:
    return f"{s.key.name} " + ", ".join(value(v) for v in s.values)


def names(items: tuple[n.Ident, ...]) -> str:
    words = [x.name for x in items]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def subject_stmt(s: n.SubjectStmt) -> str:
    parts = [s.subject.name]
    parts += [f"{a.verb} {quote(a.text)}" for a in s.attributes]
    act = s.action
    if isinstance(act, n.Interaction):
        verb = quote(n.Str(act.verb)) if act.free else act.verb
        parts.append(f"{verb} {names(act.targets)}")
    elif isinstance(act, n.Placement):
        parts.append(f"{RELATION_WORDS[act.relation]} {act.target.name}")
    elif isinstance(act, n.Area):
        where = act.words if act.box is None else "(" + ", ".join(map(value, act.box)) + ")"
        parts.append(f"at {where}")
    return " ".join(parts)


def scene_stmt(s: n.SceneStmt) -> str:
    if isinstance(s, n.Setting):
        return setting(s)
    if isinstance(s, n.SubjectStmt):
        return subject_stmt(s)
    if isinstance(s, n.Presence):
        return ", ".join(x.name for x in s.names)
    if isinstance(s, n.ObjectDecl):
        return f"object {s.name.name}" + (f" {quote(s.text)}" if s.text else "")
    return f"together {quote(s.text)}"


class _Writer:
    def __init__(self, comments: tuple[n.Comment, ...]) -> None:
        self.lines: list[str] = []
        self.comments = sorted(comments, key=lambda c: (c.span.line, c.span.col))
        self.i = 0

    def line(self, text: str, depth: int, node: n.Node | None = None) -> None:
        at = node.span.line if node is not None and node.span is not n.NOWHERE else None
        if at is not None:
            self.flush_before(at, depth)
        out = INDENT * depth + text
        if at is not None:
            end = node.span.end_line if node is not None else at
            trailing = []
            while self.i < len(self.comments) and self.comments[self.i].span.line <= end:
                trailing.append(self.comments[self.i].text)
                self.i += 1
            if trailing:
                out += "  " + " ".join(trailing)
        self.lines.append(out)

    def flush_before(self, line: int, depth: int) -> None:
        while self.i < len(self.comments) and self.comments[self.i].span.line < line:
            self.lines.append(INDENT * depth + self.comments[self.i].text)
            self.i += 1

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def rest(self) -> None:
        while self.i < len(self.comments):
            self.lines.append(self.comments[self.i].text)
            self.i += 1


def _block(
    w: _Writer, head: str, node: n.Node, body: Sequence[tuple[str, n.Node]], depth: int
) -> None:
    w.line(head + " {", depth, _first_line(node))
    for text, child in body:
        w.line(text, depth + 1, child)
    w.flush_before(node.span.end_line, depth + 1)  # comments just before the closing brace
    w.line("}", depth)


def _first_line(node: n.Node) -> n.Node:
    """A stand-in whose span covers only the node's first line (for trailing comments)."""
    s = node.span
    return n.Comment("", span=n.Span(s.file, s.line, s.col, s.line, s.col + 1))


def _scene_body(scene: n.Scene) -> list[tuple[str, n.Node]]:
    return [(scene_stmt(s), s) for s in scene.body]


def _item(w: _Writer, item: n.Item) -> None:
    if isinstance(item, n.Model):
        opts = "".join(f" {o.key.name} {value(o.values[0])}" for o in item.options)
        w.line(f"model {value(item.source)}{opts}", 0, item)
    elif isinstance(item, n.Include):
        w.line(f"include {quote(item.path)}", 0, item)
    elif isinstance(item, n.Concept):
        _block(w, f"concept {item.name.name}", item, [(setting(s), s) for s in item.settings], 0)
    elif isinstance(item, n.Merge):
        if item.settings:
            body = [(setting(s), s) for s in item.settings]
            _block(w, f"merge {item.method.name}", item, body, 0)
        else:
            w.line(f"merge {item.method.name}", 0, item)
    elif isinstance(item, n.Defaults):
        _block(w, "defaults", item, [(setting(s), s) for s in item.settings], 0)
    elif isinstance(item, n.Scene):
        _block(w, f"scene {item.name.name}", item, _scene_body(item), 0)
    else:
        _storyboard(w, item)


def _storyboard(w: _Writer, item: n.Storyboard) -> None:
    w.line(f"storyboard {item.name.name} {{", 0, _first_line(item))
    for s in item.settings:
        w.line(setting(s), 1, s)
    for p in item.panels:
        caption = f" {quote(p.caption)}" if p.caption else ""
        if p.ref is not None:
            w.line(f"panel {p.ref.name}{caption}", 1, p)
        elif p.scene is not None:
            _block(w, f"panel{caption}", p, _scene_body(p.scene), 1)
    w.flush_before(item.span.end_line, 1)
    w.line("}", 0)


def format_file(file: n.File) -> str:
    """The canonical text of ``file``."""
    w = _Writer(file.comments)
    previous: type | None = None
    for item in file.items:
        simple = isinstance(item, n.Model | n.Include)
        if previous is not None and not (simple and previous in (n.Model, n.Include)):
            w.blank()
        _item(w, item)
        previous = type(item)
    w.rest()
    return "\n".join(w.lines).rstrip("\n") + "\n"
