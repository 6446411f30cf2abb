"""A compact, human-readable view of a RenderPlan (`scenecraft compile` without --json)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from scenecraft.plan import RenderPlan


def print_plan(plan: RenderPlan, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    merge = plan.merge
    names = ", ".join(c.name for c in merge.concepts) or "none"
    console.print(
        f"[bold]model[/] {merge.base.source} ({merge.base.family or 'family detected at load'})"
    )
    console.print(f"[bold]merge[/] {merge.method} of {names}  [dim]key {merge.key}[/]")
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("scene", "seed", "size", "steps", "sampler", "tokens", "prompt"):
        table.add_column(col, overflow="fold")
    for job in plan.jobs:
        table.add_row(
            job.scene,
            str(job.seed),
            f"{job.width}x{job.height}",
            str(job.steps),
            job.sampler,
            str(job.prompt_tokens),
            job.prompt
            + "".join(
                f"\n  [dim]{r.subject} [{', '.join(f'{v:g}' for v in r.box)}][/] {r.prompt}"
                for r in job.regions
            ),
        )
    console.print(table)
    for board in plan.storyboards:
        panels = ", ".join(p.scene for p in board.panels)
        console.print(f"[bold]storyboard[/] {board.name}: {len(board.panels)} panels ({panels})")
    console.print(f"{len(plan.jobs)} image{'s' if len(plan.jobs) != 1 else ''} to render")
