"""``scenecraft merge FILE.scene``: load the base, merge the concepts (cached), print figures.

The CLI parses the common arguments (FILE, --var, --vars, --allow-missing, --json), loads the
scene and calls `add_arguments` / `run` here. Errors are `DiagnosticError`s, rendered by the CLI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``scenecraft merge``."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="merge cache folder (default: $SCENECRAFT_CACHE or ~/.cache/scenecraft/merges)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild the merge even if cached")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=DTYPES, help="weights dtype for the merge")


def run(args: argparse.Namespace, loaded: Any) -> int:
    """Merge the scene's concepts; JSON on stdout with ``--json``, else progress and a table."""
    from scenecraft.merge.api import merge

    spec = loaded.plan.merge
    as_json = bool(getattr(args, "json", False))
    if spec.method == "none":
        result = merge(spec, None)
        return _finish(result, as_json)
    from scenecraft.models import load_pipeline

    pipe = load_pipeline(spec.base, device=args.device, dtype=args.dtype)
    options = {"cache_dir": args.cache_dir, "force": args.force}
    if as_json:
        result = merge(spec, pipe, **options)
        return _finish(result, as_json)
    from rich.console import Console

    from scenecraft.ui.progress import progress_reporter

    console = Console(stderr=True)
    with progress_reporter(console) as reporter:
        result = merge(spec, pipe, reporter=reporter, **options)
    return _finish(result, as_json, console)


def _finish(result: Any, as_json: bool, console: Any = None) -> int:
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
        return 0
    from rich.console import Console

    from scenecraft.ui.merge_table import print_merge_result

    print_merge_result(console or Console(stderr=True), result)
    return 0
