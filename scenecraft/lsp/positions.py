"""Positions: scenecraft spans (1-based, columns in characters) <-> LSP (0-based, UTF-16)."""

from __future__ import annotations

import re

from lsprotocol.types import Position as Pos
from lsprotocol.types import Range as Rng

from scenecraft.diagnostics import Span

_WORD = re.compile(r"[A-Za-z0-9_-]")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def to_utf16(line_text: str, col: int) -> int:
    """A 0-based character column -> UTF-16 units."""
    return utf16_len(line_text[:col])


def from_utf16(line_text: str, units: int) -> int:
    """UTF-16 units -> a 0-based character column (clamped to the line)."""
    count = 0
    for i, ch in enumerate(line_text):
        if count >= units:
            return i
        count += 2 if ord(ch) > 0xFFFF else 1
    return len(line_text)


class Lines:
    """A document's lines, for converting positions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")

    def get(self, line: int) -> str:
        """A 0-based line without its newline ("" past the end)."""
        return self.lines[line].rstrip("\r") if 0 <= line < len(self.lines) else ""

    def range_of(self, span: Span) -> Rng:
        """A scenecraft span -> an LSP range."""
        start = Pos(span.line - 1, to_utf16(self.get(span.line - 1), span.col - 1))
        end = Pos(span.end_line - 1, to_utf16(self.get(span.end_line - 1), span.end_col - 1))
        return Rng(start, end)

    def column(self, pos: Pos) -> int:
        """The 0-based character column of an LSP position."""
        return from_utf16(self.get(pos.line), pos.character)

    def whole(self) -> Rng:
        """The range of the whole document."""
        last = len(self.lines) - 1
        return Rng(Pos(0, 0), Pos(last, utf16_len(self.get(last))))

    def word_at(self, pos: Pos) -> tuple[str, int, int]:
        """The name (letters, digits, `_`, `-`) under ``pos``: (word, start col, end col)."""
        line = self.get(pos.line)
        col = self.column(pos)
        start = col
        while start > 0 and _WORD.match(line[start - 1]):
            start -= 1
        end = col
        while end < len(line) and _WORD.match(line[end]):
            end += 1
        return line[start:end], start, end


def contains(span: Span, line: int, col: int) -> bool:
    """Whether the 1-based (line, col) lies in ``span`` (end inclusive, for a cursor after a
    word)."""
    if (line, col) < (span.line, span.col):
        return False
    return (line, col) <= (span.end_line, span.end_col)
