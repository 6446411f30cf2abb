"""One generator per image, and a batch halved on out of memory (CUDA, MPS or CPU) until it fits.

Every image gets its own ``torch.Generator`` seeded with its seed, so its pixels depend only on
the seed, never on the batch it lands in or its position there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from scenecraft.diagnostics import error
from scenecraft.render.batching import ImageTask


def generators(tasks: Sequence[ImageTask]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed (device-independent noise)."""
    return [torch.Generator("cpu").manual_seed(t.seed) for t in tasks]


_CPU_OOM = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory, or the CPU allocator's (a plain RuntimeError naming the
    allocator) and Python's own MemoryError: all mean "this batch does not fit"."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CPU_OOM)


def run_halving(
    batch: Sequence[ImageTask],
    call: Callable[[Sequence[ImageTask]], None],
    on_oom: Callable[[int, int], None],
) -> Iterator[int]:
    """Run ``call`` on ``batch``; out of memory (`is_oom`: CUDA or CPU) splits it in halves and
    retries each; no image lost.

    Yields the batch size that succeeded each time, so the caller can shrink later batches.
    ``on_oom(old, new)`` is told of every split. OOM on a single image is `out-of-memory`.
    """
    pending: list[Sequence[ImageTask]] = [batch]
    while pending:
        part = pending.pop(0)
        try:
            call(part)
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(part) == 1:
                job = part[0].job
                raise error(
                    "out-of-memory",
                    f"the device ran out of memory rendering one {job.width}x{job.height} "
                    f"image (scene `{job.scene}` seed {part[0].seed})",
                    notes=(f"{type(exc).__name__}: {str(exc).strip()[:200]}",),
                    help="use a smaller size, `--dtype float16`, or a device with more memory",
                ) from None
            half = (len(part) + 1) // 2
            on_oom(len(part), half)
            pending[:0] = [part[:half], part[half:]]
            continue
        yield len(part)
