"""``scenecraft merge FILE.scene``: load the base, merge the concepts (cached), print figures.

`run` gets typed `MergeSettings` and the loaded file; errors are `DiagnosticError`s, rendered by
`scenecraft.cli.main`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from scenecraft import models
from scenecraft.api import Loaded
from scenecraft.cli.args import MergeSettings
from scenecraft.events import Event, Notice
from scenecraft.merge.api import merge
from scenecraft.ui.merge_table import print_merge_result
from scenecraft.ui.progress import progress_reporter


def run(settings: MergeSettings, loaded: Loaded) -> int:
    """Merge the scene's concepts; JSON on stdout with ``--json``, else progress and a table."""
    spec = loaded.plan.merge
    if spec.method == "none":
        return _finish(merge(spec, None), settings.json)
    pipe = models.load_pipeline(spec.base, device=settings.device, dtype=settings.dtype)
    cache_dir, force = settings.cache_dir, settings.force
    if settings.json:  # no progress; the notices (a damaged cache entry rebuilt) go in the JSON
        notices: list[Notice] = []

        def keep(event: Event) -> None:
            if isinstance(event, Notice):
                notices.append(event)
                print(f"{event.level}: {event.message}", file=sys.stderr)

        result = merge(spec, pipe, reporter=keep, cache_dir=cache_dir, force=force)
        return _finish(result, settings.json, notices=notices)
    console = Console(stderr=True)
    with progress_reporter(console) as reporter:
        result = merge(spec, pipe, reporter=reporter, cache_dir=cache_dir, force=force)
    return _finish(result, settings.json, console)


def _finish(
    result: Any, as_json: bool, console: Console | None = None, notices: Sequence[Notice] = ()
) -> int:
    if as_json:
        data = result.as_dict()
        data["warnings"] = [{"level": n.level, "message": n.message} for n in notices]
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print_merge_result(console or Console(stderr=True), result)
    return 0
