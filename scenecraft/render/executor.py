"""Where a run's batches are rendered: in this process, or on Ray actors.

`scenecraft.render.engine.render` selects, skips and batches the images, then hands the batches
to an executor as a `Work`; that is the one place that decides how they run. Every executor
renders a batch through the same per-batch function (`scenecraft.render.session.Session.run_batch`:
one pipeline call, halved on out of memory, PNG bytes from the one encoder), and the driver writes
them through the same `Recorder`, so whatever that call does (samplers, regions, adapters) is the
same everywhere.

    render(plan, "out")                                    # InProcess
    render(plan, "out", executor=ray_executor())           # local Ray instance (started or joined)
    render(plan, "out", executor=ray_executor("ray://head:10001"))

Ray is an optional extra (``pip install "scenecraft[ray]"``) imported only by `ray_executor`.
"""

from __future__ import annotations

from typing import Any, Protocol

from scenecraft.diagnostics import error
from scenecraft.render.session import Session, Work

__all__ = ["Executor", "InProcess", "Work", "ray_executor"]


class Executor(Protocol):
    def run(self, work: Work) -> None:
        """Render every batch of ``work``; each image goes to ``work.recorder``."""
        ...


class InProcess:
    """The default executor: one pipeline in this process renders the batches in order."""

    def run(self, work: Work) -> None:
        session = Session(work.plan, work.mode, work.merge_key, work.reporter, work.recorder)
        pipe = session.prepare(work.pipe, work.device, work.dtype, work.cache_dir)
        session.run(pipe, work.batches, work.size)


def ray_executor(address: str | None = None, **options: Any) -> Executor:
    """A `RayExecutor` (see `scenecraft.render.ray_executor` for ``options``).

    ``address`` None or "": start or join a local Ray instance; else connect to that cluster
    (``ray://host:10001``, ``host:6379`` or ``auto``). Without Ray this is `ray-not-installed`.
    """
    try:
        import ray  # noqa: F401
    except ImportError:
        raise error(
            "ray-not-installed",
            "`scenecraft render --ray` needs Ray, which is not installed",
            help='install the extra: `pip install "scenecraft[ray]"`, or render without --ray',
        ) from None
    from scenecraft.render.ray_executor import RayExecutor

    return RayExecutor(address or None, **options)
