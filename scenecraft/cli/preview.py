"""``scenecraft render --dry-run``: what a run would render and skip, and whether it merges first.

Plans through `scenecraft.render.planning.preview` and never imports torch (the command answers
in the time a scene file takes to compile). With ``--json`` (or ``--events json``) stdout carries
one JSON object: mode, merge key, every image with its status, the cached merges' dtypes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from scenecraft.cli.args import RenderSettings
from scenecraft.diagnostics import error
from scenecraft.render.batching import ImageTask
from scenecraft.render.planning import RENDER, Preview, preview
from scenecraft.render.selection import parse_shard
from scenecraft.ui.plan import MAX_ROWS, by_scene, seed_ranges


def checked_shard(s: RenderSettings) -> tuple[int, int] | None:
    """The ``--shard`` as (i, n), after checking it and ``--batch-size`` (`bad-shard`,
    `bad-batch-size`)."""
    shard = parse_shard(s.shard) if s.shard else None
    if s.batch_size is not None and s.batch_size < 1:
        raise error(
            "bad-batch-size",
            f"--batch-size must be at least 1, not {s.batch_size}",
            help="use --batch-size 1 on small GPUs",
        )
    return shard


def run(settings: RenderSettings, loaded: Any, console: Console | None = None) -> int:
    """Print the images the run would render (and which are up to date); render nothing."""
    s = settings
    shard = checked_shard(s)
    console = console or Console(stderr=s.json or s.quiet)
    view = preview(
        loaded.plan,
        s.out,
        only=s.only,
        shard=shard,
        adapters=s.adapters,
        force=s.force,
        cache_dir=s.cache_dir,
    )
    if s.json or s.events == "json":
        print(json.dumps(as_json(view)))
        return 0
    table = Table(title=f"{len(view.rows)} image(s), mode {view.mode}", show_lines=False)
    if view.mode == "merged":
        console.print(_merge_line(view))
    if len(view.rows) > MAX_ROWS:  # one row per scene: Rich takes a minute for 20,000 rows
        return _summary(console, table, view.rows, view.out_root)
    for col in ("job", "scene", "seed", "size", "steps", "sampler", "status"):
        table.add_column(col, no_wrap=True)
    table.add_column("path", overflow="fold", min_width=16)
    for t, status in view.rows:
        j = t.job
        table.add_row(
            j.id[:8],
            j.scene,
            str(t.seed),
            f"{j.width}x{j.height}",
            str(j.steps),
            j.sampler,
            status,
            str(t.path.relative_to(view.out_root)),
        )
    print_whole(console, table)
    return 0


def as_json(view: Preview) -> dict[str, Any]:
    """The ``--json`` report of a dry run."""
    data = [
        {
            "job": t.job.id,
            "scene": t.job.scene,
            "seed": t.seed,
            "path": str(t.path),
            "status": status,
            "key": t.key,
        }
        for t, status in view.rows
    ]
    report: dict[str, Any] = {"mode": view.mode, "merge_key": view.merge_key, "images": data}
    if view.mode == "merged":
        report["merge_cached"] = [e.dtype for e in view.merges.found]
    return report


def print_whole(console: Console, table: Table) -> None:
    """Off a terminal (a pipe, a log) nothing sets the width: print the table as wide as it needs
    instead of cutting paths at Rich's 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    width = console.width
    console.width = max(width, needed)  # Rich caps print(width=...) at the console's width
    try:
        console.print(table)
    finally:
        console.width = width


def _merge_line(view: Preview) -> str:
    """Whether the run has to merge first: the cache holds this plan's merge, or not."""
    spec = view.plan.merge
    what = f"merge {spec.method} {spec.key[:10]} ({len(spec.concepts)} concepts)"
    if not view.needed:
        return f"{what}: not needed, every image is up to date"
    found, older = view.merges.found, view.merges.older  # each manifest read once
    if found:
        dtypes = ", ".join(sorted({e.dtype.removeprefix("torch.") for e in found}))
        return f"{what}: cached ({dtypes}; a run in another dtype merges again)"
    if older:  # entries written before manifests recorded their plan cannot be matched here
        return (
            f"{what}: not among the cached merges that name their plan ({older} older ones do not)"
        )
    scene_prompts = getattr(spec.params, "scene_prompts", False)
    extra = " (its scene_prompts are part of it)" if scene_prompts else ""
    return f"{what}: not cached, the run merges first{extra}"


def _summary(
    console: Console, table: Table, rows: list[tuple[ImageTask, str]], out_root: Path
) -> int:
    for col in ("scene", "seeds", "size", "steps", "sampler", "render", "up to date"):
        table.add_column(col, no_wrap=True)
    table.add_column("folder", overflow="fold", min_width=16)
    for group in by_scene(rows, lambda row: row[0].job).values():
        j = group[0][0].job
        todo = sum(1 for _, status in group if status == RENDER)
        table.add_row(
            j.scene,
            seed_ranges([t.seed for t, _ in group]),
            f"{j.width}x{j.height}",
            str(j.steps),
            j.sampler,
            str(todo),
            str(len(group) - todo),
            str(group[0][0].path.parent.relative_to(out_root)),
        )
    print_whole(console, table)
    console.print("[dim]one row per scene; `--json` lists every image[/]")
    return 0
