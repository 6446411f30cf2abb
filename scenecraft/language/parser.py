"""Text -> syntax tree. With syntax_errors.py, the only modules that import Lark.

Lark's exceptions are translated into `Diagnostic`s (``raise ... from None``, by
`syntax_errors.translate`), so no Lark type leaks out. Every node's span comes from
`syntax_errors.span`, the one helper that reads positions.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput

from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span
from scenecraft.language import nodes as n
from scenecraft.language.syntax_errors import span as _span
from scenecraft.language.syntax_errors import translate

GRAMMAR_NAME = "scene.lark"


def grammar_path() -> Path:
    """The grammar ships inside the wheel (scenecraft/grammars); a checkout has it at the top."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "grammars" / GRAMMAR_NAME, here.parent / "grammars" / GRAMMAR_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GRAMMAR_NAME} not found next to the scenecraft package")


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        cache=False,
    )


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r", "0": "\0"}
_ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)


def unescape(body: str, span: Span) -> str:
    """Decode ``\\n \\t \\" \\\\ \\uXXXX``; anything else is an `invalid-escape` error."""

    def replace(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc in _ESCAPES:
            return _ESCAPES[esc]
        if esc.startswith("u") and len(esc) == 5 and not 0xD800 <= int(esc[1:], 16) <= 0xDFFF:
            return chr(int(esc[1:], 16))  # (a lone surrogate half is not a character)
        col = span.col + 1 + m.start()  # +1: the opening quote
        raise DiagnosticError(
            [
                Diagnostic(
                    "invalid-escape",
                    f"`\\{esc}` is a lone surrogate half, not a character"
                    if len(esc) == 5
                    else f"unknown escape `\\{esc[:1]}` in string",
                    Span(span.file, span.line, col, span.line, col + 1 + len(esc)),
                    label="not a valid escape",
                    help='use `\\\\` for a backslash, `\\"` for a quote, `\\n` for a new line',
                )
            ]
        )

    return _ESCAPE_RE.sub(replace, body)


# ----------------------------------------------------------------------------- transformer


@v_args(meta=True)
class _ToNodes(Transformer[Token, Any]):
    """One short method per construct, named after the grammar rule it handles."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    # tokens -------------------------------------------------------------------------------
    def _tok_span(self, tok: Token) -> Span:
        return _span(self.file, tok)

    def NAME(self, tok: Token) -> n.Ident:  # noqa: N802 - Lark calls terminal callbacks by name
        return n.Ident(str(tok), span=self._tok_span(tok))

    def STRING(self, tok: Token) -> n.Str:  # noqa: N802
        span = self._tok_span(tok)
        text = str(tok)
        if text.startswith('"""'):
            return n.Str(text[3:-3], triple=True, span=span)
        return n.Str(unescape(text[1:-1], span), span=span)

    def NUMBER(self, tok: Token) -> n.Num:  # noqa: N802
        is_int = re.fullmatch(r"-?[0-9]+", str(tok)) is not None
        return n.Num(float(tok), is_int, span=self._tok_span(tok))

    def SIZE(self, tok: Token) -> n.Size:  # noqa: N802
        w, h = str(tok).split("x")
        return n.Size(int(w), int(h), span=self._tok_span(tok))

    def RANGE(self, tok: Token) -> n.Range:  # noqa: N802
        m = re.fullmatch(r"(-?[0-9]+)\.\.(-?[0-9]+)", str(tok))
        assert m is not None
        return n.Range(int(m.group(1)), int(m.group(2)), span=self._tok_span(tok))

    def BOOL(self, tok: Token) -> n.Bool:  # noqa: N802
        return n.Bool(str(tok) == "true", span=self._tok_span(tok))

    # rules ---------------------------------------------------------------------------------
    def _s(self, meta: Any) -> Span:
        return _span(self.file, meta)

    def start(self, meta: Any, items: list[Any]) -> tuple[Any, ...]:
        return tuple(items)

    def option(self, meta: Any, c: list[Any]) -> n.Setting:
        return n.Setting(c[0], (c[1],), span=self._s(meta))

    def setting(self, meta: Any, c: list[Any]) -> n.Setting:
        return n.Setting(c[0], tuple(c[1:]), span=self._s(meta))

    def setting_on(self, meta: Any, c: list[Any]) -> n.Setting:
        # `regions on`: the word `on` also starts `on top of`, so it has a rule of its own
        on = n.Ident(
            "on",
            span=Span(
                self.file, meta.end_line, meta.end_column - 2, meta.end_line, meta.end_column
            ),
        )
        return n.Setting(c[0], (on,), span=self._s(meta))

    def settings_block(self, meta: Any, c: list[Any]) -> tuple[n.Setting, ...]:
        return tuple(c)

    def model(self, meta: Any, c: list[Any]) -> n.Model:
        return n.Model(c[0], tuple(c[1:]), span=self._s(meta))

    def include(self, meta: Any, c: list[Any]) -> n.Include:
        return n.Include(c[0], span=self._s(meta))

    def concept(self, meta: Any, c: list[Any]) -> n.Concept:
        return n.Concept(c[0], c[1], span=self._s(meta))

    def merge(self, meta: Any, c: list[Any]) -> n.Merge:
        return n.Merge(c[0], c[1] if len(c) > 1 else (), span=self._s(meta))

    def defaults(self, meta: Any, c: list[Any]) -> n.Defaults:
        return n.Defaults(c[0], span=self._s(meta))

    def scene_block(self, meta: Any, c: list[Any]) -> tuple[Any, ...]:
        return tuple(c)

    def scene(self, meta: Any, c: list[Any]) -> n.Scene:
        return n.Scene(c[0], c[1], span=self._s(meta))

    def object_decl(self, meta: Any, c: list[Any]) -> n.ObjectDecl:
        return n.ObjectDecl(c[0], c[1] if len(c) > 1 else None, span=self._s(meta))

    def together(self, meta: Any, c: list[Any]) -> n.Together:
        return n.Together(c[0], span=self._s(meta))

    def presence(self, meta: Any, c: list[Any]) -> n.Presence:
        return n.Presence(tuple(c), span=self._s(meta))

    def subject_stmt(self, meta: Any, c: list[Any]) -> n.SubjectStmt:
        attrs = tuple(x for x in c[1:] if isinstance(x, n.Attribute))
        actions = [x for x in c[1:] if isinstance(x, n.Interaction | n.Placement | n.Area)]
        return n.SubjectStmt(c[0], attrs, actions[0] if actions else None, span=self._s(meta))

    def attribute(self, meta: Any, c: list[Any]) -> n.Attribute:
        words = " ".join(str(t) for t in c[:-1])
        return n.Attribute(words, c[-1], span=self._s(meta))

    def verb(self, meta: Any, c: list[Any]) -> str:
        return " ".join(str(t) for t in c)

    def targets(self, meta: Any, c: list[Any]) -> tuple[n.Ident, ...]:
        return tuple(x for x in c if isinstance(x, n.Ident))

    def interaction(self, meta: Any, c: list[Any]) -> n.Interaction:
        return n.Interaction(c[0], c[1], span=self._s(meta))

    def free_interaction(self, meta: Any, c: list[Any]) -> n.Interaction:
        return n.Interaction(c[0].value, c[1], free=True, span=self._s(meta))

    def relation(self, meta: Any, c: list[Any]) -> str:
        words = [str(t) for t in c]
        canon = {"next to": "beside", "back to back with": "back-to-back"}
        text = " ".join(words)
        return canon.get(text, "-".join(words))

    def placement(self, meta: Any, c: list[Any]) -> n.Placement:
        return n.Placement(c[0], c[1], span=self._s(meta))

    def area_named(self, meta: Any, c: list[Any]) -> n.Area:
        return n.Area(words=" ".join(x.name for x in c), span=self._s(meta))

    def area_box(self, meta: Any, c: list[Any]) -> n.Area:
        return n.Area(box=(c[0], c[1], c[2], c[3]), span=self._s(meta))

    def caption(self, meta: Any, c: list[Any]) -> n.Str:
        return c[0]

    def panel_ref(self, meta: Any, c: list[Any]) -> n.Panel:
        return n.Panel(c[0], None, c[1] if len(c) > 1 else None, span=self._s(meta))

    def panel_inline(self, meta: Any, c: list[Any]) -> n.Panel:
        caption = c[0] if len(c) > 1 else None
        body = c[-1]
        scene = n.Scene(n.Ident("", span=self._s(meta)), body, span=self._s(meta))
        return n.Panel(None, scene, caption, span=self._s(meta))

    def storyboard(self, meta: Any, c: list[Any]) -> n.Storyboard:
        settings = tuple(x for x in c[1:] if isinstance(x, n.Setting))
        panels = tuple(x for x in c[1:] if isinstance(x, n.Panel))
        return n.Storyboard(c[0], settings, panels, span=self._s(meta))


# ------------------------------------------------------------------------------------ public


_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


def parse(text: str, file: str = "<string>") -> n.File:
    """Parse scene-language ``text``; raises DiagnosticError (one syntax error) on bad input."""
    bad = _NOT_TEXT.search(text)  # NUL, or a lone surrogate (from a template variable)
    if bad is not None:
        idx = bad.start()
        line = text.count("\n", 0, idx) + 1
        col = idx - (text.rfind("\n", 0, idx) + 1) + 1
        raise DiagnosticError(
            [
                Diagnostic(
                    "unexpected-character",
                    f"unexpected character U+{ord(bad.group()):04X}",
                    Span(file, line, col, line, col + 1),
                    help="the file looks binary; scene files are UTF-8 text",
                )
            ]
        )
    source = text if text.endswith("\n") else text + "\n"
    comments: list[n.Comment] = []

    def on_comment(tok: Token) -> Token:
        comments.append(n.Comment(str(tok), span=_span(file, tok)))
        return tok

    parser = _lark()
    try:
        tree = _parse_with_comments(parser, source, on_comment)
    except UnexpectedInput as exc:
        raise DiagnosticError([translate(file, exc, source, parser)]) from None
    try:
        items = _ToNodes(file).transform(tree)
    except Exception as exc:  # Lark wraps callback errors in VisitError
        inner = getattr(exc, "orig_exc", exc)
        if isinstance(inner, DiagnosticError):
            raise DiagnosticError(inner.diagnostics) from None
        raise
    lines = source.count("\n")
    return n.File(file, items, tuple(comments), span=Span(file, 1, 1, max(lines, 1), 1))


def _parse_with_comments(parser: Lark, source: str, on_comment: Any) -> Tree[Token]:
    # Lark's lexer_callbacks are fixed at construction; collect comments with a light scan of the
    # token stream instead, so the cached parser stays shareable.
    tree = parser.parse(source)
    for tok in _comment_tokens(source):
        on_comment(tok)
    return tree


_COMMENT_SCAN = re.compile(r'"""[\s\S]*?"""|"(?:[^"\\\n]|\\.)*+"|(#[^\n]*)')


def _comment_tokens(source: str) -> list[Token]:
    """Comments in ``source`` (skipping '#' inside strings), as Tokens with positions."""
    out: list[Token] = []
    line, counted = 1, 0  # newlines are counted once over the text, up to `counted`
    for m in _COMMENT_SCAN.finditer(source):
        if m.group(1) is None:
            continue
        start = m.start(1)
        line += source.count("\n", counted, start)
        counted = start
        col = start - (source.rfind("\n", 0, start) + 1) + 1  # back to its line's start only
        text = m.group(1)
        out.append(
            Token(
                "COMMENT",
                text,
                start_pos=start,
                line=line,
                column=col,
                end_line=line,
                end_column=col + len(text),
            )
        )
    return out
