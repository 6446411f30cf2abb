"""``scenecraft render``: command-line flags and the glue from a loaded file to the engine.

The CLI parses the common arguments (FILE, --var, --vars, --allow-missing, --json), calls
``scenecraft.api.load`` and then `run` here. Errors are DiagnosticErrors (the CLI renders them,
exit 2); Ctrl-C exits 130 after the engine has saved every finished image and the manifest.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from scenecraft.diagnostics import error
from scenecraft.render.batching import ImageTask, parse_shard
from scenecraft.render.engine import is_up_to_date, plan_images, render, render_mode
from scenecraft.render.outputs import Manifest
from scenecraft.ui.plan import MAX_ROWS


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The render-specific flags."""
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENE",
        help="render only this scene or storyboard (repeatable)",
    )
    p.add_argument("--out", default="./out", metavar="DIR", help="output folder (default ./out)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images per pipeline call (default: the file's batch_size)",
    )
    p.add_argument(
        "--device", default=None, metavar="D", help="cuda, cuda:N, mps, cpu (default: best)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        metavar="T",
        help="float16, bfloat16, float32 (default: fp16 on GPU, fp32 on CPU)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the jobs, render nothing")
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/n",
        help="render the i-th of n deterministic shares of the jobs (1 <= i <= n)",
    )
    p.add_argument("--force", action="store_true", help="render images that are up to date too")
    p.add_argument(
        "--adapters",
        action="store_true",
        help="render with the LoRAs as runtime adapters instead of the merged model (in a "
        "regional scene each adapter acts only inside its subject's region)",
    )
    p.add_argument("--quiet", action="store_true", help="print warnings and errors only")
    p.add_argument(
        "--events",
        choices=["json"],
        default=None,
        help="write progress events as JSON lines to stdout",
    )
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="merge cache folder")


def run(args: argparse.Namespace, loaded: Any, console: Console | None = None) -> int:
    """Render ``loaded.plan`` as the flags say; returns the exit status."""
    from scenecraft.ui.progress import progress_reporter

    plan = loaded.plan
    shard = parse_shard(args.shard) if args.shard else None
    if args.batch_size is not None and args.batch_size < 1:
        raise error(
            "bad-batch-size",
            f"--batch-size must be at least 1, not {args.batch_size}",
            help="use --batch-size 1 on small GPUs",
        )
    console = console or Console()
    if args.dry_run:
        tasks = plan_images(plan, args.out, only=args.only, shard=shard, adapters=args.adapters)
        return dry_run(console, plan, tasks, args)
    try:
        with progress_reporter(console, events=args.events, quiet=args.quiet) as reporter:
            result = render(
                plan,
                args.out,
                batch_size=args.batch_size,
                only=args.only,
                shard=shard,
                force=args.force,
                adapters=args.adapters,
                reporter=reporter,
                device=args.device,
                dtype=args.dtype,
                cache_dir=args.cache_dir,
            )
    except KeyboardInterrupt:
        return 130
    if getattr(args, "json", False) and args.events != "json":
        console.print_json(json.dumps(result.as_dict()))
    return 0


def dry_run(console: Console, plan: Any, tasks: list[ImageTask], args: argparse.Namespace) -> int:
    """Print the images the run would render (and which are up to date); render nothing."""
    from pathlib import Path

    from scenecraft.render.engine import open_manifest, weights_key

    mode = render_mode(plan, args.adapters)
    manifest: Manifest = open_manifest(
        plan, Path(args.out), mode, parse_shard(args.shard) if args.shard else None
    )
    out_root = Path(args.out).resolve()
    rows = [
        (t, "up to date" if not args.force and is_up_to_date(t, manifest, out_root) else "render")
        for t in tasks
    ]
    if getattr(args, "json", False) or args.events == "json":
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
        print(json.dumps({"mode": mode, "merge_key": weights_key(plan, mode), "images": data}))
        return 0
    table = Table(title=f"{len(tasks)} image(s), mode {mode}", show_lines=False)
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
    console.print(table)
    return 0


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
    console.print(table)
    console.print("[dim]one row per scene; `--json` lists every image[/]")
    return 0
