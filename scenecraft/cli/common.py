"""What every command shares: exit codes, where diagnostics go, template variables."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from scenecraft.diagnostics import MAX_SOURCE_BYTES, Diagnostic, DiagnosticError
from scenecraft.files import read_capped
from scenecraft.language.templating import parse_var, read_vars_file

EXIT_OK = 0
EXIT_CHANGED = 1  # fmt --check found a file to reformat
EXIT_USER_ERROR = 2
EXIT_INTERNAL = 70


# Library warnings that say nothing the user can act on, and that used to appear before (or
# instead of) scenecraft's own message: torch's notes on pickles (scenecraft loads weights-only
# and says so itself), PIL's decompression-bomb warning (outputs are checked by their header
# first), numpy's cast/overflow warnings on NaN pixels (`non-finite-image` says it), and Ray's
# start-up log lines. Matched by message, so no library is imported to name a category.
_NOISE = (
    (r".*torch\.load.*weights_only.*", Warning),
    (r".*[Ww]eights only load failed.*", Warning),
    (r"Image size \(\d+ pixels\) exceeds limit.*", Warning),
    (r"(invalid value|overflow|divide by zero) encountered.*", RuntimeWarning),
)


def quiet_library_noise() -> None:
    """Silence `_NOISE` for this process (the CLI calls it before any command runs)."""
    for message, category in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in ("ray", "ray.worker", "ray._private.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def resource_fault(exc: BaseException) -> Diagnostic | None:
    """`out-of-memory` for an allocation failure that escaped the engine (a model load, a
    merge): Python's MemoryError or torch's CPU allocator error. None for anything else."""
    text = str(exc)
    cpu = isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in text
    if not (isinstance(exc, MemoryError) or cpu or type(exc).__name__ == "OutOfMemoryError"):
        return None
    return Diagnostic(
        code="out-of-memory",
        message="the machine ran out of memory",
        notes=(f"{type(exc).__name__}: {text.strip()[:200]}",),
        help="use a smaller size or batch, `--dtype float16`, or a machine with more memory",
    )


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
                try:  # bounded: a span may name a huge file or a device
                    raw = read_capped(d.span.file, MAX_SOURCE_BYTES)
                except (OSError, ValueError):
                    continue
                self.sources[d.span.file] = raw.decode("utf-8", errors="replace")
