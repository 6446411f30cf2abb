"""What every command shares: exit codes, where diagnostics go, template variables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic, DiagnosticError
from scenecraft.language.templating import parse_var, read_vars_file

EXIT_OK = 0
EXIT_CHANGED = 1  # fmt --check found a file to reformat
EXIT_USER_ERROR = 2
EXIT_INTERNAL = 70


def variables(args: argparse.Namespace) -> dict[str, Any]:
    """The template variables of ``--vars FILE`` (in order), then ``--var KEY=VALUE``."""
    return variables_of(args.vars, args.var)


def variables_of(vars_files: Sequence[str], var_items: Sequence[str]) -> dict[str, Any]:
    """The template variables of these ``--vars`` files, then these ``--var`` items."""
    out: dict[str, Any] = {}
    for f in vars_files:
        out.update(read_vars_file(f))
    for item in var_items:
        key, value = parse_var(item)
        out[key] = value
    return out


class Output:
    """Where diagnostics go: Rich on stderr (colour only on a terminal)."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}

    def show(self, diagnostics: Sequence[Diagnostic]) -> None:
        if diagnostics:
            # imported here: Rich loads only when there is something to show (a clean `check`
            # of a file in an editor loop stays fast)
            from scenecraft.ui.diagnostics import print_diagnostics

            print_diagnostics(diagnostics, self.sources)

    def collect_sources(self, exc: DiagnosticError) -> None:
        """Read the files ``exc`` points into, to quote them."""
        for d in exc.diagnostics:
            if d.span and d.span.file not in self.sources:
                try:
                    self.sources[d.span.file] = Path(d.span.file).read_text(
                        encoding="utf-8", errors="replace"
                    )
                except OSError:
                    pass
