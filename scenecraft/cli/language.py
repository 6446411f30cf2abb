"""The language commands: ``check``, ``compile``, ``fmt``, ``layout``. None of them imports torch,
diffusers or transformers (tests/test_cli_imports.py holds them to it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scenecraft.api import load
from scenecraft.cli.common import EXIT_CHANGED, EXIT_OK, EXIT_USER_ERROR, Output, variables
from scenecraft.diagnostics import Diagnostic, DiagnosticError, to_json
from scenecraft.files import atomic_write_text
from scenecraft.language.fmt import format_file
from scenecraft.language.loader import read_text
from scenecraft.language.parser import parse
from scenecraft.language.templating import is_template


def cmd_check(args: argparse.Namespace, out: Output) -> int:
    found: list[Diagnostic] = []
    failed = False
    for f in args.files:
        try:
            loaded = load(f, variables(args), allow_missing=not args.strict, max_jobs=args.max_jobs)
            out.sources.update(loaded.sources)
            found.extend(loaded.warnings)
        except DiagnosticError as exc:
            out.collect_sources(exc)
            found.extend(exc.diagnostics)
            failed = True
    if args.format == "json":
        print(to_json(found))
    else:
        out.show(found)
        if not failed:
            n = len(args.files)
            print(f"checked {n} file{'s' if n != 1 else ''}: no errors", file=sys.stderr)
    return EXIT_USER_ERROR if failed else EXIT_OK


def cmd_compile(args: argparse.Namespace, out: Output) -> int:
    loaded = load(args.file, variables(args), max_jobs=args.max_jobs)
    out.sources.update(loaded.sources)
    out.show(loaded.warnings)
    plan = loaded.plan
    if args.json:
        print(plan.to_json())
        return EXIT_OK
    # imported here: Rich loads only for the table, not for `--json` or `check`
    from scenecraft.ui.plan import print_plan

    print_plan(plan)
    return EXIT_OK


def cmd_fmt(args: argparse.Namespace, out: Output) -> int:
    changed = 0
    for f in args.files:
        path = Path(f)
        text = read_text(path, f)
        out.sources[f] = text
        if is_template(path, text):
            raise DiagnosticError(
                [
                    Diagnostic(
                        "cannot-format-template",
                        f"`{f}` is a Jinja template; fmt formats plain scene files only",
                        help=(
                            "templates are not formatted; `scenecraft compile FILE --json` holds "
                            "the rendered text as `rendered_source`"
                        ),
                    )
                ]
            )
        formatted = format_file(parse(text, f))
        if args.stdout:  # the formatted text, changed or not: what a pipe or an editor expects
            sys.stdout.write(formatted)
        if formatted == text:
            continue
        changed += 1
        if args.stdout:
            continue
        if args.check:
            print(f"would reformat {f}", file=sys.stderr)
        else:
            atomic_write_text(path, formatted)
            print(f"reformatted {f}", file=sys.stderr)
    return EXIT_CHANGED if (args.check and changed) else EXIT_OK


def cmd_layout(args: argparse.Namespace, out: Output) -> int:
    loaded = load(args.file, variables(args), max_jobs=args.max_jobs)
    out.sources.update(loaded.sources)
    out.show(loaded.warnings)
    # imported here: PIL stays out of check/compile/fmt, which share this module
    from scenecraft.render.sketch import write_sketches

    for path in write_sketches(loaded.plan, args.out, args.only):
        print(path)
    return EXIT_OK
