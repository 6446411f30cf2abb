"""Drawing diagnostics at the terminal: rustc/ruff style, coloured when the console allows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rich.console import Console
from rich.text import Text

from scenecraft.diagnostics import Diagnostic, more_line, render_text, shown

_STYLES = {"error": "bold red", "warning": "bold yellow"}


def diagnostic_text(diagnostic: Diagnostic, sources: Mapping[str, str] | None = None) -> Text:
    """The plain rendering with the header, arrows, carets and help coloured."""
    plain = render_text(diagnostic, sources)
    text = Text()
    for i, line in enumerate(plain.split("\n")):
        if i:
            text.append("\n")
        if i == 0:
            head, _, rest = line.partition(":")
            text.append(head, style=_STYLES.get(diagnostic.severity, "bold"))
            text.append(":" + rest, style="bold")
        elif line.lstrip().startswith("-->") or line.lstrip().startswith(":::"):
            text.append(line, style="blue")
        elif "^" in line and line.lstrip().startswith("|"):
            text.append(line, style=_STYLES.get(diagnostic.severity, "bold"))
        elif line.lstrip().startswith("= help:"):
            text.append(line, style="cyan")
        else:
            text.append(line)
    return text


def print_diagnostics(
    diagnostics: Iterable[Diagnostic],
    sources: Mapping[str, str] | None = None,
    console: Console | None = None,
) -> None:
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    items = list(diagnostics)
    out, hidden = shown(items)  # a problem repeated 20,000 times prints a few times
    for i, d in enumerate(out):
        if i:
            console.print()
        console.print(diagnostic_text(d, sources))
    if hidden:
        console.print()
        console.print(Text(more_line(hidden), style="bold"))
    errors = sum(d.is_error for d in items)
    warnings = len(items) - errors
    if errors:
        console.print()
        summary = f"{errors} error{'s' if errors != 1 else ''}"
        if warnings:
            summary += f", {warnings} warning{'s' if warnings != 1 else ''}"
        console.print(Text(f"found {summary}", style="bold red"))
