"""Semantic tokens: every word of the document classified, names by what they refer to.

A lexical scan (comments, strings, numbers, Jinja tags, words) that also works on a file that
does not parse; names are classified from the last index (a concept, a scene, a setting...).
"""

from __future__ import annotations

import re

from scenecraft.lsp import vocabulary as vocab
from scenecraft.lsp.index import Index
from scenecraft.lsp.positions import to_utf16

TOKEN_TYPES = [
    "keyword",
    "string",
    "number",
    "comment",
    "class",  # a concept
    "function",  # a scene
    "namespace",  # a storyboard
    "property",  # a setting key or merge parameter
    "variable",  # a scene's object
    "operator",  # placement, attribute and interaction words
    "enumMember",  # a merge method
    "macro",  # a Jinja tag
]
_BY_KIND = {
    "concept": "class",
    "scene": "function",
    "storyboard": "namespace",
    "setting": "property",
    "merge-param": "property",
    "object": "variable",
    "merge-method": "enumMember",
}
_LEX = re.compile(
    r"(?P<macro>\{%.*?%\}|\{\{.*?\}\}|\{#.*?#\})"
    r'|(?P<string>"""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*")'
    r"|(?P<comment>#[^\n]*)"
    r"|(?P<number>-?[0-9]+(?:x[0-9]+|\.\.-?[0-9]+|\.[0-9]*)?(?:[eE][-+]?[0-9]+)?(?![A-Za-z_]))"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*)",
    re.S,
)


def _fixed_words() -> dict[str, str]:
    words = {w: "keyword" for w in (*vocab.item_keywords(), *vocab.SCENE_KEYWORDS, "panel")}
    words.update({"true": "keyword", "false": "keyword", "and": "operator", "at": "operator"})
    for phrase in (*vocab.relations(), *vocab.attribute_words(), *vocab.interactions()):
        for w in phrase.split():
            words.setdefault(w, "operator")
    return words


def tokens(text: str, file: str, index: Index | None) -> list[int]:
    """The LSP encoding: (delta line, delta start, length, type, modifiers) per token."""
    fixed = _fixed_words()
    names = {
        (o.span.line, o.span.col): _BY_KIND[o.kind]
        for o in (index.occurrences if index else [])
        if o.span.file == file and o.kind in _BY_KIND
    }
    lines = text.split("\n")
    found: list[tuple[int, int, int, int]] = []  # line, start, length (UTF-16), type
    for m in _LEX.finditer(text):
        kind = m.lastgroup or ""
        line = text.count("\n", 0, m.start())
        col = m.start() - (text.rfind("\n", 0, m.start()) + 1)
        if kind == "word":
            kind = names.get((line + 1, col + 1)) or fixed.get(m.group(0), "")
            if not kind:
                continue
        # a token may span lines (a triple-quoted string): one token per line
        for i, part in enumerate(m.group(0).split("\n")):
            start = col if i == 0 else 0
            text_line = lines[line + i]
            begin = to_utf16(text_line, start)
            length = to_utf16(text_line, start + len(part)) - begin
            if length:
                found.append((line + i, begin, length, TOKEN_TYPES.index(kind)))
    data: list[int] = []
    prev_line = prev_start = 0
    for line, start, length, type_ in found:
        delta_start = start - prev_start if line == prev_line else start
        data += [line - prev_line, delta_start, length, type_, 0]
        prev_line, prev_start = line, start
    return data
