"""Rendering a run's batches on Ray actors (``scenecraft render --ray``); Ray is imported lazily.

The driver (this process) keeps everything that touches the output folder: it selected, skipped
and batched the images before (`scenecraft.render.engine.render`), and it writes every PNG and
the manifest, so a cluster needs no shared filesystem. Here:

1. ``actors`` workers start (default: one per GPU of the cluster with ``num_gpus=1``, else one
   per ``cpus_per_actor`` CPUs); each loads the base pipeline once and keeps it for all its
   batches. The concepts' LoRA and embedding files travel from the driver through the object
   store, so only the base model must be on every node (a hub id, or the same path);
2. the merge is built once, by the first worker (so on the workers' device and dtype, and its
   bytes are those an in-process run builds, or it comes from that node's merge cache); its
   entry's files go into the object store and every worker applies them;
3. batches, grouped exactly as in process, are handed out ``inflight`` at a time per worker; a
   worker renders one through the shared ``_Session.run_batch`` and returns PNG bytes (with the
   same provenance chunks as in process), which the driver writes atomically;
4. workers' events (steps, notices, merge stages) stream back through a small actor the driver
   polls, as `WorkerProgress` rows and the usual events;
5. a worker that dies (killed, OOM, node lost) has its unfinished batches put back in the queue
   for the others and is replaced (at most ``actors`` replacements); a batch that has failed on
   ``max_attempts`` workers is `ray-batch-failed`, naming its jobs. Ctrl-C writes the batches
   already finished, stops the workers and lets the engine write an interrupted manifest.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenecraft.diagnostics import Diagnostic, DiagnosticError, error
from scenecraft.events import (
    BatchStarted,
    Event,
    StepDone,
    WorkerLost,
    WorkerProgress,
    WorkerStarted,
    emit,
)
from scenecraft.plan import RenderPlan
from scenecraft.render.batching import ImageTask

if TYPE_CHECKING:
    from scenecraft.render.engine import _Session
    from scenecraft.render.executor import Work

FLUSH_SECONDS = 0.25  # a worker sends its events at most this often (and at every batch end)
POLL_SECONDS = 0.2  # the driver looks for finished batches and events this often
MANIFEST_SECONDS = 1.0  # the driver rewrites the manifest at most this often during a run


# ------------------------------------------------------------------------------ worker side


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


def _session_class() -> type:
    from scenecraft.render.engine import _Session

    class WorkerSession(_Session):
        """Renders like the driver's session; keeps PNG bytes instead of writing files."""

        out: list[bytes]

        def write(self, task: ImageTask, image: Any) -> None:
            self.out.append(encode_png(image, *self.png_text(task)))

        def flush(self) -> None:
            pass

    return WorkerSession


def encode_png(image: Any, parameters: str, provenance: dict[str, Any]) -> bytes:
    """The bytes `scenecraft.render.outputs.write_png` writes for the same image and chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("scenecraft", json.dumps(provenance, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


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
        device: str | None,
        dtype: str | None,
        threads: int,
        box: Any,
    ):
        _start(threads)
        self.name, self.plan, self.files, self.mode = name, plan, files, mode
        self.device, self.dtype, self.forward = device, dtype, _Forward(box, name)
        self.tmp = tempfile.TemporaryDirectory(prefix="scenecraft-worker-")
        self.session: Any = None
        self.pipe: Any = None
        self.limit = 0

    @_travel
    def load(self) -> None:
        """Load the base pipeline (once; errors come back from every later call too)."""
        if self.pipe is not None:
            return
        from scenecraft.models import load_pipeline
        from scenecraft.render.engine import RenderResult, weights_key

        plan = localize(self.plan, self.files, Path(self.tmp.name))
        result = RenderResult(Path("."), mode=self.mode, merge_key=weights_key(plan, self.mode))
        self.session = _session_class()(plan, result, None, self.forward, self.mode)
        pipe = load_pipeline(plan.merge.base, self.device, self.dtype)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    @_travel
    def build_merge(self, cache_dir: str | None) -> tuple[dict[str, Any], dict[str, bytes]]:
        """Build (or fetch from this node's cache) the merge: (its key and node, its files)."""
        from scenecraft.merge.api import merge

        self.load()

        result = merge(
            self.session.plan.merge, self.pipe, cache_dir=cache_dir, reporter=self.forward
        )
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
                from scenecraft.merge.apply import apply_merge

                folder = Path(self.tmp.name) / "merge" / key
                folder.mkdir(parents=True)
                for name, data in entry.items():
                    (folder / Path(name).name).write_bytes(data)
                apply_merge(self.pipe, folder)
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
        self.session.out = []
        self.limit = self.session.run_batch(self.pipe, batch, index, total, self.limit or size)
        self.forward.flush()
        return list(self.session.out), time.perf_counter() - start


# ------------------------------------------------------------------------------ driver side


@dataclass
class _Worker:
    name: str
    handle: Any
    setup: Any  # the ObjectRef of its setup call
    ready: bool = False
    load: int = 0  # batches handed to it and not yet back
    ready_at: float = 0.0  # when its setup came back


@dataclass
class RayExecutor:
    """Render batches on Ray actors; see the module docstring.

    ``address``: None starts or joins a local Ray instance, else a cluster address. ``actors``:
    how many workers (default: one per GPU, else one per ``cpus_per_actor`` CPUs, never more
    than there are batches). ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0.
    ``runtime_env``: passed to the workers (e.g. ``{"pip": ["scenecraft[ray]"]}``).
    """

    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: int = 1
    max_attempts: int = 3
    inflight: int = 2
    runtime_env: dict[str, Any] | None = None
    workers: list[_Worker] = field(default_factory=list)  # the live workers (for tests, tools)
    merge_key: str = ""  # the merge the workers applied
    # figures of the last run: images, batches; worker_busy_s (inside `render` on the workers),
    # worker_s (the workers' time from ready to done), driver_s (getting results and writing)
    stats: dict[str, float] = field(default_factory=dict)
    _spawned: int = 0

    # -- connection
    def _connect(self, ray: Any) -> bool:
        """Connect (or start); True when this call started Ray and must shut it down."""
        if ray.is_initialized():
            return False
        unreachable = _unreachable(self.address)
        if unreachable:
            raise connect_failed(self.address, unreachable)
        try:
            ray.init(
                address=self.address,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise connect_failed(
                self.address, f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None
        return True

    def run(self, session: _Session, work: Work) -> None:
        import ray

        if work.pipe is not None:
            raise ValueError("a Ray executor loads the pipeline on its workers; do not pass pipe")
        started = self._connect(ray)
        box: Any = None
        try:
            box = ray.remote(EventBox).options(num_cpus=0).remote()
            self._run(ray, session, work, box)
        finally:
            for worker in self.workers:
                ray.kill(worker.handle)
            self.workers = []
            if box is not None:
                ray.kill(box)
            if started:
                ray.shutdown()

    def _resources(self, ray: Any) -> tuple[float, int, int]:
        """(gpus per actor, cpus per actor, actors to start)."""
        res = ray.cluster_resources()
        gpus = float(res.get("GPU", 0))
        per_gpu = self.gpus_per_actor if self.gpus_per_actor is not None else (1 if gpus else 0)
        cpus = max(1, self.cpus_per_actor)
        if self.actors is not None:
            count = self.actors
        elif per_gpu:
            count = int(gpus // per_gpu)
        else:
            count = int(float(res.get("CPU", 1)) // cpus)
        return per_gpu, cpus, max(1, count)

    def _run(self, ray: Any, session: _Session, work: Work, box: Any) -> None:
        reporter = session.reporter
        batches = [list(b) for b in work.batches]
        gpus, cpus, count = self._resources(ray)
        count = min(count, len(batches))
        files = ray.put(concept_files(session.plan))
        make = ray.remote(RenderWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=0, runtime_env=self.runtime_env
        )
        replacements = count  # each worker may be replaced once, on average

        def spawn() -> _Worker:
            name = f"w{self._spawned}"
            self._spawned += 1
            args = (session.plan, files, session.mode, work.device, work.dtype, cpus, box)
            handle = make.remote(name, *args)
            handle.load.remote()  # start loading now; its errors come back from setup too
            worker = _Worker(name, handle, None)
            self.workers.append(worker)
            return worker

        for _ in range(count):
            spawn()
        # 1. the merge, built once by one worker (same device and dtype as the renders)
        key_ref, entry_ref = ray.put(""), ray.put({})
        if session.mode == "merged":
            key_ref, entry_ref = self._build_merge(ray, work, box, reporter, spawn)
        for w in self.workers:
            w.setup = w.handle.setup.remote(key_ref, entry_ref)
        # 2. hand out batches, collect images, survive lost workers
        pending = deque(range(len(batches)))
        attempts = [0] * len(batches)
        inflight: dict[Any, tuple[_Worker, int]] = {}
        last_save = time.monotonic()
        stats = self.stats = dict.fromkeys(
            ("images", "batches", "worker_busy_s", "worker_s", "driver_s"), 0.0
        )

        def lost(worker: _Worker, reason: str) -> None:
            nonlocal replacements
            if worker not in self.workers:
                return
            self.workers.remove(worker)
            if worker.ready:
                stats["worker_s"] += time.perf_counter() - worker.ready_at
            mine = [(r, b) for r, (w, b) in inflight.items() if w is worker]
            for r, b in mine:
                del inflight[r]
                attempts[b] += 1
                if attempts[b] >= self.max_attempts:
                    raise batch_failed(batches[b], attempts[b], reason)
                pending.appendleft(b)
            emit(reporter, WorkerLost(worker.name, reason, len(mine)))
            ray.kill(worker.handle)
            if replacements > 0 and (pending or inflight):
                replacements -= 1
                new = spawn()
                new.setup = new.handle.setup.remote(key_ref, entry_ref)

        try:
            while pending or inflight:
                for w in self.workers:
                    while w.ready and w.load < self.inflight and pending:
                        b = pending.popleft()
                        ref = w.handle.render.remote(batches[b], b, len(batches), work.size)
                        inflight[ref] = (w, b)
                        w.load += 1
                setups = {w.setup: w for w in self.workers if not w.ready}
                refs = [*inflight, *setups]
                if not refs:
                    raise error(
                        "ray-batch-failed",
                        f"every Ray worker was lost; {len(pending)} batch(es) not rendered",
                        help="see `ray status` and the workers' logs (`ray logs`); "
                        "a re-run renders only what is missing",
                    )
                done, _ = ray.wait(refs, num_returns=1, timeout=POLL_SECONDS)
                self._drain(ray, box, reporter)
                for ref in done:
                    if ref in setups:
                        w = setups[ref]
                        try:
                            info = _get(ray, ref)
                        except _Lost as exc:
                            lost(w, exc.reason)
                            continue
                        w.ready, w.ready_at = True, time.perf_counter()
                        emit(reporter, WorkerStarted(w.name, info["node"], info["device"]))
                        continue
                    if ref not in inflight:  # put back already when its worker was lost
                        continue
                    w, b = inflight[ref]
                    start = time.perf_counter()
                    try:
                        pngs, busy = _get(ray, ref)
                    except _Lost as exc:
                        lost(w, exc.reason)  # puts this batch back with the worker's others
                        continue
                    del inflight[ref]
                    w.load -= 1
                    for task, png in zip(batches[b], pngs, strict=True):
                        session.store(task, png)
                    if time.monotonic() - last_save >= MANIFEST_SECONDS:
                        session.flush()
                        last_save = time.monotonic()
                    stats["driver_s"] += time.perf_counter() - start
                    stats["worker_busy_s"] += busy
                    stats["images"] += len(pngs)
                    stats["batches"] += 1
            end = time.perf_counter()
            stats["worker_s"] += sum(end - w.ready_at for w in self.workers if w.ready)
            self._drain(ray, box, reporter)
        except KeyboardInterrupt:
            # keep what is finished: write the batches that are already back, then stop
            ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
            for ref in ready:
                try:
                    pngs, _ = _get(ray, ref)
                except Exception:
                    continue
                for task, png in zip(batches[inflight[ref][1]], pngs, strict=True):
                    session.store(task, png)
            raise

    def _build_merge(
        self, ray: Any, work: Work, box: Any, reporter: Any, spawn: Callable[[], _Worker]
    ) -> tuple[Any, Any]:
        """Have one worker build the merge; (ref of its key, ref of its files) for the others."""
        cache = str(work.cache_dir) if work.cache_dir is not None else None
        for attempt in range(1, self.max_attempts + 1):
            worker = self.workers[0] if self.workers else spawn()
            info_ref, entry_ref = worker.handle.build_merge.options(num_returns=2).remote(cache)
            try:
                info = self._wait_for(ray, info_ref, box, reporter)
            except _Lost as exc:
                self.workers.remove(worker)
                ray.kill(worker.handle)
                emit(reporter, WorkerLost(worker.name, exc.reason, 0))
                spawn()
                if attempt == self.max_attempts:
                    raise error(
                        "ray-batch-failed",
                        f"the merge could not be built: its Ray worker was lost {attempt} times",
                        notes=(f"last: {exc.reason}",),
                        help="a worker that keeps dying is often out of memory; see `ray status`",
                    ) from None
                continue
            self.merge_key = str(info["key"])
            return ray.put(self.merge_key), entry_ref
        raise AssertionError("unreachable")

    def _wait_for(self, ray: Any, ref: Any, box: Any, reporter: Any) -> Any:
        """``_get(ref)``, passing on the workers' events while waiting."""
        while True:
            done, _ = ray.wait([ref], timeout=POLL_SECONDS)
            self._drain(ray, box, reporter)
            if done:
                return _get(ray, ref)

    @staticmethod
    def _drain(ray: Any, box: Any, reporter: Any) -> None:
        if reporter is None:
            return
        for event in ray.get(box.take.remote()):
            emit(reporter, event)


class _Lost(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get`` with a lost worker as `_Lost` and a worker's diagnostics as a DiagnosticError."""
    from ray import exceptions as rx

    lost_types = tuple(
        getattr(rx, name)
        for name in ("RayActorError", "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")
        if hasattr(rx, name)
    )
    try:
        return ray.get(ref)
    except rx.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, _RemoteDiagnostics):
            raise DiagnosticError(cause.diagnostics) from None
        if isinstance(cause, lost_types):
            raise _Lost(f"{type(cause).__name__}: {_first_line(cause)}") from None
        raise
    except lost_types as exc:
        raise _Lost(f"{type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _unreachable(address: str | None) -> str:
    """Why ``host:port`` (or ``ray://host:port``) refuses a TCP connection; "" when it does not
    (Ray itself retries a dead address for minutes)."""
    import socket

    if not address or address == "auto" or ":" not in address:
        return ""
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return ""
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def connect_failed(address: str | None, reason: str) -> DiagnosticError:
    return error(
        "ray-connect-failed",
        f"cannot connect to the Ray cluster at `{address or 'local'}`",
        notes=(reason[:300],),
        help="start one with `ray start --head`, check the address (`host:6379`, "
        "`ray://host:10001`, `auto`), or use `--ray` alone for a local instance",
    )


def batch_failed(batch: Sequence[ImageTask], tries: int, reason: str) -> DiagnosticError:
    jobs = [f"{t.job.scene} seed {t.seed} (job {t.job.id[:10]})" for t in batch]
    return error(
        "ray-batch-failed",
        f"a batch of {len(batch)} image(s) was lost with its Ray worker {tries} times",
        notes=(f"last: {reason}", *(f"job: {j}" for j in jobs)),
        help="a worker that keeps dying is often out of memory: lower --batch-size, or give "
        "the workers more memory; a re-run renders only what is missing",
    )
