"""Images to render (`ImageTask`, keyed by `image_key`), grouped into batches of compatible
settings. Pure Python: a dry run plans with it without torch (the per-image generators and the
halving on out-of-memory are `scenecraft.render.halving`).

An image is one (job, n) pair: job ``j`` with ``images_per_seed = k`` gives images n = 0..k-1
with seeds ``j.seed + n`` (A1111's batch convention, so each image's ``Seed:`` reproduces it
alone). Every image gets its own generator seeded with its seed (`scenecraft.render.halving`),
so its pixels depend only on the seed, never on the batch it lands in or its position there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scenecraft.plan import RenderJob, stable_hash


@dataclass(frozen=True)
class ImageTask:
    job: RenderJob
    n: int  # 0-based image index within the job's seed (images_per_seed > 1)
    seed: int  # the generator seed of this image: job.seed + n
    path: Path  # where the PNG goes
    key: str  # content key (`image_key`); a PNG with this key is up to date
    adapters: tuple[str, ...] = ()  # --adapters: the runtime adapters this image is drawn with

    @property
    def group(self) -> Group:
        """Settings that must agree inside one pipeline call (regional jobs go together: the
        regional processors run only for them; with --adapters, one set of active adapters)."""
        j = self.job
        return (
            j.width,
            j.height,
            j.steps,
            j.guidance,
            j.sampler,
            j.negative_prompt,
            bool(j.regions),
            self.adapters,
        )


Group = tuple[int, int, int, float, str, str, bool, tuple[str, ...]]


def image_key(
    job: RenderJob,
    n: int,
    merge_key: str,
    mode: str,
    adapters: tuple[str, ...] | None = None,
    engine_revision: int | None = None,
) -> str:
    """What determines the pixels beyond the job itself: image index, merged weights, mode,
    with --adapters the adapters active for it, and for a merged model the merge engine's
    revision (a newer engine merges the same plan to other weights, so its images are new)."""
    what: dict[str, object] = {"job": job.id, "n": n, "merge": merge_key, "mode": mode}
    if adapters is not None:
        what["adapters"] = list(adapters)
    if engine_revision is not None:
        what["engine_revision"] = engine_revision
    return stable_hash(what, 20)


def make_batches(tasks: Iterable[ImageTask], batch_size: int) -> list[list[ImageTask]]:
    """Group by compatible settings (first-seen order), then cut into batches of ``batch_size``."""
    groups: dict[Group, list[ImageTask]] = {}
    for task in tasks:
        groups.setdefault(task.group, []).append(task)
    size = max(1, batch_size)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
