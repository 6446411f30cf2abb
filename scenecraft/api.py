"""The Python API: ``scenecraft.load(path, vars=...)`` -> the checked file and its render plan.

The top level is a short chain of phases: read (+ Jinja) -> parse -> check -> compile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic
from scenecraft.language.check import Checked, check
from scenecraft.language.compiler import MAX_JOBS, compile_plan
from scenecraft.language.loader import load_program
from scenecraft.plan import RenderPlan


@dataclass
class Loaded:
    path: Path  # the scene file
    source: str  # its (Jinja-rendered) text
    file: Any  # the main file's syntax tree (scenecraft.language.nodes.File)
    plan: RenderPlan
    checked: Checked
    warnings: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # texts for quoting diagnostics


def load(
    path: str | Path,
    vars: dict[str, Any] | None = None,
    *,
    allow_missing: bool = True,
    max_jobs: int | None = None,
) -> Loaded:
    """Read, parse, check and compile ``path``; raises DiagnosticError on any error.

    ``allow_missing`` turns missing LoRA files into warnings (enough to check or compile);
    merging and rendering load with ``allow_missing=False``. ``max_jobs`` overrides the cap on
    images per plan (`scenecraft.language.compiler.MAX_JOBS`).
    """
    program = load_program(path, vars)
    cap = MAX_JOBS if max_jobs is None else max_jobs
    checked = check(program, allow_missing=allow_missing, max_images=cap)
    main = program.sources[str(path)]
    plan, warnings = compile_plan(
        checked,
        source_text=main.scene_text,
        template_vars=dict(vars or {}) if main.rendered else {},
        rendered_source=main.rendered.text if main.rendered else None,
        max_jobs=max_jobs,
    )
    return Loaded(
        path=Path(path),
        source=main.scene_text,
        file=program.main,
        plan=plan,
        checked=checked,
        warnings=[*checked.warnings, *warnings],
        sources=program.texts(),
    )
