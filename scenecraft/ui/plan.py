"""A compact, human-readable view of a RenderPlan (`scenecraft compile` without --json)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.table import Table

from scenecraft.plan import RenderJob, RenderPlan

MAX_ROWS = 200  # above this many jobs, tables show one row per scene
T = TypeVar("T")


def by_scene(items: Iterable[T], job_of: Callable[[T], RenderJob]) -> dict[str, list[T]]:
    """Items grouped by their job's scene (and storyboard), in first-seen order."""
    out: dict[str, list[T]] = {}
    for item in items:
        job = job_of(item)
        name = job.scene if job.storyboard is None else f"{job.storyboard}/{job.scene}"
        out.setdefault(name, []).append(item)
    return out


def seed_ranges(seeds: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1..3, 7"`` (sorted, distinct)."""
    parts: list[str] = []
    values = sorted(set(seeds))
    start = prev = values[0] if values else 0
    for s in [*values[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if s is not None:
            start = prev = s
    return ", ".join(parts) if values else ""


def print_plan(plan: RenderPlan, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    merge = plan.merge
    names = ", ".join(c.name for c in merge.concepts) or "none"
    console.print(
        f"[bold]model[/] {merge.base.source} ({merge.base.family or 'family detected at load'})"
    )
    console.print(f"[bold]merge[/] {merge.method} of {names}  [dim]key {merge.key}[/]")
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    many = len(plan.jobs) > MAX_ROWS  # one row per scene: a table of 20,000 rows is unreadable
    for col in ("scene", "seeds" if many else "seed", "size", "steps", "sampler", "tokens"):
        table.add_column(col, overflow="fold")
    table.add_column("prompt", overflow="fold")
    if many:
        for jobs in by_scene(plan.jobs, lambda j: j).values():
            job = jobs[0]
            table.add_row(
                job.scene,
                seed_ranges([j.seed for j in jobs]) + f" ({len(jobs)} images)",
                f"{job.width}x{job.height}",
                str(job.steps),
                job.sampler,
                str(job.prompt_tokens),
                _prompt(job),
            )
    else:
        for job in plan.jobs:
            table.add_row(
                job.scene,
                str(job.seed),
                f"{job.width}x{job.height}",
                str(job.steps),
                job.sampler,
                str(job.prompt_tokens),
                _prompt(job),
            )
    console.print(table)
    if many:
        console.print(
            f"[dim]one row per scene ({len(plan.jobs)} jobs); `--json` lists every job[/]"
        )
    for board in plan.storyboards:
        panels = ", ".join(p.scene for p in board.panels)
        console.print(f"[bold]storyboard[/] {board.name}: {len(board.panels)} panels ({panels})")
    console.print(f"{len(plan.jobs)} image{'s' if len(plan.jobs) != 1 else ''} to render")


def _prompt(job: RenderJob) -> str:
    """The job's global prompt, then one dim line per region (subject, box, prompt)."""
    return job.prompt + "".join(
        f"\n  [dim]{r.subject} [{', '.join(f'{v:g}' for v in r.box)}][/] {r.prompt}"
        for r in job.regions
    )
