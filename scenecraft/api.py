"""The Python API: ``scenecraft.load(path, vars=...)`` -> the checked file and its render plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic
from scenecraft.plan import RenderPlan


@dataclass
class Loaded:
    path: Path  # the scene file
    source: str  # its (Jinja-rendered) text
    file: Any  # the checked AST (scenecraft.language.nodes.File)
    plan: RenderPlan
    warnings: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # texts for quoting diagnostics


def load(
    path: str | Path, vars: dict[str, Any] | None = None, *, allow_missing: bool = False
) -> Loaded:
    """Parse, check and compile ``path``; raises DiagnosticError on any error."""
    raise NotImplementedError("being written")
