"""Jinja2 scene templates: one file expands into many scene variants.

The template runs in Jinja2's `SandboxedEnvironment` with `StrictUndefined`, so a template can
neither reach Python internals nor silently print an empty string for a typo'd variable.
Every template line is tagged with an invisible marker before rendering; the markers that reach
the output say which template line each output line came from, so errors found later (by the
parser or the checker) point into the template itself.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span, did_you_mean, line_number
from scenecraft.files import NotARegularFile, TooLarge, read_capped

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
# A template runs user code; these bound what it may cost (docs/errors.md, `template-limit`).
MAX_OUTPUT_CHARS = 2 * 1024 * 1024  # the rendered text, like a hand-written file (loader cap)
MAX_SEQUENCE = 1_000_000  # a string or list built by `*`, a filter or a method, in items
MAX_RANGE_ITEMS = 1_000_000  # items produced by every `range` of one rendering, together
MAX_SECONDS = 10.0  # wall time of one rendering
MAX_LIPSUM = 100  # paragraphs (and words per paragraph) of `lipsum`
MAX_INT_BITS = 4096  # integers a template computes (`**`)
VARS_FILE_BYTES = 4 * 1024 * 1024  # a --vars file
MAX_VARS_DEPTH = 64  # lists and tables nested in a --vars file or a --var value


class TemplateLimit(Exception):
    """A template exceeded one of the bounds above (raised inside the rendering)."""

    def __init__(self, what: str, help: str, line: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.help = help
        self.line = line  # the template line, when the traceback cannot tell it


class _Budget:
    """What one rendering has spent so far."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.range_items = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _timeout(self.seconds)


def _timeout(seconds: float) -> TemplateLimit:
    return TemplateLimit(
        f"the template ran longer than {seconds:g} s",
        "loops over loops multiply: generate fewer scenes or seeds per file",
    )


def _too_long(n: int, what: str = "a string or list") -> TemplateLimit:
    return TemplateLimit(
        f"the template builds {what} of {n:,} items (at most {MAX_SEQUENCE:,})",
        "build smaller values; a scene file needs no huge strings",
    )


def _sized(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, bytes)) and len(value) > MAX_SEQUENCE:
        raise _too_long(len(value))
    return value


def _int_arg(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SEQUENCE:
        raise TemplateLimit(
            f"{what} is {value:,} (at most {MAX_SEQUENCE:,})",
            "use widths and counts that fit a scene file",
        )


_FORMAT_WIDTH = re.compile(r"[0-9]{7,}")  # a width or precision of a million or more


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _FORMAT_WIDTH.search(fmt):
        raise TemplateLimit(
            "a format string asks for a width of a million characters or more",
            "use widths that fit a scene file",
        )


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Before a method call: refuse arguments that would build a huge string or list."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, (str, list, bytes)):  # ljust(10**9), zfill, expandtabs, ...
        for value in (*args, *kwargs.values()):
            _int_arg(value, f"an argument of `{name}`")
    if isinstance(owner, str):
        if name in ("format", "format_map"):
            _check_format(owner)
        elif name == "replace" and len(args) >= 2:
            new = _length(args[1])
            if new > 1 and len(owner) * new > MAX_SEQUENCE:
                raise _too_long(len(owner) * new)
        elif name == "join" and args:
            items = _length(args[0])
            if items * (len(owner) + 1) > MAX_SEQUENCE:
                raise _too_long(items * (len(owner) + 1))


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox plus bounds on sequence repetition, big integers, method calls and time."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    budget: _Budget | None = None

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if self.budget is not None:
            self.budget.tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * max(times, 0) > MAX_SEQUENCE:
                        raise _too_long(len(seq) * times)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
                raise TemplateLimit(
                    f"`{left} ** {right}` is a number of more than {MAX_INT_BITS} bits",
                    "use smaller numbers",
                )
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return _sized(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if __self.budget is not None:
            __self.budget.tick()
        _check_call(__obj, args, kwargs)
        return _sized(super().call(__context, __obj, *args, **kwargs))


def _bounded_range(env: _BoundedEnvironment) -> Any:
    def bounded(*args: int) -> _ticking:
        budget = env.budget
        items = range(*args)
        if budget is not None:
            budget.range_items += len(items)
            if budget.range_items > MAX_RANGE_ITEMS:
                raise TemplateLimit(
                    f"the template's loops and ranges ask for more than {MAX_RANGE_ITEMS:,} "
                    "items in all",
                    "nested loops multiply: generate fewer scenes or seeds per file",
                )
        return _ticking(items, budget)

    return bounded


class _ticking:
    """A range that checks the clock while it is iterated (loops inside loops)."""

    def __init__(self, items: range, budget: _Budget | None) -> None:
        self.items, self.budget = items, budget

    def __iter__(self) -> Iterator[int]:
        for i, value in enumerate(self.items):
            if self.budget is not None and i % 1024 == 0:
                self.budget.tick()
            yield value

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        return self.items[index]

    def __repr__(self) -> str:
        return repr(self.items)


_SIZE_FILTERS = {"center", "indent", "wordwrap", "batch", "slice", "truncate"}


def _bounded_filter(env: _BoundedEnvironment, name: str, func: Any) -> Any:
    """Wrap a built-in filter so that its size arguments and its result are bounded."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        if env.budget is not None:
            env.budget.tick()
        plain = [a for a in args if not _is_context(a)]
        if name in _SIZE_FILTERS:
            for value in (*plain[1:], *kwargs.values()):
                _int_arg(value, f"an argument of the `{name}` filter")
        if name == "format" and plain:
            _check_format(plain[0])
        if name == "replace" and len(plain) >= 3:
            new = _length(plain[2])
            if new > 1 and _length(plain[0]) * new > MAX_SEQUENCE:
                raise _too_long(_length(plain[0]) * new)
        if name == "join" and plain:
            sep = plain[1] if len(plain) > 1 else kwargs.get("d", "")
            items = _length(plain[0])
            if items * (_length(sep) + 1) > MAX_SEQUENCE:
                raise _too_long(items * (_length(sep) + 1))
        return _sized(func(*args, **kwargs))

    for attr in ("jinja_pass_arg",):  # keep pass_context / pass_eval_context markers
        if hasattr(func, attr):
            setattr(bounded, attr, getattr(func, attr))
    return bounded


def _is_context(value: Any) -> bool:
    return isinstance(value, (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment))


def _bounded_lipsum(lipsum: Any) -> Any:
    def bounded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:  # noqa: A002
        if any(isinstance(v, int) and v > MAX_LIPSUM for v in (n, min, max)):
            raise TemplateLimit(
                f"`lipsum` asks for more than {MAX_LIPSUM} paragraphs or words",
                f"use `lipsum({MAX_LIPSUM})` or less",
            )
        return lipsum(n=n, html=html, min=min, max=max)

    return bounded


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
        raise _timeout(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _environment() -> _BoundedEnvironment:
    env = _BoundedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = _strict_tojson(env.filters["tojson"])
    for name, func in list(env.filters.items()):
        env.filters[name] = _bounded_filter(env, name, func)
    env.globals["range"] = _bounded_range(env)
    env.globals["lipsum"] = _bounded_lipsum(env.globals["lipsum"])
    return env


def _render_bounded(template: jinja2.Template, env: _BoundedEnvironment, variables: Any) -> str:
    """Render chunk by chunk, stopping at the output cap or the deadline."""
    env.budget = budget = _Budget(MAX_SECONDS)
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
    env = _environment()
    lines = text.count("\n") + 1
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
