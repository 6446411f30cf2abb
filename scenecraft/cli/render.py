"""``scenecraft render``: from typed `RenderSettings` and a loaded file to the render engine
(``--dry-run``: `scenecraft.cli.preview`, which the CLI imports alone, without torch).

Errors are DiagnosticErrors (`scenecraft.cli.main` renders them, exit 2); Ctrl-C exits 130 after
the engine has saved every finished image and the manifest. With ``--json`` stdout carries the
JSON result only: progress and warnings go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from scenecraft.cli import preview
from scenecraft.cli.args import RenderSettings
from scenecraft.render.engine import render
from scenecraft.ui.progress import progress_reporter


def run(settings: RenderSettings, loaded: Any, console: Console | None = None) -> int:
    """Render ``loaded.plan`` as the settings say; returns the exit status."""
    s = settings
    plan = loaded.plan
    if s.dry_run:
        return preview.run(s, loaded, console)
    shard = preview.checked_shard(s)
    # with --json, stdout is the JSON alone: the human lines go to stderr
    console = console or Console(stderr=s.json or s.quiet)
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
