"""A Rich table of a merge's quality figures (the engine only returns them as data).

Rows are the merge stages; columns the layer-level figures of docs/loraclr.md ("Quality figures"): fidelity error
e_c (0 = exact, 1 = as if the LoRA were absent) and separation s_c (< 1: closer to its own
target), each as mean and worst over layers and concepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _pair(stats: Any, field: str) -> str:
    if isinstance(stats, Mapping):
        return _num(stats.get(field))
    return "–"


def _row(name: str, stats: Mapping[str, Any]) -> list[str]:
    return [
        name,
        _num(stats.get("layers")),
        _num(stats.get("solved")),
        _pair(stats.get("fidelity"), "mean"),
        _pair(stats.get("fidelity"), "worst"),
        _pair(stats.get("separation"), "mean"),
        _pair(stats.get("separation"), "worst"),
        _num(stats.get("repel_active")),
    ]


def figures_table(figures: Mapping[str, Any], title: str = "merge quality") -> Table:
    """One row per stage (then one per concept): layers, solved, fidelity, separation, repel.

    Reads the engine's ``figures["stages"]`` when present, else treats ``figures`` as the
    stage mapping itself.
    """
    stages = figures.get("stages")
    if not isinstance(stages, Mapping):
        stages = figures
    method, seconds = figures.get("method"), figures.get("seconds")
    if isinstance(method, str):
        title = f"{title}: {method}"
    if isinstance(seconds, Mapping) and isinstance(seconds.get("total"), int | float):
        title = f"{title} ({seconds['total']:.1f} s)"
    table = Table(title=title, title_justify="left")
    columns = ("stage", "layers", "solved", "fidelity", "worst", "separation", "worst", "repel")
    table.add_column(columns[0], no_wrap=True, min_width=16)
    for column in columns[1:]:
        table.add_column(column, justify="right")
    for stage, stats in stages.items():
        if not isinstance(stats, Mapping):
            continue
        table.add_row(*_row(str(stage), stats))
        per_concept = stats.get("per_concept")
        if isinstance(per_concept, Mapping) and stats.get("layers"):
            for concept, figures_c in per_concept.items():
                if isinstance(figures_c, Mapping):
                    table.add_row(*_row(f"  {concept}", figures_c), style="dim")
    return table


def print_merge_result(console: Console, result: Any) -> None:
    """The entry, whether it came from the cache, and the figures table."""
    if result.path is None:
        console.print("no merge needed (method `none` or no concept has a LoRA)")
        return
    origin = "cache hit" if result.cached else "merged"
    console.print(f"[bold]{origin}[/bold] {result.key} -> {result.path}")
    if result.figures:
        console.print(figures_table(result.figures))
