"""``scenecraft render``: from typed `RenderSettings` and a loaded file to the render engine.

Errors are DiagnosticErrors (`scenecraft.cli.main` renders them, exit 2); Ctrl-C exits 130 after
the engine has saved every finished image and the manifest. With ``--json`` stdout carries the
JSON result only: progress and warnings go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from scenecraft.cli.args import RenderSettings
from scenecraft.diagnostics import error
from scenecraft.merge.cache import EntryInfo, entries, resolve_cache_dir
from scenecraft.plan import RenderPlan
from scenecraft.render.batching import ImageTask
from scenecraft.render.engine import (
    is_up_to_date,
    open_manifest,
    plan_images,
    render,
    render_mode,
    weights_key,
)
from scenecraft.render.selection import parse_shard
from scenecraft.ui.plan import MAX_ROWS
from scenecraft.ui.progress import progress_reporter


def run(settings: RenderSettings, loaded: Any, console: Console | None = None) -> int:
    """Render ``loaded.plan`` as the settings say; returns the exit status."""
    s = settings
    plan = loaded.plan
    shard = parse_shard(s.shard) if s.shard else None
    if s.batch_size is not None and s.batch_size < 1:
        raise error(
            "bad-batch-size",
            f"--batch-size must be at least 1, not {s.batch_size}",
            help="use --batch-size 1 on small GPUs",
        )
    # with --json, stdout is the JSON alone: the human lines go to stderr
    console = console or Console(stderr=s.json or s.quiet)
    if s.dry_run:
        tasks = plan_images(plan, s.out, only=s.only, shard=shard, adapters=s.adapters)
        return dry_run(console, plan, tasks, s, shard)
    executor = None
    if s.ray is not None:
        from scenecraft.render.executor import ray_executor

        executor = ray_executor(s.ray)
    try:
        with progress_reporter(console, events=s.events, quiet=s.quiet) as reporter:
            result = render(
                plan,
                s.out,
                batch_size=s.batch_size,
                only=s.only,
                shard=shard,
                force=s.force,
                adapters=s.adapters,
                reporter=reporter,
                device=s.device,
                dtype=s.dtype,
                cache_dir=s.cache_dir,
                executor=executor,
            )
    except KeyboardInterrupt:
        return 130
    if s.json and s.events != "json":
        sys.stdout.write(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


def dry_run(
    console: Console,
    plan: RenderPlan,
    tasks: list[ImageTask],
    s: RenderSettings,
    shard: tuple[int, int] | None,
) -> int:
    """Print the images the run would render (and which are up to date); render nothing."""
    mode = render_mode(plan, s.adapters)
    manifest = open_manifest(plan, Path(s.out), mode, shard)
    out_root = Path(s.out).resolve()
    rows = [
        (t, "up to date" if not s.force and is_up_to_date(t, manifest, out_root) else "render")
        for t in tasks
    ]
    if s.json or s.events == "json":
        data = [
            {
                "job": t.job.id,
                "scene": t.job.scene,
                "seed": t.seed,
                "path": str(t.path),
                "status": status,
                "key": t.key,
            }
            for t, status in rows
        ]
        report = {"mode": mode, "merge_key": weights_key(plan, mode), "images": data}
        if mode == "merged":
            listed = entries(resolve_cache_dir(s.cache_dir))
            report["merge_cached"] = [e.dtype for e in _cached_merges(plan, listed)]
        print(json.dumps(report))
        return 0
    table = Table(title=f"{len(tasks)} image(s), mode {mode}", show_lines=False)
    if mode == "merged":
        console.print(_merge_line(plan, s, any(status == "render" for _, status in rows)))
    if len(rows) > MAX_ROWS:  # one row per scene: Rich takes a minute for 20,000 rows
        return _dry_run_summary(console, table, rows, out_root)
    for col in ("job", "scene", "seed", "size", "steps", "sampler", "status"):
        table.add_column(col, no_wrap=True)
    table.add_column("path", overflow="fold", min_width=16)
    for t, status in rows:
        j = t.job
        table.add_row(
            j.id[:8],
            j.scene,
            str(t.seed),
            f"{j.width}x{j.height}",
            str(j.steps),
            j.sampler,
            status,
            str(t.path.relative_to(out_root)),
        )
    print_whole(console, table)
    return 0


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


def _cached_merges(plan: RenderPlan, listed: list[EntryInfo]) -> list[EntryInfo]:
    """The entries built for this plan's merge key (any dtype; manifests only, no model)."""
    return [e for e in listed if e.plan_key == plan.merge.key]


def _merge_line(plan: RenderPlan, s: RenderSettings, needed: bool) -> str:
    """Whether the run has to merge first: the cache holds this plan's merge, or not."""
    spec = plan.merge
    what = f"merge {spec.method} {spec.key[:10]} ({len(spec.concepts)} concepts)"
    if not needed:
        return f"{what}: not needed, every image is up to date"
    listed = entries(resolve_cache_dir(s.cache_dir))  # each manifest read once
    found = _cached_merges(plan, listed)
    if found:
        dtypes = ", ".join(sorted({e.dtype.removeprefix("torch.") for e in found}))
        return f"{what}: cached ({dtypes}; a run in another dtype merges again)"
    older = sum(1 for e in listed if not e.plan_key)
    if older:  # entries written before manifests recorded their plan cannot be matched here
        return (
            f"{what}: not among the cached merges that name their plan ({older} older ones do not)"
        )
    extra = (
        " (its scene_prompts are part of it)"
        if getattr(spec.params, "scene_prompts", False)
        else ""
    )
    return f"{what}: not cached, the run merges first{extra}"


def _dry_run_summary(
    console: Console, table: Table, rows: list[tuple[ImageTask, str]], out_root: Any
) -> int:
    from scenecraft.ui.plan import by_scene, seed_ranges

    for col in ("scene", "seeds", "size", "steps", "sampler", "render", "up to date"):
        table.add_column(col, no_wrap=True)
    table.add_column("folder", overflow="fold", min_width=16)
    for group in by_scene(rows, lambda row: row[0].job).values():
        j = group[0][0].job
        todo = sum(1 for _, status in group if status == "render")
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
