"""One document's analysis: the phases `scenecraft check` runs, each result kept.

`analyse` reads the document from the editor's text (and any other open document from its
text, the rest from disk), then parses, checks and compiles like `scenecraft.api.load` and
`scenecraft check`, stopping at the first phase that fails. Everything found on the way is a
`Diagnostic` with the codes, spans and hints `check` prints; Jinja templates are mapped back to
template lines by the loader, as for `check`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span
from scenecraft.language import nodes as n
from scenecraft.language.check import Checked, check
from scenecraft.language.compiler import MAX_JOBS, compile_plan
from scenecraft.language.loader import Program, load_program, resolve_path
from scenecraft.language.parser import parse
from scenecraft.language.templating import is_template, read_vars_file
from scenecraft.plan import RenderPlan

VARS_SUFFIXES = (".vars.toml", ".vars.json")  # `x.scene.j2` takes its variables from `x.vars.toml`


@dataclass
class Analysis:
    """What the phases gave for one document (``None`` from the phase that failed on)."""

    path: Path  # the document, absolute
    text: str  # the editor's text
    diagnostics: list[Diagnostic]  # errors and warnings, in every file the program reads
    program: Program | None = None  # parsed files (None: the document or an include does not parse)
    checked: Checked | None = None  # the checked model (None: check found errors)
    plan: RenderPlan | None = None  # the compiled plan
    seconds: float = 0.0  # time the analysis took
    variables: dict[str, Any] = field(default_factory=dict)  # template variables used

    @property
    def name(self) -> str:
        """How diagnostics and spans name the document."""
        return str(self.path)

    def by_file(self) -> dict[str, list[Diagnostic]]:
        """Diagnostics grouped by the file they point into (no span: the document's first line)."""
        out: dict[str, list[Diagnostic]] = {}
        for d in self.diagnostics:
            out.setdefault(d.span.file if d.span else self.name, []).append(d)
        return out


def vars_file(path: Path) -> Path | None:
    """The variables file beside a template: `variants.scene.j2` -> `variants.vars.toml`."""
    stem = path.name.split(".")[0]
    for suffix in VARS_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def template_vars(path: Path, text: str) -> dict[str, Any]:
    """Variables for a templated document (none for a plain one); may raise DiagnosticError."""
    if not is_template(path, text):
        return {}
    found = vars_file(path)
    return read_vars_file(found) if found else {}


def analyse(
    path: Path,
    text: str,
    unsaved: Mapping[Path, str] | None = None,
    parser: Callable[[str, str], n.File] = parse,
) -> Analysis:
    """Load, check and compile ``text`` as the file at ``path``; never raises DiagnosticError.

    ``unsaved`` holds the other open documents' texts by resolved path (an include being
    edited is read from the editor, not from disk); ``parser`` is `parse` or a
    `scenecraft.lsp.reparse.Reparser`, which gives the same trees faster after an edit.
    """
    started = time.perf_counter()
    path = resolve_path(Path(), str(path))
    out = Analysis(path, text, [])
    texts = {**(unsaved or {}), path: text}
    try:
        out.variables = template_vars(path, text)
        out.program = load_program(out.name, out.variables, texts, parser)
        out.checked = check(out.program, allow_missing=True, max_images=MAX_JOBS)
        main = out.program.sources[out.name]
        out.plan, warnings = compile_plan(
            out.checked,
            source_text=main.scene_text,
            template_vars=out.variables if main.rendered else {},
            rendered_source=main.rendered.text if main.rendered else None,
        )
        out.diagnostics = [*out.checked.warnings, *warnings]
    except DiagnosticError as exc:
        out.diagnostics = list(exc.diagnostics)
    except Exception as exc:  # a bug in scenecraft: shown in the editor, the server goes on
        out.diagnostics = [
            Diagnostic(
                "internal-error",
                f"{type(exc).__name__}: {exc}",
                Span(out.name, 1, 1, 1, 2),
                help="this is a bug in scenecraft; `scenecraft check` with SCENECRAFT_DEBUG=1 "
                "shows a traceback; please report it",
            )
        ]
    out.seconds = time.perf_counter() - started
    return out
