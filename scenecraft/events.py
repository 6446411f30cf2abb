"""Progress events: the engine reports through a plain callback, the UI draws.

Engines (merge, render) never import Rich. They take ``reporter: Reporter | None`` and call it
with small frozen dataclasses from this module (k-diffusion's ``callback({...})`` habit, uv's
Reporter). `scenecraft.ui` turns them into a live display; ``--events json`` writes them as JSON
lines with `Event.as_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    @property
    def type(self) -> str:
        name = type(self).__name__
        return "".join("-" + c.lower() if c.isupper() else c for c in name).lstrip("-")

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


Reporter = Callable[[Event], None]


def emit(reporter: Reporter | None, event: Event) -> None:
    """Send ``event`` if anyone listens."""
    if reporter is not None:
        reporter(event)


# ----------------------------------------------------------------------------- merge events


@dataclass(frozen=True)
class MergeStarted(Event):
    method: str  # merge method name
    concepts: tuple[str, ...]  # concept names in merge order
    key: str  # content-hash cache key


@dataclass(frozen=True)
class MergeStage(Event):
    stage: str  # "load", "text-encoder", "cross-attention", "spatial", "save", ...
    done: int  # units finished in this stage
    total: int  # units in this stage
    detail: str = ""  # e.g. the layer group being solved


@dataclass(frozen=True)
class MergeFinished(Event):
    key: str
    cached: bool  # True when served from the cache
    seconds: float
    path: str = ""  # the cache entry on disk
    figures: dict[str, Any] = field(default_factory=dict)  # quality summary


# ---------------------------------------------------------------------------- render events


@dataclass(frozen=True)
class RenderStarted(Event):
    total: int  # images this run will produce (after skips)
    skipped: int  # images already on disk with a matching job hash
    batches: int


@dataclass(frozen=True)
class BatchStarted(Event):
    index: int  # 0-based batch index
    total: int  # number of batches
    job_ids: tuple[str, ...]
    steps: int  # denoising steps per image in this batch


@dataclass(frozen=True)
class StepDone(Event):
    step: int  # 1-based step just finished
    total: int


@dataclass(frozen=True)
class ImageWritten(Event):
    job_id: str
    path: str
    scene: str
    seed: int


@dataclass(frozen=True)
class JobSkipped(Event):
    job_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class Notice(Event):
    level: str  # "info" | "warning" | "error"
    message: str


@dataclass(frozen=True)
class RenderFinished(Event):
    written: int
    skipped: int
    seconds: float
    interrupted: bool = False


# ------------------------------------------------------------- render events of Ray workers


@dataclass(frozen=True)
class WorkerStarted(Event):
    worker: str  # "w0", "w1", …; a replacement gets a new name
    node: str  # the node's IP address
    device: str  # the device its pipeline runs on, e.g. "cuda:0", "cpu"


@dataclass(frozen=True)
class WorkerProgress(Event):
    worker: str
    batch: int  # 0-based batch index
    batches: int  # number of batches in the run
    step: int  # steps done in this batch (0 when it starts)
    steps: int


@dataclass(frozen=True)
class WorkerLost(Event):
    worker: str
    reason: str  # e.g. "ActorDiedError: …"
    retried: int  # its unfinished batches, put back in the queue
