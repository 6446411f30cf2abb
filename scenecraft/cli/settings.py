"""The typed settings the commands hand the engines, built from the parsed arguments
(`scenecraft.cli.args` defines the arguments and re-exports these). Nothing heavy imported.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceSettings:
    """Which scene file, with which template variables."""

    file: str
    var: tuple[str, ...] = ()  # KEY=VALUE items, in order
    vars_files: tuple[str, ...] = ()  # .toml / .json files, in order

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SourceSettings:
        return cls(args.file, tuple(args.var), tuple(args.vars))


@dataclass(frozen=True)
class MergeSettings:
    """``scenecraft merge``."""

    json: bool = False
    device: str | None = None
    dtype: str | None = None
    cache_dir: Path | None = None
    force: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MergeSettings:
        return cls(
            json=args.json,
            device=args.device,
            dtype=args.dtype,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            force=args.force,
        )


@dataclass(frozen=True)
class RenderSettings:
    """``scenecraft render``."""

    out: str = "./out"
    only: tuple[str, ...] = ()
    batch_size: int | None = None
    shard: str | None = None  # "i/n" as typed; parsed (and checked) by the render command
    dry_run: bool = False
    force: bool = False
    adapters: bool = False
    quiet: bool = False
    events: str | None = None  # "json": progress events as JSON lines on stdout
    json: bool = False  # the result as JSON on stdout
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | None = None
    ray: str | None = None  # --ray: "" a local instance, else the cluster's address

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RenderSettings:
        fields: dict[str, Any] = {
            name: getattr(args, name) for name in cls.__dataclass_fields__ if name != "only"
        }
        return cls(only=tuple(args.only), **fields)


@dataclass(frozen=True)
class ReviewSettings:
    """``scenecraft review``."""

    out_dir: Path
    port: int = 8765
    summary: bool = False
    json: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReviewSettings:
        return cls(Path(args.out_dir), args.port, args.summary, args.json)


@dataclass(frozen=True)
class WatchSettings:
    """``scenecraft watch``."""

    source: SourceSettings  # the file and its template variables
    only: tuple[str, ...] = ()
    out: str = "./out"
    port: int = 8766  # the live page, on 127.0.0.1 (0: a free port)
    max_jobs: int | None = None
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WatchSettings:
        return cls(
            source=SourceSettings.from_args(args),
            only=tuple(args.only),
            out=args.out,
            port=args.port,
            max_jobs=args.max_jobs,
            device=args.device,
            dtype=args.dtype,
            cache_dir=args.cache_dir,
        )


@dataclass(frozen=True)
class CacheSettings:
    """``scenecraft cache list|prune``."""

    action: str  # "list" | "prune"
    cache_dir: Path | None = None  # None: $SCENECRAFT_CACHE, else the user cache folder
    json: bool = False
    older_than: float | None = None  # prune: seconds without a use
    max_bytes: int | None = None  # prune: the most the cache may hold afterwards
    dry_run: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CacheSettings:
        return cls(
            action=args.action,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            json=args.json,
            older_than=getattr(args, "older_than", None),
            max_bytes=getattr(args, "max_size", None),
            dry_run=getattr(args, "dry_run", False),
        )


@dataclass(frozen=True)
class ExportSettings:
    """``scenecraft export``."""

    lora: Path | None = None
    lora_format: str = "kohya"  # "kohya" | "peft"
    max_error: float | None = None  # None: the default budget (unless rank is set)
    rank: int | None = None
    precision: str = "fp16"
    checkpoint: Path | None = None
    diffusers: Path | None = None
    comfyui: Path | None = None
    json: bool = False
    device: str | None = None
    dtype: str | None = None
    cache_dir: Path | None = None
    force: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExportSettings:
        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(
            lora=path(args.lora),
            lora_format=args.format,
            max_error=args.max_error,
            rank=args.rank,
            precision=args.precision,
            checkpoint=path(args.checkpoint),
            diffusers=path(args.diffusers),
            comfyui=path(args.comfyui),
            json=args.json,
            device=args.device,
            dtype=args.dtype,
            cache_dir=path(args.cache_dir),
            force=args.force,
        )
