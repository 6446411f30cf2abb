"""The worker side of ``scenecraft render --ray``: a Ray actor rendering batches into PNG bytes.

`RenderWorker` loads the base pipeline once, prepares the weights (the merge built by one worker
with `scenecraft.render.adapters.build_merge` and applied from its shipped files on every
worker, or the runtime adapters) and renders each batch through the shared
`scenecraft.render.session.Session.run_batch` into a `Kept` sink: the same bytes an in-process
run writes. Its events travel back through an `EventBox` actor (`_Forward`). The driver is
`scenecraft.render.ray_executor`.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic, DiagnosticError
from scenecraft.events import BatchStarted, Event, StepDone, WorkerProgress
from scenecraft.plan import RenderPlan
from scenecraft.render.adapters import apply_built_merge, build_merge
from scenecraft.render.batching import ImageTask
from scenecraft.render.session import Kept, Session

FLUSH_SECONDS = 0.25  # a worker sends its events at most this often (and at every batch end)


class _RemoteDiagnostics(Exception):
    """A DiagnosticError that survives pickling (its own args are a message, not diagnostics)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


def _travel(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)  # Ray reads the signature (through __wrapped__)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiagnosticError as exc:
            raise _RemoteDiagnostics(exc.diagnostics) from None

    return wrapper


class EventBox:
    """A Ray actor holding events until the driver takes them (per-sender order is kept)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def put(self, events: list[Event]) -> None:
        self.events.extend(events)

    def take(self) -> list[Event]:
        out, self.events = self.events, []
        return out


class _Forward:
    """A worker's reporter: batch and step events become `WorkerProgress`, sent in bunches."""

    def __init__(self, box: Any, worker: str):
        self.box, self.worker = box, worker
        self.pending: list[Event] = []
        self.last = 0.0
        self.batch = (0, 0)

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchStarted):
            self.batch = (event.index, event.total)
            event = WorkerProgress(self.worker, event.index, event.total, 0, event.steps)
        elif isinstance(event, StepDone):
            event = WorkerProgress(self.worker, *self.batch, event.step, event.total)
            if self.pending and isinstance(self.pending[-1], WorkerProgress):
                self.pending.pop()  # only the latest step of a bunch matters
        self.pending.append(event)
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.box.put.remote(self.pending)  # fire and forget; order per sender is kept
            self.pending = []
        self.last = time.monotonic()


def _start(threads: int) -> None:
    import torch

    from scenecraft.models import quiet_libraries

    torch.set_num_threads(max(1, threads))
    quiet_libraries()


def _node() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


def concept_files(plan: RenderPlan) -> dict[str, bytes]:
    """The bytes of every concept's LoRA and embedding file, by path (read on the driver)."""
    paths = {p for c in plan.merge.concepts for p in (c.lora, c.embedding) if p}
    return {p: Path(p).read_bytes() for p in sorted(paths) if Path(p).is_file()}


def localize(plan: RenderPlan, files: dict[str, bytes], folder: Path) -> RenderPlan:
    """``plan`` with its concept files written under ``folder`` and pointed at there.

    The merge key and every image key hash file contents, not paths: nothing else changes."""
    where: dict[str, str] = {}
    for i, (path, data) in enumerate(files.items()):
        local = folder / f"{i:03d}-{Path(path).name}"
        local.write_bytes(data)
        where[path] = str(local)
    concepts = tuple(
        c.model_copy(
            update={
                "lora": where.get(c.lora, c.lora) if c.lora else None,
                "embedding": where.get(c.embedding, c.embedding) if c.embedding else None,
            }
        )
        for c in plan.merge.concepts
    )
    merge = plan.merge.model_copy(update={"concepts": concepts})
    return plan.model_copy(update={"merge": merge})


class RenderWorker:
    """(A Ray actor) One pipeline, loaded once, rendering every batch it is given.

    Created -> the base pipeline is loaded; ``build_merge`` (one worker only) -> the merge
    entry's files; ``setup(entry)`` -> the merge applied (or the adapters loaded); then
    ``render`` batch after batch."""

    def __init__(
        self,
        name: str,
        plan: RenderPlan,
        files: dict[str, bytes],
        mode: str,
        merge_key: str,
        device: str | None,
        dtype: str | None,
        threads: int,
        box: Any,
    ):
        _start(threads)
        self.name, self.plan, self.files, self.mode = name, plan, files, mode
        self.merge_key, self.kept = merge_key, Kept()
        self.device, self.dtype, self.forward = device, dtype, _Forward(box, name)
        self.tmp = tempfile.TemporaryDirectory(prefix="scenecraft-worker-")
        self.session: Any = None  # a `Session`, once `load` ran
        self.pipe: Any = None
        self.limit = 0

    @_travel
    def load(self) -> None:
        """Load the base pipeline (once; errors come back from every later call too)."""
        if self.pipe is not None:
            return
        from scenecraft.models import load_pipeline

        plan = localize(self.plan, self.files, Path(self.tmp.name))
        self.session = Session(plan, self.mode, self.merge_key, self.forward, self.kept)
        pipe = load_pipeline(plan.merge.base, self.device, self.dtype)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    @_travel
    def build_merge(self, cache_dir: str | None) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Build (or fetch from this node's cache) the merge: (its key and node, its files)."""
        self.load()
        result = build_merge(self.session.plan.merge, self.pipe, cache_dir, self.forward)
        self.forward.flush()
        info = {"key": result.key, "node": _node()}
        if result.path is None:
            return info, {}
        folder = Path(result.path)
        return info, {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

    @_travel
    def setup(self, key: str, entry: dict[str, bytes]) -> dict[str, Any]:
        """Prepare the weights: apply the shipped merge, or load the adapters (base: nothing)."""
        self.load()
        if self.mode == "merged":
            if entry:
                folder = Path(self.tmp.name) / "merge" / key
                folder.mkdir(parents=True)
                for name, data in entry.items():
                    (folder / Path(name).name).write_bytes(data)
                apply_built_merge(self.pipe, folder)
                shutil.rmtree(folder)
            self.session.merge_entry = key
        else:
            self.pipe = self.session.prepare(self.pipe, self.device, self.dtype, None)
        self.forward.flush()
        device = str(getattr(getattr(self.pipe, "unet", None), "device", self.device or "?"))
        return {"node": _node(), "device": device, "pid": os.getpid()}

    @_travel
    def render(
        self, batch: Sequence[ImageTask], index: int, total: int, size: int
    ) -> tuple[list[bytes], float]:
        """One batch through the shared per-batch function: (PNG bytes in the batch's order,
        seconds it took here)."""
        start = time.perf_counter()
        self.kept.out = []
        self.limit = self.session.run_batch(self.pipe, batch, index, total, self.limit or size)
        self.forward.flush()
        return list(self.kept.out), time.perf_counter() - start
