"""Every argument of the `scenecraft` command, defined once, and the typed settings built from them.

Commands receive the argparse Namespace only here; the engines get frozen dataclasses
(`RenderSettings`, `MergeSettings`). This module imports nothing heavy: `scenecraft check` must
answer without torch.
"""

from __future__ import annotations

import argparse
from typing import Any

from scenecraft import __version__
from scenecraft.cli.settings import (
    CacheSettings,
    ExportSettings,
    MergeSettings,
    RenderSettings,
    ReviewSettings,
    SourceSettings,
    WatchSettings,
)

__all__ = [  # the settings are read from here by the commands
    "DTYPES",
    "build_parser",
    "CacheSettings",
    "ExportSettings",
    "MergeSettings",
    "RenderSettings",
    "ReviewSettings",
    "SourceSettings",
    "WatchSettings",
]

DTYPES = ("float32", "float16", "bfloat16")


def _source_args(p: argparse.ArgumentParser) -> None:
    """The scene file's template variables (every command that loads a file)."""
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


def _engine_args(p: argparse.ArgumentParser, *, what: str) -> None:
    """Flags `merge` and `render` share: FILE, --json, device, dtype, cache, force."""
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    _source_args(p)
    p.add_argument(
        "--device", default=None, metavar="D", help="cuda, cuda:N, mps, cpu (default: best)"
    )
    p.add_argument(  # checked by the engine (`unknown-dtype`, a diagnostic like any other)
        "--dtype",
        default=None,
        metavar="T",
        help=f"{', '.join(DTYPES)} (default: fp16 on GPU, fp32 on CPU)",
    )
    _cache_dir_arg(p)
    p.add_argument("--force", action="store_true", help=what)


def _cache_dir_arg(p: argparse.ArgumentParser) -> None:
    """--cache-dir (`merge`, `render`, `cache`)."""
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="merge cache folder (default: $SCENECRAFT_CACHE or ~/.cache/scenecraft/merges)",
    )


def _only_out_args(p: argparse.ArgumentParser) -> None:
    """``--only SCENE`` (repeatable) and ``--out DIR``: what render and watch both select."""
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENE",
        help="render only this scene or storyboard (repeatable)",
    )
    p.add_argument("--out", default="./out", metavar="DIR", help="output folder (default ./out)")


def _render_args(p: argparse.ArgumentParser) -> None:
    _only_out_args(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="images per pipeline call (default: the file's batch_size)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the jobs, render nothing")
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/n",
        help="render the i-th of n deterministic shares of the jobs (1 <= i <= n)",
    )
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
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="render on Ray actors, one per GPU: a local instance, or the cluster at ADDRESS "
        '(needs `pip install "scenecraft[ray]"`)',
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected 0..65535 (0 picks a free port), not {text!r}")
    return port


def _review_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="the folder `scenecraft render --out` wrote")
    p.add_argument(
        "--port",
        type=_port,
        default=8765,
        metavar="N",
        help="port on 127.0.0.1 (default 8765; 0 picks a free one)",
    )
    p.add_argument(
        "--summary",
        action="store_true",
        help="print identity mean ± std per method and scene from ratings.json, serve nothing",
    )
    p.add_argument("--json", action="store_true", help="with --summary: JSON on stdout")


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE")
    _source_args(p)
    _only_out_args(p)
    p.add_argument(
        "--port",
        type=_port,
        default=8766,
        metavar="N",
        help="port of the live page on 127.0.0.1 (default 8766; 0 picks a free one)",
    )
    p.add_argument(
        "--device", default=None, metavar="D", help="cuda, cuda:N, mps, cpu (default: best)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        metavar="T",
        help=f"{', '.join(DTYPES)} (default: fp16 on GPU, fp32 on CPU)",
    )
    _cache_dir_arg(p)


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _size(text: str) -> int:
    """Bytes from ``500M``, ``10G``, ``1.5GB``, ``0`` (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 10G, not {text!r}")
    return int(value * _SIZE_UNITS[unit])


def _duration(text: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``2w``, ``45s``."""
    t = text.strip().lower()
    try:
        value = float(t[:-1]) if t[-1:] in _TIME_UNITS else -1.0
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a time such as 30d, 12h or 90m, not {text!r}")
    return value * _TIME_UNITS[t[-1]]


def _cache_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="every cached merge: key, last use, size, concepts")
    pr = sub.add_parser(
        "prune",
        help="remove superseded merges (the same merge for older scene prompts), and with "
        "--older-than / --max-size the least recently used",
    )
    for q in (ls, pr):
        _cache_dir_arg(q)
        q.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    pr.add_argument(
        "--older-than",
        type=_duration,
        default=None,
        metavar="AGE",
        help="also remove merges unused for AGE (30d, 12h, 90m)",
    )
    pr.add_argument(
        "--max-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="then remove the least recently used until the cache holds at most SIZE (10G)",
    )
    pr.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")


def _export_args(p: argparse.ArgumentParser) -> None:
    """``scenecraft export``: what to write and how the LoRA is factored (docs/export.md)."""
    p.add_argument("--lora", default=None, metavar="OUT", help="one LoRA file (.safetensors)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--max-error",
        type=float,
        default=None,
        metavar="E",
        help="relative Frobenius error allowed per layer; sets each layer's rank (default 0.01)",
    )
    budget.add_argument(
        "--rank", type=int, default=None, metavar="N", help="one rank for every layer instead"
    )
    p.add_argument(
        "--format",
        choices=("kohya", "peft"),
        default="kohya",
        help="LoRA key names: kohya (A1111/Forge/ComfyUI, default) or peft (diffusers)",
    )
    p.add_argument(
        "--precision",
        choices=("fp16", "fp32", "bf16"),
        default="fp16",
        help="tensors of the LoRA and checkpoint files (default fp16)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="OUT",
        help="single-file checkpoint with the merge fused (original SD key names)",
    )
    p.add_argument(
        "--diffusers", default=None, metavar="DIR", help="a diffusers folder of the fused model"
    )
    p.add_argument(
        "--comfyui",
        default=None,
        metavar="DIR",
        help="one ComfyUI API-format workflow per image (needs --lora or --checkpoint)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scenecraft",
        description="Declarative multi-concept scenes for Stable Diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"scenecraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _language_commands(sub)

    _engine_commands(sub)

    p = sub.add_parser("lsp", help="the language server, on stdin/stdout (needs scenecraft[lsp])")
    # what editors' LSP clients may append (vscode-languageclient): accepted, stdio either way
    p.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the default)")
    p.add_argument("--clientProcessId", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _language_commands(sub: Any) -> None:
    """check, compile, fmt, layout: the commands that need no model."""
    p = sub.add_parser("check", help="report every problem in scene files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--strict", action="store_true", help="missing LoRA files are errors, not warnings"
    )
    _source_args(p)

    p = sub.add_parser("compile", help="print the render plan of a scene file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the RenderPlan as JSON on stdout")
    _source_args(p)

    p = sub.add_parser(
        "fmt",
        help="format scene files canonically (in place)",
        description="Format plain scene files canonically, comments kept. Jinja templates "
        "(.scene.j2 or files with {% %} / {{ }} tags) are not formatted.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="exit 1 if a file would change")
    p.add_argument("--stdout", action="store_true", help="print instead of rewriting")

    p = sub.add_parser("layout", help="draw each scene's regions as boxes (no model needed)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--only", action="append", default=[], metavar="SCENE", help="these scenes")
    p.add_argument("--out", default="./out", metavar="DIR", help="output folder (default ./out)")
    _source_args(p)


def _engine_commands(sub: Any) -> None:
    """merge, render, export, review, watch, cache: the commands around a model's outputs."""
    p = sub.add_parser("merge", help="merge a scene file's LoRAs into one model")
    _engine_args(p, what="rebuild the merge even if cached")

    p = sub.add_parser("render", help="render a scene file's images and storyboards")
    _engine_args(p, what="render images that are up to date too")
    _render_args(p)

    p = sub.add_parser(
        "export", help="write the merge as a LoRA, checkpoint, diffusers folder, workflows"
    )
    _engine_args(p, what="rebuild the merge even if cached")
    _export_args(p)

    p = sub.add_parser("review", help="rate rendered images against their references (a page)")
    _review_args(p)

    p = sub.add_parser(
        "watch", help="re-render a scene file's changed images on every save, with a live page"
    )
    _watch_args(p)

    p = sub.add_parser("cache", help="list or prune the merge cache (no model needed)")
    _cache_args(p)
