"""The `scenecraft` command: check, compile, fmt, merge, render.

Every user error is a Diagnostic rendered here (exit code 2); nothing below prints a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scenecraft import __version__
from scenecraft.diagnostics import Diagnostic, DiagnosticError, to_json

EXIT_OK = 0
EXIT_CHANGED = 1  # fmt --check found a file to reformat
EXIT_USER_ERROR = 2
EXIT_INTERNAL = 70


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="template variable (JSON values are parsed: --var seeds=[1,2])",
    )
    p.add_argument(
        "--vars", action="append", default=[], metavar="FILE", help="variables from .toml/.json"
    )
    p.add_argument(
        "--max-jobs",
        type=int,
        default=None,
        metavar="N",
        help="allow up to N images per file (default 100000)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenecraft",
        description="Declarative multi-concept scenes for Stable Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"scenecraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("check", help="report every problem in scene files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--strict", action="store_true", help="missing LoRA files are errors, not warnings"
    )
    _add_source_args(p)

    p = sub.add_parser("compile", help="print the render plan of a scene file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the RenderPlan as JSON on stdout")
    _add_source_args(p)

    p = sub.add_parser("fmt", help="format scene files canonically (in place)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    p.add_argument("--stdout", action="store_true", help="print instead of rewriting")

    p = sub.add_parser("layout", help="draw each scene's regions as boxes (no model needed)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--only", action="append", default=[], metavar="SCENE", help="these scenes")
    p.add_argument("--out", default="./out", metavar="DIR", help="output folder (default ./out)")
    _add_source_args(p)

    for name, module, text in (
        ("merge", "scenecraft.merge.command", "merge a scene file's LoRAs into one model"),
        ("render", "scenecraft.render.command", "render a scene file's images and storyboards"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", metavar="FILE")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        _add_source_args(p)
        p.set_defaults(_module=module)
        try:
            _import(module).add_arguments(p)
        except ImportError:  # pragma: no cover - a partial install
            pass

    p = sub.add_parser("review", help="rate rendered images against their references (a page)")
    _import("scenecraft.review.command").add_arguments(p)
    return parser


def _import(module: str) -> Any:
    import importlib

    return importlib.import_module(module)


def variables(args: argparse.Namespace) -> dict[str, Any]:
    from scenecraft.language.templating import parse_var, read_vars_file

    out: dict[str, Any] = {}
    for f in args.vars:
        out.update(read_vars_file(f))
    for item in args.var:
        key, value = parse_var(item)
        out[key] = value
    return out


class _Output:
    """Where diagnostics go: Rich on stderr (colour only on a terminal)."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}

    def show(self, diagnostics: Sequence[Diagnostic]) -> None:
        if diagnostics:
            from scenecraft.ui.diagnostics import print_diagnostics

            print_diagnostics(diagnostics, self.sources)


def cmd_check(args: argparse.Namespace, out: _Output) -> int:
    from scenecraft.api import load

    found: list[Diagnostic] = []
    failed = False
    for f in args.files:
        try:
            loaded = load(f, variables(args), allow_missing=not args.strict, max_jobs=args.max_jobs)
            out.sources.update(loaded.sources)
            found.extend(loaded.warnings)
        except DiagnosticError as exc:
            _collect_sources(exc, out)
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


def _collect_sources(exc: DiagnosticError, out: _Output) -> None:
    for d in exc.diagnostics:
        if d.span and d.span.file not in out.sources:
            try:
                out.sources[d.span.file] = Path(d.span.file).read_text(
                    encoding="utf-8", errors="replace"
                )
            except OSError:
                pass


def cmd_compile(args: argparse.Namespace, out: _Output) -> int:
    from scenecraft.api import load

    loaded = load(args.file, variables(args), max_jobs=args.max_jobs)
    out.sources.update(loaded.sources)
    out.show(loaded.warnings)
    plan = loaded.plan
    if args.json:
        print(plan.to_json())
        return EXIT_OK
    from scenecraft.ui.plan import print_plan

    print_plan(plan)
    return EXIT_OK


def cmd_fmt(args: argparse.Namespace, out: _Output) -> int:
    from scenecraft.language.fmt import format_file
    from scenecraft.language.loader import read_text
    from scenecraft.language.parser import parse
    from scenecraft.language.templating import is_template

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
                        help="format the rendered output instead: `scenecraft compile` shows it",
                    )
                ]
            )
        formatted = format_file(parse(text, f))
        if formatted == text:
            continue
        changed += 1
        if args.stdout:
            sys.stdout.write(formatted)
        elif args.check:
            print(f"would reformat {f}", file=sys.stderr)
        else:
            atomic_write(path, formatted)
            print(f"reformatted {f}", file=sys.stderr)
    return EXIT_CHANGED if (args.check and changed) else EXIT_OK


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_engine(args: argparse.Namespace, out: _Output) -> int:
    from scenecraft.api import load

    # a dry run only lists jobs, so drafts with missing LoRA files are fine there
    loaded = load(
        args.file,
        variables(args),
        allow_missing=bool(getattr(args, "dry_run", False)),
        max_jobs=args.max_jobs,
    )
    out.sources.update(loaded.sources)
    out.show(loaded.warnings)
    return int(_import(args._module).run(args, loaded))


def cmd_layout(args: argparse.Namespace, out: _Output) -> int:
    from scenecraft.api import load
    from scenecraft.render.sketch import write_sketches

    loaded = load(args.file, variables(args))
    out.sources.update(loaded.sources)
    out.show(loaded.warnings)
    for path in write_sketches(loaded.plan, args.out, args.only):
        print(path)
    return EXIT_OK


def cmd_review(args: argparse.Namespace, out: _Output) -> int:
    return int(_import("scenecraft.review.command").run(args))


COMMANDS = {
    "check": cmd_check,
    "compile": cmd_compile,
    "fmt": cmd_fmt,
    "layout": cmd_layout,
    "review": cmd_review,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Output()
    try:
        handler = COMMANDS.get(args.command, cmd_engine)
        return handler(args, out)
    except DiagnosticError as exc:
        _collect_sources(exc, out)
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
