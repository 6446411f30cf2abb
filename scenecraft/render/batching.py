"""Images to render, grouped into batches of compatible settings; CUDA OOM halves the batch.

An image is one (job, n) pair: job ``j`` with ``images_per_seed = k`` gives images n = 0..k-1
with seeds ``j.seed + n`` (A1111's batch convention, so each image's ``Seed:`` reproduces it
alone). Every image gets its own ``torch.Generator`` seeded with its seed, so its pixels depend
only on the seed, never on the batch it lands in or its position there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from scenecraft.diagnostics import error
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


def generators(tasks: Sequence[ImageTask]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed (device-independent noise)."""
    return [torch.Generator("cpu").manual_seed(t.seed) for t in tasks]


def run_halving(
    batch: Sequence[ImageTask],
    call: Callable[[Sequence[ImageTask]], None],
    on_oom: Callable[[int, int], None],
) -> Iterator[int]:
    """Run ``call`` on ``batch``; on CUDA OOM split it in halves and retry each; no image lost.

    Yields the batch size that succeeded each time, so the caller can shrink later batches.
    ``on_oom(old, new)`` is told of every split. OOM on a single image is `out-of-memory`.
    """
    pending: list[Sequence[ImageTask]] = [batch]
    while pending:
        part = pending.pop(0)
        try:
            call(part)
        except torch.cuda.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(part) == 1:
                raise error(
                    "out-of-memory",
                    f"the device ran out of memory rendering one {part[0].job.width}x"
                    f"{part[0].job.height} image",
                    help="use a smaller size, `--dtype float16`, or a device with more memory",
                ) from None
            half = (len(part) + 1) // 2
            on_oom(len(part), half)
            pending[:0] = [part[:half], part[half:]]
            continue
        yield len(part)
