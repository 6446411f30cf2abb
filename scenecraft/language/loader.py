"""Reading scene files: text (maybe a Jinja template) -> parsed Files, includes resolved.

Diagnostics found in Jinja-rendered text are mapped back to the template's own lines here, so
every later phase can report spans without knowing a template was involved.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic, DiagnosticError, Label, Span, line_text
from scenecraft.files import NotARegularFile, TooLarge, read_capped
from scenecraft.language import nodes as n
from scenecraft.language.parser import parse
from scenecraft.language.templating import Rendered, is_template, render_template

MAX_FILE_BYTES = 2 * 1024 * 1024  # parsing costs ~170 bytes of memory per byte of text
MAX_INCLUDE_DEPTH = 16  # includes nested deeper than this are `include-too-deep`
# All the text one program parses (the file, its includes, template output), together: one
# budget, so ten includes of a 2 MiB file cannot cost ten parses (`unreadable-file`)
MAX_PROGRAM_CHARS = 4 * 1024 * 1024


@dataclass
class Source:
    """One file as read: its display name, text as written and (if templated) as rendered."""

    path: Path
    name: str  # how diagnostics name it (the path as the user gave it)
    text: str  # the file's own text (the template, when templated)
    rendered: Rendered | None = None  # Jinja output and line map, when templated

    @property
    def scene_text(self) -> str:
        return self.rendered.text if self.rendered else self.text


@dataclass
class Program:
    """The main file and everything it includes, in include order (dependencies first)."""

    main: n.File
    includes: list[n.File] = field(default_factory=list)
    sources: dict[str, Source] = field(default_factory=dict)  # by display name
    # texts read instead of the disk, by resolved path (an editor's unsaved buffers)
    unsaved: Mapping[Path, str] = field(default_factory=dict)
    # text, file name -> syntax tree (the language server passes one that reuses unchanged items)
    parser: Callable[[str, str], n.File] = field(default=parse)
    chars: int = 0  # text read and rendered so far, against MAX_PROGRAM_CHARS

    def texts(self) -> dict[str, str]:
        """Texts for quoting diagnostics: the template, not its output, for templated files."""
        return {name: src.text for name, src in self.sources.items()}


def resolve_path(base: Path, written: str) -> Path:
    """``base / written`` made absolute; a name the OS cannot use (NUL, too long) stays as is."""
    try:
        return (base / written).resolve()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return (base / written).absolute()


def is_file(path: Path) -> bool:
    """`Path.is_file` that answers False for names the OS rejects instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_text(path: Path, name: str, span: Span | None = None) -> str:
    """A scene file's text: a regular file of at most 2 MiB (never more is read), UTF-8."""
    try:
        data = read_capped(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise DiagnosticError(
            [
                Diagnostic(
                    "file-not-found",
                    f"file `{name}` does not exist",
                    span,
                    label="not found",
                    help="check the path; relative paths start at the including file's folder",
                )
            ]
        ) from None
    except NotARegularFile as exc:
        raise DiagnosticError(
            [
                Diagnostic(
                    "unreadable-file",
                    f"cannot read `{name}`: {exc.strerror}",
                    span,
                    help="give the path of a scene file",
                )
            ]
        ) from None
    except TooLarge:
        raise too_large(name, span) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or exc
        raise DiagnosticError(
            [Diagnostic("unreadable-file", f"cannot read `{name}`: {reason}", span)]
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DiagnosticError(
            [
                Diagnostic(
                    "unreadable-file",
                    f"`{name}` is not UTF-8 text (bad byte at offset {exc.start})",
                    span,
                    help="save the file as UTF-8",
                )
            ]
        ) from None


def too_large(name: str, span: Span | None) -> DiagnosticError:
    return DiagnosticError(
        [
            Diagnostic(
                "unreadable-file",
                f"`{name}` is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not a scene file",
                span,
            )
        ]
    )


def _remap_span(span: Span, src: Source) -> tuple[Span, str | None]:
    """A span in rendered text -> a span in the template, plus the rendered line if it differs."""
    assert src.rendered is not None
    idx = min(max(span.line - 1, 0), len(src.rendered.line_map) - 1)
    tline = src.rendered.line_map[idx] if src.rendered.line_map else 1
    # line tables are built once per text (not a split of the whole text per diagnostic)
    rendered_line = line_text(src.rendered.text, idx + 1, strip_cr=False) or ""
    template_line = line_text(src.text, tline, strip_cr=False) or ""
    if rendered_line == template_line and span.end_line == span.line:
        return Span(span.file, tline, span.col, tline, span.end_col), None
    indent = len(template_line) - len(template_line.lstrip())
    whole = Span(span.file, tline, indent + 1, tline, max(len(template_line), indent + 1) + 1)
    return whole, rendered_line.strip()


def remap(diag: Diagnostic, sources: dict[str, Source]) -> Diagnostic:
    """Point a diagnostic found in rendered template output at the template's lines."""
    if diag.span is None:
        return diag
    src = sources.get(diag.span.file)
    if src is None or src.rendered is None:
        return diag
    span, rendered = _remap_span(diag.span, src)
    notes = diag.notes
    if rendered is not None:
        notes = (f"the template produced: `{rendered}`", *notes)
    labels = tuple(
        Label(_remap_span(lb.span, sources[lb.span.file])[0], lb.message)
        if lb.span.file in sources and sources[lb.span.file].rendered
        else lb
        for lb in diag.labels
    )
    return replace(diag, span=span, notes=notes, labels=labels)


def remap_all(exc: DiagnosticError, sources: dict[str, Source]) -> DiagnosticError:
    return DiagnosticError([remap(d, sources) for d in exc.diagnostics])


def _load_one(
    path: Path, name: str, variables: dict[str, Any], span: Span | None, program: Program
) -> n.File:
    text = program.unsaved.get(resolve_path(Path(), str(path))) if program.unsaved else None
    if text is None:
        text = read_text(path, name, span)
    elif len(text) > MAX_FILE_BYTES or len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise too_large(name, span)  # an editor's buffer has the file's bound
    _spend(program, len(text), name, span)
    src = Source(path, name, text)
    program.sources[name] = src
    if is_template(path, text):
        src.rendered = render_template(text, name, variables)
        _spend(program, len(src.rendered.text), name, span)
    try:
        return program.parser(src.scene_text, name)
    except DiagnosticError as exc:
        raise remap_all(exc, program.sources) from None


def _spend(program: Program, chars: int, name: str, span: Span | None) -> None:
    """Count ``chars`` more text against the program's budget; refuse it past the cap."""
    program.chars += chars
    if program.chars <= MAX_PROGRAM_CHARS:
        return
    cap = f"{MAX_PROGRAM_CHARS / (1024 * 1024):.3g}"
    raise DiagnosticError(
        [
            Diagnostic(
                "unreadable-file",
                f"`{name}` brings the program's text past {cap} MiB",
                span,
                label="this include passes the budget" if span else "",
                notes=(
                    f"a file, its includes and their template output hold at most "
                    f"{MAX_PROGRAM_CHARS:,} characters together ({program.chars:,} so far)",
                ),
                help="include only the libraries this file needs; split a large project into "
                "several scene files",
            )
        ]
    )


def load_program(
    path: str | Path,
    variables: dict[str, Any] | None = None,
    unsaved: Mapping[Path, str] | None = None,
    parser: Callable[[str, str], n.File] = parse,
) -> Program:
    """Read, render and parse ``path`` and its includes (depth first, each file once).

    ``unsaved`` gives texts by resolved path that are taken instead of the files on disk (the
    language server's open documents); ``parser`` replaces `parse` (it must give the same tree)."""
    variables = dict(variables or {})
    main_path = Path(path)
    program = Program(main=n.File(str(path), ()), unsaved=dict(unsaved or {}), parser=parser)
    program.main = _load_one(main_path, str(path), variables, None, program)
    stack = [main_path.resolve()]
    seen: set[Path] = {main_path.resolve()}
    _resolve_includes(program.main, main_path, variables, program, stack, seen)
    return program


def _resolve_includes(
    file: n.File,
    path: Path,
    variables: dict[str, Any],
    program: Program,
    stack: list[Path],
    seen: set[Path],
) -> None:
    for item in file.items:
        if not isinstance(item, n.Include):
            continue
        target = resolve_path(path.parent, item.path.value)
        if target in stack:
            cycle = " -> ".join(p.name for p in [*stack[stack.index(target) :], target])
            raise remap_all(
                DiagnosticError(
                    [
                        Diagnostic(
                            "circular-include",
                            f"`{item.path.value}` includes itself: {cycle}",
                            item.span,
                            label="this include closes the cycle",
                            help="move the shared concepts into a file that includes nothing",
                        )
                    ]
                ),
                program.sources,
            )
        if target in seen:
            continue
        if len(stack) > MAX_INCLUDE_DEPTH:
            raise remap_all(
                DiagnosticError(
                    [
                        Diagnostic(
                            "include-too-deep",
                            f"includes are nested more than {MAX_INCLUDE_DEPTH} deep",
                            item.span,
                            label="this include is one level too deep",
                            notes=(f"the chain starts at `{stack[0].name}`",),
                            help="include the shared files from one file instead of in a chain",
                        )
                    ]
                ),
                program.sources,
            )
        seen.add(target)
        name = _display_name(target, path, item.path.value)
        try:
            included = _load_one(target, name, variables, item.path.span, program)
        except DiagnosticError as exc:
            raise remap_all(exc, program.sources) from None
        stack.append(target)
        # recurse with the display name, so nested includes keep relative names too
        _resolve_includes(included, Path(name), variables, program, stack, seen)
        stack.pop()
        program.includes.append(included)


def _display_name(target: Path, including: Path, written: str) -> str:
    joined = including.parent / written
    return os.path.normpath(joined) if not joined.is_absolute() else str(target)
