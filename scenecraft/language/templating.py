"""Jinja2 scene templates: one file expands into many scene variants.

The template runs in Jinja2's `SandboxedEnvironment` with `StrictUndefined`, so a template can
neither reach Python internals nor silently print an empty string for a typo'd variable.
Every template line is tagged with an invisible marker before rendering; the markers that reach
the output say which template line each output line came from, so errors found later (by the
parser or the checker) point into the template itself.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span, did_you_mean, line_number
from scenecraft.files import NotARegularFile, TooLarge, read_capped
from scenecraft.language.sandbox import (
    MAX_OUTPUT_CHARS,
    BoundedEnvironment,
    TemplateLimit,
    environment,
    timeout,
)

_MARK = "\ue000{}\ue001"
_MARK_RE = re.compile("\ue000([0-9]+)\ue001")
_TEMPLATE_HINT = re.compile(r"\{%|\{\{")


def is_template(path: Path, text: str) -> bool:
    """A `.j2`/`.jinja` file, or one that uses Jinja's `{% %}` or `{{ }}` delimiters."""
    return path.suffix in (".j2", ".jinja") or _TEMPLATE_HINT.search(text) is not None


@dataclass(frozen=True)
class Rendered:
    text: str  # the scene-language text the template produced
    line_map: tuple[int, ...]  # output line (0-based index) -> template line (1-based)


# ------------------------------------------------------------------------------- bounds
# A template runs user code; scenecraft.language.sandbox bounds what it may build, here its
# time is bounded (docs/errors.md, `template-limit`).
MAX_SECONDS = 10.0  # wall time of one rendering
VARS_FILE_BYTES = 4 * 1024 * 1024  # a --vars file
MAX_VARS_DEPTH = 64  # lists and tables nested in a --vars file or a --var value


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt a rendering that runs past ``seconds`` (main thread only: SIGALRM).

    Off the main thread only the clock checks in calls, operators and ranges apply.
    """
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise timeout(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _render_bounded(template: jinja2.Template, env: BoundedEnvironment, variables: Any) -> str:
    """Render chunk by chunk, stopping at the output cap or the deadline."""
    budget = env.start(MAX_SECONDS)
    parts: list[str] = []
    size = 0
    with _alarm(MAX_SECONDS):
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                marks = _MARK_RE.findall(chunk) or _MARK_RE.findall("".join(parts[-64:]))
                raise TemplateLimit(
                    f"the template's output is larger than {MAX_OUTPUT_CHARS // (1024 * 1024)} MiB",
                    "generate fewer scenes per file, or split the template",
                    line=int(marks[-1]) if marks else None,
                )
            parts.append(chunk)
            budget.tick()
    return "".join(parts)


def _strict_tojson(tojson: Any) -> Any:
    """Jinja's `tojson` serialises an undefined value instead of failing; make it fail."""

    def strict(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()
        return tojson(eval_ctx, value, indent)

    return jinja2.pass_eval_context(strict)


_OPENERS = {"{%": "%}", "{{": "}}", "{#": "#}"}
_OPEN_RE = re.compile(r"\{[%{#]")


def _instrument(text: str) -> str:
    """Mark the start of every line, except lines that begin inside a (multi-line) Jinja tag:
    a marker there would break the tag, and the tag's output keeps its first line's marker."""
    out: list[str] = []
    closer: str | None = None  # the delimiter that ends the tag a line begins in
    for i, line in enumerate(text.splitlines(keepends=True), 1):
        out.append(line if closer else _MARK.format(i) + line)
        at = 0
        while True:
            if closer:
                end = line.find(closer, at)
                if end < 0:
                    break
                at, closer = end + 2, None
            else:
                m = _OPEN_RE.search(line, at)
                if m is None:
                    break
                at, closer = m.end(), _OPENERS[m.group(0)]
    return "".join(out)


def _strip_marks(out: str, template_lines: int) -> Rendered:
    texts: list[str] = []
    mapping: list[int] = []
    current = 1
    for line in out.split("\n"):
        marks = _MARK_RE.findall(line)
        if marks:
            # the last marker before the line's first real character is where it started
            head = re.match(f"(?:{_MARK_RE.pattern})+", line)
            lead = _MARK_RE.findall(head.group(0)) if head else []
            current = int((lead or marks)[-1])
        texts.append(_MARK_RE.sub("", line))
        mapping.append(min(current, max(template_lines, 1)))
    return Rendered("\n".join(texts), tuple(mapping))


def _template_line(tb: TracebackType | None, name: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _span_for(file: str, text: str, line: int, needle: str | None) -> Span:
    lines = text.splitlines() or [""]
    line = min(max(line, 1), len(lines))
    src = lines[line - 1]
    if needle:
        m = re.search(rf"\b{re.escape(needle)}\b", src)
        if m:
            return Span(file, line, m.start() + 1, line, m.end() + 1)
    indent = len(src) - len(src.lstrip())
    return Span(file, line, indent + 1, line, max(len(src), indent + 1) + 1)


_BLOCK_TAG = re.compile(r"\{%[-+]?\s*(\w+)([^%]*)")
_BLOCKS = {"if", "for", "macro", "call", "filter", "block", "with", "raw", "set"}


def _syntax_error_line(exc: jinja2.TemplateSyntaxError, text: str) -> int:
    """Jinja reports an unclosed block at the end of the template; point at its opening tag."""
    if "end of template" not in (exc.message or ""):
        return exc.lineno
    stack: list[tuple[str, int]] = []
    for m in _BLOCK_TAG.finditer(text):
        tag, rest = m.group(1), m.group(2)
        line = line_number(text, m.start())[0]
        if tag in _BLOCKS and not (tag == "set" and "=" in rest):
            stack.append((tag, line))
        elif tag.startswith("end") and stack and stack[-1][0] == tag[3:]:
            stack.pop()
    return stack[-1][1] if stack else exc.lineno


def render_template(text: str, file: str, variables: dict[str, Any]) -> Rendered:
    """Render ``text`` with ``variables``; raises DiagnosticError pointing into the template."""
    env = environment(_strict_tojson)
    lines = text.count("\n") + 1
    _refuse_string_loops(env, text, file, variables)
    try:
        try:
            template = env.from_string(_instrument(text))
            template.filename = file
        except jinja2.TemplateSyntaxError:
            template = env.from_string(text)  # a marker broke a tag after all; map to line 1
        out = _render_bounded(template, env, variables)
    except TemplateLimit as exc:
        line = exc.line or _template_line(sys.exc_info()[2], file) or 1
        raise DiagnosticError(
            [
                Diagnostic(
                    "template-limit",
                    f"template stopped: {exc.what}",
                    _span_for(file, text, line, None),
                    label="while rendering this line",
                    notes=("templates are bounded in time, output size and the values they build",),
                    help=exc.help,
                )
            ]
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise DiagnosticError(
            [
                Diagnostic(
                    "template-syntax-error",
                    f"template syntax error: {exc.message}",
                    _span_for(file, text, _syntax_error_line(exc, text), None),
                    label="in this template line",
                    help="see https://jinja.palletsprojects.com/templates/ for the syntax",
                )
            ]
        ) from None
    except jinja2.UndefinedError as exc:
        raise _undefined(exc, text, file, variables) from None
    except jinja2.exceptions.SecurityError as exc:
        line = _template_line(sys.exc_info()[2], file) or 1
        raise DiagnosticError(
            [
                Diagnostic(
                    "template-unsafe",
                    f"the template tried something the sandbox forbids: {exc}",
                    _span_for(file, text, line, None),
                    help="templates may use variables, loops, conditionals and filters only",
                )
            ]
        ) from None
    except Exception as exc:  # any other error raised while rendering user code
        line = _template_line(sys.exc_info()[2], file) or 1
        raise DiagnosticError(
            [
                Diagnostic(
                    "template-error",
                    f"the template failed while rendering: {type(exc).__name__}: {exc}",
                    _span_for(file, text, line, None),
                    label="while rendering this line",
                )
            ]
        ) from None
    return _strip_marks(out, lines)


def _refuse_string_loops(
    env: jinja2.Environment, text: str, file: str, variables: dict[str, Any]
) -> None:
    """``{% for place in places %}`` over ``--var places="on grass"`` would loop over letters
    (``scene p-- {``): a string variable given where the template loops is a `bad-variable`."""
    try:
        tree = env.parse(text)
    except jinja2.TemplateSyntaxError:
        return  # rendering reports it, with its line
    for loop in tree.find_all(jinja2.nodes.For):
        it = loop.iter
        if isinstance(it, jinja2.nodes.Name) and isinstance(variables.get(it.name), str):
            value = variables[it.name]
            raise DiagnosticError(
                [
                    Diagnostic(
                        "bad-variable",
                        f"`{it.name}` is a string, but this `for` loops over it letter by letter",
                        _span_for(file, text, loop.lineno, it.name),
                        label="expects a list",
                        help=f"pass a list: `--var {it.name}='{json.dumps([value])}'`, or "
                        f"`{it.name} = {json.dumps([value])}` in a --vars TOML file",
                    )
                ]
            )


def _undefined(
    exc: jinja2.UndefinedError, text: str, file: str, variables: dict[str, Any]
) -> DiagnosticError:
    line = _template_line(exc.__traceback__, file) or 1
    m = re.search(r"'([^']+)' is undefined", str(exc))
    name = m.group(1) if m else None
    attr = re.search(r"has no attribute '([^']+)'", str(exc))
    needle = name or (attr.group(1) if attr else None)
    hint = did_you_mean(name, variables) if name else None
    if name and not hint:
        hint = f"pass it with `--var {name}=...` or in a `--vars` file"
    return DiagnosticError(
        [
            Diagnostic(
                "undefined-variable",
                f"template variable `{needle}` is undefined" if needle else str(exc.message),
                _span_for(file, text, line, needle),
                label="undefined",
                notes=(
                    ("defined: " + ", ".join(f"`{k}`" for k in sorted(variables)),)
                    if variables
                    else ("no variables were given",)
                ),
                help=hint,
            )
        ]
    )


# ------------------------------------------------------------------------- --var / --vars


def parse_var(item: str) -> tuple[str, Any]:
    """``key=value``; the value is read as JSON when it parses (numbers, lists), else a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise DiagnosticError(
            [
                Diagnostic(
                    "bad-variable",
                    f"`--var {item}` is not of the form `name=value`",
                    help="e.g. `--var place=library` or `--var seeds=[1,2,3]`",
                )
            ]
        )
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    except RecursionError:  # `[[[[...` nested past Python's recursion limit
        value = _TOO_DEEP
    if value is _TOO_DEEP or _depth(value) > MAX_VARS_DEPTH:
        raise DiagnosticError(
            [
                Diagnostic(
                    "bad-variable",
                    f"`--var {key}=...` nests lists or tables more than {MAX_VARS_DEPTH} deep",
                    help="template variables are flat values, lists and small tables",
                )
            ]
        )
    return key, value


_TOO_DEEP = object()  # a value that nested past Python's recursion limit while parsing


def _depth(value: Any) -> int:
    """How deeply lists and tables nest in ``value`` (iterative: no recursion on deep input)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_VARS_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def read_vars_file(path: str | Path) -> dict[str, Any]:
    """Variables from a .toml or .json file."""
    p = Path(path)
    try:
        raw = read_capped(p, VARS_FILE_BYTES)
    except (NotARegularFile, TooLarge) as exc:
        raise DiagnosticError(
            [
                Diagnostic(
                    "bad-variables-file",
                    f"cannot read variables file `{p}`: {exc.strerror}",
                    help="--vars takes a .toml or .json file of at most 4 MiB",
                )
            ]
        ) from None
    except (OSError, ValueError) as exc:
        raise DiagnosticError(
            [
                Diagnostic(
                    "file-not-found",
                    f"cannot read variables file `{p}`: {getattr(exc, 'strerror', None) or exc}",
                    help="check the path given to --vars",
                )
            ]
        ) from None
    try:
        if p.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data: Any = tomllib.loads(raw.decode("utf-8"))
        elif p.suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            raise ValueError("expected a .toml or .json file")
    except RecursionError:
        data = _TOO_DEEP  # nested past Python's recursion limit: reported below
    except (ValueError, UnicodeDecodeError) as exc:
        at = re.search(r"line (\d+), column (\d+)", str(exc))  # tomllib before 3.14
        line = getattr(exc, "lineno", None) or (int(at.group(1)) if at else 1)
        col = getattr(exc, "colno", None) or (int(at.group(2)) if at else 1)
        raise DiagnosticError(
            [
                Diagnostic(
                    "bad-variables-file",
                    f"cannot read variables from `{p.name}`: {exc}",
                    Span(str(p), line, col, line, col + 1),
                    help="variables files are TOML (.toml) or JSON (.json) tables",
                )
            ]
        ) from None
    if data is _TOO_DEEP or _depth(data) > MAX_VARS_DEPTH:
        raise DiagnosticError(
            [
                Diagnostic(
                    "bad-variables-file",
                    f"`{p.name}` nests lists or tables more than {MAX_VARS_DEPTH} deep",
                    help="template variables are flat values, lists and small tables",
                )
            ]
        )
    if not isinstance(data, dict):
        raise DiagnosticError(
            [Diagnostic("bad-variables-file", f"`{p.name}` must hold a table of variables")]
        )
    return data
