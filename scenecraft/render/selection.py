"""Which jobs a run takes: ``--only`` scenes or storyboards and ``--shard i/n``.

Light (no torch): `scenecraft layout` selects scenes the way `scenecraft render` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from scenecraft.diagnostics import did_you_mean, error
from scenecraft.plan import RenderJob, RenderPlan


def shard_of(job_id: str, count: int) -> int:
    """0-based shard of a job: sha256 of its id modulo ``count`` (stable across runs, machines)."""
    return int(hashlib.sha256(job_id.encode()).hexdigest(), 16) % count


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 1 <= i <= n -> (i, n); `bad-shard` otherwise."""
    try:
        left, right = text.split("/")
        index, count = int(left), int(right)
    except ValueError:
        index, count = 0, 0
    if count < 1 or not 1 <= index <= count:
        raise error(
            "bad-shard",
            f"bad shard `{text}`",
            help="write --shard i/n with 1 <= i <= n, e.g. `--shard 1/4` … `--shard 4/4`",
        )
    return index, count


def in_shard(job: RenderJob, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(job.id, shard[1]) == shard[0] - 1


def select_jobs(
    plan: RenderPlan, only: Iterable[str] = (), shard: tuple[int, int] | None = None
) -> list[RenderJob]:
    """Jobs of the scenes or storyboards named in ``only`` (all if empty) in shard ``shard``."""
    wanted = set(only)
    names = {j.scene for j in plan.jobs} | {s.name for s in plan.storyboards}
    for name in sorted(wanted - names):
        raise error(
            "unknown-scene",
            f"no scene or storyboard named `{name}` in `{plan.file}`",
            help=did_you_mean(name, names) or f"known: {', '.join(sorted(names)) or 'none'}",
        )
    # a storyboard's panels may name scenes of their own: select those scenes' jobs too
    panel_jobs = {
        i for b in plan.storyboards if b.name in wanted for p in b.panels for i in p.job_ids
    }
    return [
        j
        for j in plan.jobs
        if (not wanted or j.scene in wanted or j.storyboard in wanted or j.id in panel_jobs)
        and in_shard(j, shard)
    ]
