"""The `scenecraft` command: check, compile, fmt, layout, merge, render, export, review, watch,
cache, lsp.

Every user error is a Diagnostic rendered here (exit code 2); nothing below prints a traceback.
Arguments are defined in `scenecraft.cli.args`; only `merge`, `render` (not `render --dry-run`),
`export` and `watch` import torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from scenecraft.api import Loaded, load
from scenecraft.cli.args import (
    CacheSettings,
    ExportSettings,
    MergeSettings,
    RenderSettings,
    ReviewSettings,
    WatchSettings,
    build_parser,
)
from scenecraft.cli.common import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USER_ERROR,
    Output,
    quiet_library_noise,
    resource_fault,
    variables,
)
from scenecraft.cli.language import cmd_check, cmd_compile, cmd_fmt, cmd_layout
from scenecraft.diagnostics import DiagnosticError, to_json


def _load(args: argparse.Namespace, out: Output, *, allow_missing: bool) -> Loaded:
    loaded = load(args.file, variables(args), allow_missing=allow_missing, max_jobs=args.max_jobs)
    out.sources.update(loaded.sources)
    out.show(loaded.warnings)
    return loaded


def cmd_merge(args: argparse.Namespace, out: Output) -> int:
    from scenecraft.cli.merge import run  # torch: imported for merge and render only

    return run(MergeSettings.from_args(args), _load(args, out, allow_missing=False))


def cmd_render(args: argparse.Namespace, out: Output) -> int:
    if args.dry_run:  # plans and lists, no torch
        from scenecraft.cli.preview import run
    else:
        from scenecraft.cli.render import run  # torch: imported for merge and render only

    # a dry run only lists jobs, so drafts with missing LoRA files are fine there
    loaded = _load(args, out, allow_missing=args.dry_run)
    return run(RenderSettings.from_args(args), loaded)


def cmd_export(args: argparse.Namespace, out: Output) -> int:
    from scenecraft.cli.export import run  # torch: imported for merge, render and export only

    return run(ExportSettings.from_args(args), _load(args, out, allow_missing=False), out)


def cmd_review(args: argparse.Namespace, out: Output) -> int:
    # imported here: the rating page's HTTP server and PIL stay out of check/compile/fmt
    from scenecraft.cli.review import run as run_review

    return run_review(ReviewSettings.from_args(args))


def cmd_watch(args: argparse.Namespace, out: Output) -> int:
    from scenecraft.cli.watch import run as run_watch  # torch: it renders

    return run_watch(WatchSettings.from_args(args))


def cmd_cache(args: argparse.Namespace, out: Output) -> int:
    from scenecraft.cli.cache import run as run_cache  # reads manifests: no torch

    return run_cache(CacheSettings.from_args(args))


def cmd_lsp(args: argparse.Namespace, out: Output) -> int:
    try:
        from scenecraft.lsp.server import run as run_lsp  # pygls: the optional [lsp] extra
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("pygls", "lsprotocol"):
            raise
        print(
            'error: `scenecraft lsp` needs pygls, which is not installed: pip install "scenecraft[lsp]"',
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return run_lsp()


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "check": cmd_check,
    "compile": cmd_compile,
    "fmt": cmd_fmt,
    "layout": cmd_layout,
    "merge": cmd_merge,
    "render": cmd_render,
    "export": cmd_export,
    "review": cmd_review,
    "watch": cmd_watch,
    "cache": cmd_cache,
    "lsp": cmd_lsp,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output()
    quiet_library_noise()
    try:
        return COMMANDS[args.command](args, out)
    except DiagnosticError as exc:
        out.collect_sources(exc)
        if getattr(args, "format", "text") == "json":
            print(to_json(exc.diagnostics))
        else:
            out.show(exc.diagnostics)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug in scenecraft, not in the user's input
        fault = resource_fault(exc)  # ... unless the machine ran out of memory
        if fault is not None:
            out.show([fault])
            return EXIT_USER_ERROR
        if os.environ.get("SCENECRAFT_DEBUG"):
            raise
        print(
            f"error[internal-error]: {type(exc).__name__}: {exc}\n"
            " = help: this is a bug in scenecraft; rerun with SCENECRAFT_DEBUG=1 for a traceback "
            "and report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
