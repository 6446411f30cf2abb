"""Where a run's batches are rendered: in this process, or on Ray actors.

`scenecraft.render.engine.render` selects, skips and batches the images, then hands the batches
to an executor; that is the one place that decides how they run. Every executor renders a batch
through the same per-batch function (``_Session.run_batch``: one pipeline call, halved on CUDA
OOM), so whatever that call does (samplers, regions, adapters) is the same everywhere.

    render(plan, "out")                                    # InProcess
    render(plan, "out", executor=ray_executor())           # local Ray instance (started or joined)
    render(plan, "out", executor=ray_executor("ray://head:10001"))

Ray is an optional extra (``pip install "scenecraft[ray]"``) imported only by `ray_executor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from scenecraft.diagnostics import error
from scenecraft.render.batching import ImageTask

if TYPE_CHECKING:
    from scenecraft.render.engine import _Session


@dataclass(frozen=True)
class Work:
    """The batches of one run and how to load the model that renders them."""

    batches: Sequence[Sequence[ImageTask]]  # grouped by `make_batches`, in order
    size: int  # images per pipeline call
    pipe: Any = None  # a loaded pipeline to reuse (in process only)
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | Path | None = None  # the merge cache


class Executor(Protocol):
    def run(self, session: _Session, work: Work) -> None:
        """Render every batch of ``work``; each image goes to ``session.write``/``store``."""
        ...


class InProcess:
    """Today's path: one pipeline in this process renders the batches in order."""

    def run(self, session: _Session, work: Work) -> None:
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
