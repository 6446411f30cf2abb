"""Text -> syntax tree. The only module that imports Lark.

Lark's exceptions are translated here into `Diagnostic`s (``raise ... from None``), so no Lark
type leaks out. Every node's span comes from `_span`, the one helper that reads positions.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span
from scenecraft.language import nodes as n

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


# ------------------------------------------------------------------------------------- spans


def _span(file: str, item: Any) -> Span:
    """The one place positions are read: a Lark Token or a tree's ``meta``."""
    if isinstance(item, Token):
        end_line = item.end_line or item.line or 1
        end_col = item.end_column or (item.column or 1) + len(item)
        return Span(file, item.line or 1, item.column or 1, end_line, end_col)
    meta = item.meta if isinstance(item, Tree) else item
    if getattr(meta, "empty", True):
        return n.NOWHERE
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


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


# ------------------------------------------------------------------------------ error mapping

_TERMINAL_WORDS = {
    "_NL": "a new line",
    "$END": "the end of the file",
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "SIZE": "a size like `512x512`",
    "RANGE": "a range like `1..4`",
    "BOOL": "`true` or `false`",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "COMMA": "`,`",
    "LPAR": "`(`",
    "RPAR": "`)`",
}

_STATEMENT_KEYWORDS = {
    "object": 'an object declaration: `object NAME "text"`',
    "together": 'a group activity: `together "text"`',
}
_ITEM_KEYWORDS = ("model", "include", "concept", "merge", "defaults", "scene", "storyboard")


def _describe_expected(expected: set[str], parser: Lark) -> list[str]:
    words: list[str] = []
    for name in sorted(expected):
        if name in _TERMINAL_WORDS:
            words.append(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
            words.append(f"`{pattern.value}`" if pattern.type == "str" else name.lower())
        except KeyError:
            words.append(name.lower())
    return sorted(set(words))


def _found(tok: Token) -> str:
    if tok.type == "_NL":
        return "the end of the line"
    if tok.type == "$END":
        return "the end of the file"
    text = str(tok)
    return f"`{text if len(text) <= 30 else text[:27] + '...'}`"


def _token_span(file: str, tok: Token, text: str) -> Span:
    if tok.type == "$END" or tok.line is None:
        lines = text.split("\n")
        line = max(len(lines) - 1, 1) if text.endswith("\n") else len(lines)
        col = len(lines[line - 1]) + 1 if lines else 1
        return Span(file, line, col, line, col + 1)
    if tok.type == "_NL":
        return Span(file, tok.line, tok.column or 1, tok.line, (tok.column or 1) + 1)
    return _span(file, tok)


def _unexpected_token(file: str, exc: UnexpectedToken, text: str, parser: Lark) -> Diagnostic:
    tok = exc.token
    span = _token_span(file, tok, text)
    expected = set(exc.expected or ())
    words = _describe_expected(expected, parser)
    note = ("expected " + ", ".join(words[:8]) + (", ..." if len(words) > 8 else ""),)
    if tok.type == "$END" and "RBRACE" in expected:
        return Diagnostic(
            "unclosed-block",
            "this block is never closed",
            span,
            label="the file ends here",
            notes=note,
            help="add a `}` on its own line to close the block",
        )
    if tok.type == "RBRACE" and "_NL" in expected:
        return Diagnostic(
            "brace-on-same-line",
            "`}` must be on its own line",
            span,
            label="put this on the next line",
            help="end the statement with a new line before `}`",
        )
    line_text = text.split("\n")[tok.line - 1] if tok.line else ""
    if (
        tok.type == "LBRACE"
        and line_text.split(" ", 1)[0] in _ITEM_KEYWORDS
        and _block_depth(text, tok.start_pos or 0) > 0
    ):
        return Diagnostic(
            "unclosed-block",
            f"`{line_text.split()[0]}` starts a new item but the previous block is not closed",
            Span(file, tok.line, 1, tok.line, 1 + len(line_text.split()[0])),
            label="new item here",
            help="add a `}` to close the block above",
        )
    if tok.type not in ("_NL", "$END") and "_NL" in expected and _after_open_brace(tok, text):
        return Diagnostic(
            "brace-on-same-line",
            "a block's `{` must end its line",
            span,
            label="start a new line here",
            help="put each statement on its own line and the closing `}` on a line of its own",
        )
    if tok.type == "LBRACE" and "_NL" in expected:
        return Diagnostic(
            "unexpected-block",
            "a `{` block is not allowed here",
            span,
            label="unexpected `{`",
            notes=note,
        )
    if tok.type == "_NL" and "LBRACE" in expected:
        return Diagnostic(
            "missing-block",
            "expected `{` to open a block",
            span,
            label="block expected here",
            help="blocks open with `{` at the end of the line, e.g. `concept ziggy {`",
        )
    if tok.type == "_NL" and "STRING" in expected:
        return Diagnostic(
            "missing-value",
            "this statement needs a quoted string",
            span,
            label="string expected here",
            notes=note,
            help='quote free text, e.g. `wears "a crown"`',
        )
    first = line_text.split(None, 1)[0].rstrip(",") if line_text.strip() else ""
    before = line_text[: (tok.column or 1) - 1].split()
    if (
        first in _STATEMENT_KEYWORDS
        and tok.type not in ("NAME", "STRING", "_NL", "$END")
        and (tok.type == "COMMA" or str(tok).isidentifier())
        and (before == [first] or (first == "object" and len(before) == 2))
    ):
        col = len(line_text) - len(line_text.lstrip()) + 1
        return Diagnostic(
            "reserved-word",
            f"`{first}` is a keyword and cannot be used as a name",
            Span(file, tok.line, col, tok.line, col + len(first)),
            label=f"read as the `{first}` keyword",
            notes=(f"a line starting with `{first}` is {_STATEMENT_KEYWORDS[first]}",),
            help=f"rename the concept, e.g. `{first}_1`",
        )
    if tok.type not in ("NAME", "_NL", "$END") and "NAME" in expected and str(tok).isidentifier():
        return Diagnostic(
            "reserved-word",
            f"`{tok}` is a keyword and cannot be used as a name",
            span,
            label="keyword used as a name",
            help=f"pick another name, e.g. `{tok}_1`",
        )
    if str(tok) in _ITEM_KEYWORDS and tok.column == 1:
        return Diagnostic(
            "unclosed-block",
            f"`{tok}` starts a new item but the previous block is not closed",
            span,
            label="new item here",
            help="add a `}` to close the block above",
        )
    return Diagnostic(
        "unexpected-token",
        f"unexpected {_found(tok)}",
        span,
        label="not expected here",
        notes=note,
        help=_hint(tok, expected),
    )


_STRINGS_AND_COMMENTS = re.compile(r'"""[\s\S]*?"""|"(?:[^"\\\n]|\\.)*+"|#[^\n]*')


def _block_depth(text: str, pos: int) -> int:
    """How many `{` are open before ``pos`` (strings and comments skipped)."""
    code = _STRINGS_AND_COMMENTS.sub("", text[:pos])
    return code.count("{") - code.count("}")


def _after_open_brace(tok: Token, text: str) -> bool:
    """True when ``tok`` follows a `{` on the same line (``concept x { token "<X>" }``)."""
    start = tok.start_pos if tok.start_pos is not None else 0
    line_start = text.rfind("\n", 0, start) + 1
    return text[line_start:start].rstrip().endswith("{")


def _hint(tok: Token, expected: set[str]) -> str | None:
    if tok.type == "NAME" and expected <= {"_NL", "COMMA"}:
        return "separate names with `,`; quote free text with double quotes"
    if tok.type == "NAME" and "STRING" in expected:
        return 'free text must be quoted: `"..."`'
    if tok.type == "NAME" and any(k in expected for k in ("MODEL", "CONCEPT", "SCENE")):
        keywords = ", ".join(f"`{k}`" for k in _ITEM_KEYWORDS)
        return f"a file holds items starting with {keywords}"
    return None


def _unexpected_char(file: str, exc: UnexpectedCharacters, text: str) -> Diagnostic:
    line = exc.line or 1
    col = exc.column or 1
    span = Span(file, line, col, line, col + 1)
    char = exc.char
    if char == '"':
        return Diagnostic(
            "unterminated-string",
            "this string is never closed",
            span,
            label="string starts here",
            help='close it with `"` on the same line, or use `"""` for text over several lines',
        )
    if char == "\t":
        char_text = "a tab"
    elif char.isprintable():
        char_text = f"`{char}`"
    else:
        char_text = f"character U+{ord(char):04X}"
    return Diagnostic(
        "unexpected-character",
        f"unexpected {char_text}",
        span,
        label="not valid here",
        help="names use letters, digits, `_` and `-`; free text goes in double quotes",
    )


def _translate(file: str, exc: UnexpectedInput, text: str, parser: Lark) -> Diagnostic:
    if isinstance(exc, UnexpectedToken):
        return _unexpected_token(file, exc, text, parser)
    if isinstance(exc, UnexpectedCharacters):
        return _unexpected_char(file, exc, text)
    assert isinstance(exc, UnexpectedEOF)
    return Diagnostic(
        "unclosed-block",
        "the file ends in the middle of an item",
        _token_span(file, Token("$END", ""), text),
        help="close every `{` with a `}`",
    )


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
        raise DiagnosticError([_translate(file, exc, source, parser)]) from None
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
