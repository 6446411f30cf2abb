"""``scenecraft merge FILE.scene``: load the base, merge the concepts (cached), print figures.

`run` gets typed `MergeSettings` and the loaded file; errors are `DiagnosticError`s, rendered by
`scenecraft.cli.main`.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from scenecraft import models
from scenecraft.api import Loaded
from scenecraft.cli.args import MergeSettings
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
    if settings.json:
        return _finish(merge(spec, pipe, cache_dir=cache_dir, force=force), settings.json)
    console = Console(stderr=True)
    with progress_reporter(console) as reporter:
        result = merge(spec, pipe, reporter=reporter, cache_dir=cache_dir, force=force)
    return _finish(result, settings.json, console)


def _finish(result: Any, as_json: bool, console: Console | None = None) -> int:
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
        return 0
    print_merge_result(console or Console(stderr=True), result)
    return 0
