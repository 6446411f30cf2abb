"""``scenecraft cache list|prune``: what the merge cache holds, and removing what nobody uses.

Reads manifests and file sizes only (no torch). The rules live in `scenecraft.merge.cache.prune`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from scenecraft.cli.args import CacheSettings
from scenecraft.merge.cache import EntryInfo, entries, prune, resolve_cache_dir, unwritable


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "?"


def _as_dict(e: EntryInfo) -> dict[str, Any]:
    return {
        "key": e.key,
        "path": str(e.path),
        "bytes": e.bytes,
        "last_used": _when(e.last_used),
        "created": e.created,
        "method": e.method,
        "concepts": list(e.concepts),
        "lineage": e.lineage,
    }


def _lines(listed: Sequence[EntryInfo]) -> list[str]:
    return [
        f"{e.key}  {_when(e.last_used)}  {_mb(e.bytes):>10}  {e.method:<16} {', '.join(e.concepts)}"
        for e in listed
    ]


def run(settings: CacheSettings) -> int:
    root = resolve_cache_dir(settings.cache_dir)
    if settings.action == "list":
        listed = entries(root)
        if settings.json:
            print(json.dumps([_as_dict(e) for e in listed], indent=2))
            return 0
        header = f"{'entry':<32}  {'last used':<16}  {'size':>10}  {'method':<16} concepts"
        print("\n".join([header, *_lines(listed)]) if listed else f"no cached merges in {root}")
        total = sum(e.bytes for e in listed)
        if listed:
            print(f"{len(listed)} merge(s), {_mb(total)} in {root}")
        return 0
    try:
        removed = prune(
            root,
            older_than=settings.older_than,
            max_bytes=settings.max_bytes,
            dry_run=settings.dry_run,
        )
    except OSError as exc:  # a read-only or vanished cache folder: a diagnostic, exit 2
        raise unwritable(root, exc) from None
    left = [e for e in entries(root) if e.key not in {r.key for r in removed}]
    if settings.json:
        report = {
            "dry_run": settings.dry_run,
            "removed": [_as_dict(e) for e in removed],
            "kept": len(left),
            "kept_bytes": sum(e.bytes for e in left),
        }
        print(json.dumps(report, indent=2))
        return 0
    verb = "would remove" if settings.dry_run else "removed"
    for line in _lines(removed):
        print(f"{verb} {line}")
    print(
        f"{verb} {len(removed)} merge(s), {_mb(sum(e.bytes for e in removed))}; "
        f"{len(left)} left, {_mb(sum(e.bytes for e in left))} in {root}"
    )
    return 0
