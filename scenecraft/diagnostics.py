"""Diagnostics as data: every user error in scenecraft is a `Diagnostic`.

A diagnostic has a stable kebab-case ``code`` (documented in docs/errors.md), a message that
stands alone, an optional source ``span``, secondary ``labels``, ``notes`` and one ``help`` line.
Phases collect diagnostics and raise them together as a `DiagnosticError`; only the CLI turns
them into text (`render_text` here for plain output, `scenecraft.ui` for Rich).
"""

from __future__ import annotations

import json
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from difflib import get_close_matches
from functools import lru_cache
from typing import Any, Literal

from scenecraft.files import read_capped

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file; lines and columns are 1-based, ``end_col`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "end_line": self.end_line,
            "end_col": self.end_col,
        }


@dataclass(frozen=True)
class Label:
    """A secondary span with a short message ("first defined here")."""

    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str  # stable kebab-case id, one entry per code in docs/errors.md
    message: str  # lowercase, no trailing period, names in backticks
    span: Span | None = None  # where; None for errors with no source location
    severity: Severity = "error"
    label: str = ""  # short text under the caret
    labels: tuple[Label, ...] = ()  # secondary locations
    notes: tuple[str, ...] = ()  # `= note:` lines
    help: str | None = None  # one `help:` line with the fix

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "span": self.span.as_dict() if self.span else None,
            "label": self.label,
            "labels": [{"span": lb.span.as_dict(), "message": lb.message} for lb in self.labels],
            "notes": list(self.notes),
            "help": self.help,
        }

    def sort_key(self) -> tuple[str, int, int, str]:
        if self.span is None:
            return ("", 0, 0, self.code)
        return (self.span.file, self.span.line, self.span.col, self.code)


class DiagnosticError(Exception):
    """Raised when a phase found one or more errors; carries all of them (and any warnings)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        # one error per problem: identical diagnostics (a template loop repeating a bad line) once
        unique = list(dict.fromkeys(diagnostics))
        self.diagnostics: list[Diagnostic] = sorted(unique, key=Diagnostic.sort_key)
        first = next((d for d in self.diagnostics if d.is_error), None)
        super().__init__(first.message if first else "error")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]


def error(code: str, message: str, span: Span | None = None, **kw: Any) -> DiagnosticError:
    """Shorthand: a DiagnosticError holding one error diagnostic."""
    return DiagnosticError([Diagnostic(code, message, span, **kw)])


class Collector:
    """Collects diagnostics across a phase; `check()` raises if any error was seen."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def add(self, diagnostic: Diagnostic) -> None:
        self.diagnostics.append(diagnostic)

    def error(self, code: str, message: str, span: Span | None = None, **kw: Any) -> None:
        self.add(Diagnostic(code, message, span, **kw))

    def warn(self, code: str, message: str, span: Span | None = None, **kw: Any) -> None:
        self.add(Diagnostic(code, message, span, severity="warning", **kw))

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run a block; a DiagnosticError inside it is collected instead of propagated."""
        try:
            yield
        except DiagnosticError as exc:
            self.diagnostics.extend(exc.diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    def check(self) -> None:
        if self.has_errors:
            raise DiagnosticError(self.diagnostics)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A `help:` line suggesting the closest name in scope, or None."""
    matches = get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            matches = [lowered[name.lower()]]
    return f"did you mean `{matches[0]}`?" if matches else None


# --------------------------------------------------------------------------- text rendering


MAX_SOURCE_BYTES = 4 * 1024 * 1024  # a file read only to quote a line from it
MAX_QUOTED = 160  # characters of a source line quoted around the caret (long lines are clipped)


@lru_cache(maxsize=8)
def _line_starts(text: str) -> array[int]:
    """Offsets where each line of ``text`` starts: computed once per text, then bisected."""
    starts = array("q", [0])
    starts.extend(m.end() for m in re.finditer("\n", text))
    return starts


def line_text(text: str, line: int, strip_cr: bool = True) -> str | None:
    """Line ``line`` (1-based) of ``text`` without its newline, or None past the end."""
    starts = _line_starts(text)
    if not 1 <= line <= len(starts):
        return None
    start = starts[line - 1]
    end = starts[line] - 1 if line < len(starts) else len(text)
    return text[start:end].rstrip("\r") if strip_cr else text[start:end]


def line_number(text: str, offset: int) -> tuple[int, int]:
    """(line, column), 1-based, of character ``offset`` in ``text`` (bisect in the line table)."""
    starts = _line_starts(text)
    line = bisect_right(starts, offset)
    return line, offset - starts[line - 1] + 1


def _source_line(sources: Mapping[str, str], span: Span) -> str | None:
    text = sources.get(span.file)
    if text is None:
        text = _read_source(span.file)
    return None if text is None else line_text(text, span.line)


@lru_cache(maxsize=8)
def _read_source(file: str) -> str | None:
    """A file a diagnostic names but the caller did not pass: read once, at most 4 MiB."""
    try:
        return read_capped(file, MAX_SOURCE_BYTES).decode("utf-8", errors="replace")
    except (OSError, ValueError):  # missing, too large, not a regular file: quote nothing
        return None


def _clip(line: str, span: Span) -> tuple[str, Span]:
    """A window of at most MAX_QUOTED characters around the span, with `...` where cut."""
    if len(line) <= MAX_QUOTED:
        return line, span
    start = min(max(span.col - 1 - MAX_QUOTED // 4, 0), len(line))
    text = line[start : start + MAX_QUOTED]
    head = "..." if start > 0 else ""
    tail = "..." if start + MAX_QUOTED < len(line) else ""
    shift = start - len(head)
    end_col = span.end_col - shift if span.end_line == span.line else MAX_QUOTED + 1
    clipped = Span(span.file, span.line, span.col - shift, span.line, end_col)
    return head + text + tail, clipped


def _caret(line: str, span: Span) -> str:
    start = max(span.col - 1, 0)
    end = span.end_col - 1 if span.end_line == span.line else len(line)
    width = max(min(end, len(line)) - start, 1)
    # Keep tabs so the caret lines up under the user's text as their terminal shows it.
    prefix = "".join("\t" if ch == "\t" else " " for ch in line[:start])
    return prefix + "^" * width


def render_text(diagnostic: Diagnostic, sources: Mapping[str, str] | None = None) -> str:
    """Render one diagnostic rustc/ruff style as plain text (no colour)."""
    sources = sources or {}
    out = [f"{diagnostic.severity}[{diagnostic.code}]: {diagnostic.message}"]
    span = diagnostic.span
    gutter = " " * (len(str(span.line)) if span else 1)
    if span is not None:
        out.append(f"{gutter}--> {span}")
        line = _source_line(sources, span)
        if line is not None:
            line, span = _clip(line, span)
            out.append(f"{gutter} |")
            out.append(f"{span.line} | {line}")
            caret = _caret(line, span)
            out.append(f"{gutter} | {caret} {diagnostic.label}".rstrip())
    for label in diagnostic.labels:
        out.append(f"{gutter}::: {label.span}: {label.message}")
    for note in diagnostic.notes:
        out.append(f"{gutter} = note: {note}")
    if diagnostic.help:
        out.append(f"{gutter} = help: {diagnostic.help}")
    return "\n".join(out)


MAX_SHOWN = 50  # diagnostics printed in all; the rest are counted, not printed
MAX_SAME = 3  # diagnostics printed with the same code and message (at other places)


def shown(diagnostics: Iterable[Diagnostic]) -> tuple[list[Diagnostic], list[Diagnostic]]:
    """(the diagnostics worth printing, the ones left out).

    One problem repeated 20,000 times (`extra a,a,a,...`) prints a few times, not 20,000:
    at most MAX_SAME with one code and message, and at most MAX_SHOWN in all.
    """
    out: list[Diagnostic] = []
    hidden: list[Diagnostic] = []
    same: dict[tuple[str, str], int] = {}
    for d in diagnostics:
        key = (d.code, d.message)
        same[key] = same.get(key, 0) + 1
        (hidden if same[key] > MAX_SAME or len(out) >= MAX_SHOWN else out).append(d)
    return out, hidden


def more_line(hidden: list[Diagnostic]) -> str:
    """``... and 19,950 more errors`` (and warnings) for the diagnostics left out."""
    errors = sum(d.is_error for d in hidden)
    counts = ((errors, "error"), (len(hidden) - errors, "warning"))
    return "... and " + " and ".join(f"{n:,} more {w}{'s' * (n != 1)}" for n, w in counts if n)


def render_all(diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None) -> str:
    out, hidden = shown(diagnostics)
    text = "\n\n".join(render_text(d, sources) for d in out)
    return text + ("\n\n" + more_line(hidden) if hidden else "")


def to_json(diagnostics: Iterable[Diagnostic]) -> str:
    return json.dumps([d.as_dict() for d in diagnostics], indent=2)
