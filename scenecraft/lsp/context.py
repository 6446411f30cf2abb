"""Where the cursor is: the enclosing block and the statement typed so far (for completion).

Read from the text, not the syntax tree: while a statement is being typed the file rarely parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRINGS_AND_COMMENTS = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')
_JINJA = re.compile(r"\{[%{#]|[%}#]\}")  # Jinja's delimiters: not the language's braces
_HEADER = re.compile(r"^\s*(concept|merge|defaults|scene|storyboard|panel|model)\b\s*([\w-]*)")


@dataclass(frozen=True)
class Block:
    kind: str  # "top", "concept", "merge", "defaults", "scene", "storyboard"
    name: str = ""  # the concept, merge method, scene or storyboard named in the header


@dataclass(frozen=True)
class Context:
    block: Block
    prefix: str  # the line up to the cursor
    in_string: bool  # the cursor is inside a "..." string
    string_start: int  # column after the opening quote, when in_string

    @property
    def words(self) -> list[str]:
        """The words typed before the cursor (strings left out)."""
        return _STRINGS_AND_COMMENTS.sub(" ", self.prefix).split()

    @property
    def at_word_start(self) -> bool:
        """The cursor is on the statement's first word (typing it, or nothing typed yet)."""
        words = self.words
        return not words or (len(words) == 1 and not self.prefix.endswith((" ", "\t")))

    @property
    def settled(self) -> list[str]:
        """The words before the one being typed."""
        words = self.words
        return words if self.prefix.endswith((" ", "\t", '"')) else words[:-1]


def _header(line: str, stack: list[Block]) -> Block:
    m = _HEADER.match(line)
    if not m:
        return Block("other")
    kind, name = m.group(1), m.group(2)
    if kind == "panel":  # an inline scene: named after its storyboard and position
        board = stack[-1].name if stack else ""
        return Block("scene", f"{board}-?")
    return Block(kind, name if kind != "defaults" else "")


def block_at(lines: list[str], line: int) -> Block:
    """The innermost block open at the start of 0-based ``line``."""
    stack: list[Block] = []
    for text in lines[:line]:
        code = _STRINGS_AND_COMMENTS.sub('""', _JINJA.sub("  ", text))
        for ch in code:
            if ch == "{":
                stack.append(_header(code, stack))
            elif ch == "}" and stack:
                stack.pop()
    return stack[-1] if stack else Block("top")


def context_at(lines: list[str], line: int, col: int) -> Context:
    """The context of a cursor at 0-based ``line`` and character column ``col``."""
    text = lines[line] if line < len(lines) else ""
    prefix = text[:col]
    in_string = False
    start = 0
    i = 0
    while i < len(prefix):
        ch = prefix[i]
        if ch == "\\" and in_string:
            i += 2
            continue
        if ch == '"':
            in_string = not in_string
            start = i + 1
        elif ch == "#" and not in_string:
            break
        i += 1
    return Context(block_at(lines, line), prefix, in_string, start)
