"""Parsing an edited document again without parsing what did not change.

The text is cut into runs of whole top-level items (a cut before each line that starts an item
at brace depth 0); each run is parsed alone, padded with the newlines before it so that its
spans are the whole file's, and remembered by (first line, text). An edit inside one scene then
parses that scene only. The items and comments of the runs, in order, are the file's: the
grammar's top level is a plain sequence of items. If any run fails to parse, the whole text is
parsed as `scenecraft check` parses it, so syntax errors are exactly check's.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from scenecraft.diagnostics import DiagnosticError, Span
from scenecraft.language import nodes as n
from scenecraft.language.parser import parse
from scenecraft.lsp.vocabulary import item_keywords

MAX_CACHED = 20_000  # runs remembered (a run is a few lines: memory stays small)
_STRINGS_AND_COMMENTS = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*')
_TRIPLE = '"""'


class Reparser:
    """A `parse` with the same result that reuses the runs of items it parsed before."""

    def __init__(self) -> None:
        self.cache: OrderedDict[tuple[str, int, str], n.File] = OrderedDict()
        self.starts = re.compile(rf"^\s*({'|'.join(item_keywords())})\b")
        self.parsed_runs = 0  # runs parsed (not found in the cache), for tests and benchmarks

    def __call__(self, text: str, file: str) -> n.File:
        items: list[n.Item] = []
        comments: list[n.Comment] = []
        try:
            for first_line, run in self.runs(text):
                tree = self.parse_run(file, first_line, run)
                items += tree.items
                comments += tree.comments
        except DiagnosticError:
            return parse(text, file)  # the error exactly as `check` reports it
        source = text if text.endswith("\n") else text + "\n"
        lines = source.count("\n")
        return n.File(file, tuple(items), tuple(comments), span=Span(file, 1, 1, max(lines, 1), 1))

    def parse_run(self, file: str, first_line: int, run: str) -> n.File:
        key = (file, first_line, run)
        found = self.cache.get(key)
        if found is not None:
            self.cache.move_to_end(key)
            return found
        tree = parse("\n" * first_line + run, file)
        self.parsed_runs += 1
        self.cache[key] = tree
        if len(self.cache) > MAX_CACHED:
            self.cache.popitem(last=False)
        return tree

    def runs(self, text: str) -> list[tuple[int, str]]:
        """(0-based first line, text) of each run of whole items, in order."""
        lines = text.split("\n")
        cuts = [0]
        depth = 0
        in_triple = False
        for i, line in enumerate(lines):
            if i and depth == 0 and not in_triple and self.starts.match(line):
                cuts.append(i)
            if line.count(_TRIPLE) % 2:
                in_triple = not in_triple
            if not in_triple and _TRIPLE not in line:
                code = _STRINGS_AND_COMMENTS.sub("", line)
                depth = max(depth + code.count("{") - code.count("}"), 0)
        cuts.append(len(lines))
        return [
            (a, "\n".join(lines[a:b]) + ("\n" if b < len(lines) else ""))
            for a, b in zip(cuts, cuts[1:], strict=False)
            if a < b
        ]
