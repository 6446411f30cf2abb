"""Lark's positions and parse errors, translated (with parser.py, the only Lark users).

`span` is the one helper that reads a position; `translate` turns a Lark exception into one
`Diagnostic` with a stable code, the rules below recognising the common mistakes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from scenecraft.diagnostics import Diagnostic, Span
from scenecraft.language import nodes as n


def span(file: str, item: Any) -> Span:
    """The one place positions are read: a Lark Token or a tree's ``meta``."""
    if isinstance(item, Token):
        end_line = item.end_line or item.line or 1
        end_col = item.end_column or (item.column or 1) + len(item)
        return Span(file, item.line or 1, item.column or 1, end_line, end_col)
    meta = item.meta if isinstance(item, Tree) else item
    if getattr(meta, "empty", True):
        return n.NOWHERE
    return Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


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
    return span(file, tok)


@dataclass(frozen=True)
class _At:
    """Where a parse stopped on an unexpected token: what each diagnosis rule reads."""

    file: str
    tok: Any  # Lark's `exc.token`, untyped there (as it was read before the split)
    text: str
    span: Span
    expected: set[str]
    note: tuple[str, ...]
    line_text: str


def _unexpected_token(file: str, exc: UnexpectedToken, text: str, parser: Lark) -> Diagnostic:
    """The first rule that recognises the mistake names it; else a plain `unexpected-token`."""
    tok = exc.token
    expected = set(exc.expected or ())
    words = _describe_expected(expected, parser)
    at = _At(
        file=file,
        tok=tok,
        text=text,
        span=_token_span(file, tok, text),
        expected=expected,
        note=("expected " + ", ".join(words[:8]) + (", ..." if len(words) > 8 else ""),),
        line_text=text.split("\n")[tok.line - 1] if tok.line else "",
    )
    for rule in (_block_mistake, _missing_mistake, _keyword_mistake):
        found = rule(at)
        if found is not None:
            return found
    return Diagnostic(
        "unexpected-token",
        f"unexpected {_found(tok)}",
        at.span,
        label="not expected here",
        notes=at.note,
        help=_hint(tok, expected),
    )


def _block_mistake(at: _At) -> Diagnostic | None:
    """A block left open, a `}` or `{` not on a line of its own, a block where none goes."""
    tok, expected, span, line_text = at.tok, at.expected, at.span, at.line_text
    if tok.type == "$END" and "RBRACE" in expected:
        return Diagnostic(
            "unclosed-block",
            "this block is never closed",
            span,
            label="the file ends here",
            notes=at.note,
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
    if (
        tok.type == "LBRACE"
        and line_text.split(" ", 1)[0] in _ITEM_KEYWORDS
        and _block_depth(at.text, tok.start_pos or 0) > 0
    ):
        return Diagnostic(
            "unclosed-block",
            f"`{line_text.split()[0]}` starts a new item but the previous block is not closed",
            Span(at.file, tok.line, 1, tok.line, 1 + len(line_text.split()[0])),
            label="new item here",
            help="add a `}` to close the block above",
        )
    if tok.type not in ("_NL", "$END") and "_NL" in expected and _after_open_brace(tok, at.text):
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
            notes=at.note,
        )
    return None


def _missing_mistake(at: _At) -> Diagnostic | None:
    """A line that ends where a `{` or a quoted string was due."""
    if at.tok.type == "_NL" and "LBRACE" in at.expected:
        return Diagnostic(
            "missing-block",
            "expected `{` to open a block",
            at.span,
            label="block expected here",
            help="blocks open with `{` at the end of the line, e.g. `concept ziggy {`",
        )
    if at.tok.type == "_NL" and "STRING" in at.expected:
        return Diagnostic(
            "missing-value",
            "this statement needs a quoted string",
            at.span,
            label="string expected here",
            notes=at.note,
            help='quote free text, e.g. `wears "a crown"`',
        )
    return None


def _keyword_mistake(at: _At) -> Diagnostic | None:
    """A keyword used as a name, or an item keyword at the margin inside an open block."""
    tok, line_text = at.tok, at.line_text
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
            Span(at.file, tok.line, col, tok.line, col + len(first)),
            label=f"read as the `{first}` keyword",
            notes=(f"a line starting with `{first}` is {_STATEMENT_KEYWORDS[first]}",),
            help=f"rename the concept, e.g. `{first}_1`",
        )
    if (
        tok.type not in ("NAME", "_NL", "$END")
        and "NAME" in at.expected
        and str(tok).isidentifier()
    ):
        return Diagnostic(
            "reserved-word",
            f"`{tok}` is a keyword and cannot be used as a name",
            at.span,
            label="keyword used as a name",
            help=f"pick another name, e.g. `{tok}_1`",
        )
    if str(tok) in _ITEM_KEYWORDS and tok.column == 1:
        return Diagnostic(
            "unclosed-block",
            f"`{tok}` starts a new item but the previous block is not closed",
            at.span,
            label="new item here",
            help="add a `}` to close the block above",
        )
    return None


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


def translate(file: str, exc: UnexpectedInput, text: str, parser: Lark) -> Diagnostic:
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
