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
   worker renders one through the shared ``Session.run_batch`` and returns PNG bytes (with the
   same provenance chunks as in process), which the driver writes atomically;
4. workers' events (steps, notices, merge stages) stream back through a small actor the driver
   polls, as `WorkerProgress` rows and the usual events;
5. a worker that dies (killed, OOM, node lost) has its unfinished batches put back in the queue
   for the others and is replaced (at most ``actors`` replacements); a batch that has failed on
   ``max_attempts`` workers is `ray-batch-failed`, naming its jobs. Ctrl-C writes the batches
   already finished, stops the workers and lets the engine write an interrupted manifest.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.events import WorkerLost, WorkerStarted, emit
from scenecraft.render.batching import ImageTask
from scenecraft.render.ray_worker import EventBox, RenderWorker, _RemoteDiagnostics, concept_files
from scenecraft.render.session import Work

POLL_SECONDS = 0.2  # the driver looks for finished batches and events this often
MANIFEST_SECONDS = 1.0  # the driver rewrites the manifest at most this often during a run


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

    def run(self, work: Work) -> None:
        import ray

        if work.pipe is not None:
            raise ValueError("a Ray executor loads the pipeline on its workers; do not pass pipe")
        started = self._connect(ray)
        box: Any = None
        try:
            box = ray.remote(EventBox).options(num_cpus=0).remote()
            self._run(ray, work, box)
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

    def _run(self, ray: Any, work: Work, box: Any) -> None:
        gpus, cpus, count = self._resources(ray)
        files = ray.put(concept_files(work.plan))
        make = ray.remote(RenderWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=0, runtime_env=self.runtime_env
        )
        args = (work.plan, files, work.mode, work.merge_key, work.device, work.dtype, cpus, box)

        def spawn() -> _Worker:
            name = f"w{self._spawned}"
            self._spawned += 1
            handle = make.remote(name, *args)
            handle.load.remote()  # start loading now; its errors come back from setup too
            worker = _Worker(name, handle, None)
            self.workers.append(worker)
            return worker

        for _ in range(min(count, len(work.batches))):
            spawn()
        # 1. the merge, built once by one worker (same device and dtype as the renders)
        key_ref, entry_ref = ray.put(""), ray.put({})
        if work.mode == "merged":
            key_ref, entry_ref = self._build_merge(ray, work, box, work.reporter, spawn)
        for w in self.workers:
            w.setup = w.handle.setup.remote(key_ref, entry_ref)
        # 2. hand out batches, collect images, survive lost workers
        dispatch = _Dispatch(self, ray, work, box, lambda: _respawn(spawn, key_ref, entry_ref))
        self.stats = dispatch.stats
        try:
            dispatch.loop()
        except KeyboardInterrupt:
            dispatch.keep_finished()
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


def _respawn(spawn: Callable[[], _Worker], key_ref: Any, entry_ref: Any) -> _Worker:
    new = spawn()
    new.setup = new.handle.setup.remote(key_ref, entry_ref)
    return new


class _Dispatch:
    """One run's batches on the executor's workers: handed out ``inflight`` at a time per
    worker, written through the driver's recorder as they come back, put back in the queue
    when their worker is lost (which is replaced, at most as many times as there were workers)."""

    def __init__(
        self,
        executor: RayExecutor,
        ray: Any,
        work: Work,
        box: Any,
        respawn: Callable[[], _Worker],
    ):
        self.ex, self.ray, self.work, self.box, self.respawn = executor, ray, work, box, respawn
        self.reporter = work.reporter
        self.batches = [list(b) for b in work.batches]
        self.pending = deque(range(len(self.batches)))
        self.attempts = [0] * len(self.batches)
        self.inflight: dict[Any, tuple[_Worker, int]] = {}
        self.replacements = len(executor.workers)  # each worker replaced once, on average
        self.last_save = time.monotonic()
        self.stats = dict.fromkeys(
            ("images", "batches", "worker_busy_s", "worker_s", "driver_s"), 0.0
        )

    def loop(self) -> None:
        while self.pending or self.inflight:
            self.hand_out()
            setups = {w.setup: w for w in self.ex.workers if not w.ready}
            refs = [*self.inflight, *setups]
            if not refs:
                raise error(
                    "ray-batch-failed",
                    f"every Ray worker was lost; {len(self.pending)} batch(es) not rendered",
                    help="see `ray status` and the workers' logs (`ray logs`); "
                    "a re-run renders only what is missing",
                )
            done, _ = self.ray.wait(refs, num_returns=1, timeout=POLL_SECONDS)
            self.ex._drain(self.ray, self.box, self.reporter)
            for ref in done:
                if ref in setups:
                    self.ready(setups[ref], ref)
                elif ref in self.inflight:  # else put back already when its worker was lost
                    self.collect(ref)
        end = time.perf_counter()
        self.stats["worker_s"] += sum(end - w.ready_at for w in self.ex.workers if w.ready)
        self.ex._drain(self.ray, self.box, self.reporter)

    def hand_out(self) -> None:
        for w in self.ex.workers:
            while w.ready and w.load < self.ex.inflight and self.pending:
                b = self.pending.popleft()
                total = len(self.batches)
                ref = w.handle.render.remote(self.batches[b], b, total, self.work.size)
                self.inflight[ref] = (w, b)
                w.load += 1

    def ready(self, w: _Worker, ref: Any) -> None:
        try:
            info = _get(self.ray, ref)
        except _Lost as exc:
            self.lost(w, exc.reason)
            return
        w.ready, w.ready_at = True, time.perf_counter()
        emit(self.reporter, WorkerStarted(w.name, info["node"], info["device"]))

    def collect(self, ref: Any) -> None:
        w, b = self.inflight[ref]
        start = time.perf_counter()
        try:
            pngs, busy = _get(self.ray, ref)
        except _Lost as exc:
            self.lost(w, exc.reason)  # puts this batch back with the worker's others
            return
        del self.inflight[ref]
        w.load -= 1
        self.write(b, pngs)
        if time.monotonic() - self.last_save >= MANIFEST_SECONDS:
            self.work.recorder.flush()
            self.last_save = time.monotonic()
        self.stats["driver_s"] += time.perf_counter() - start
        self.stats["worker_busy_s"] += busy
        self.stats["images"] += len(pngs)
        self.stats["batches"] += 1

    def write(self, b: int, pngs: list[bytes]) -> None:
        for task, png in zip(self.batches[b], pngs, strict=True):
            self.work.recorder.put(task, png)

    def lost(self, worker: _Worker, reason: str) -> None:
        if worker not in self.ex.workers:
            return
        self.ex.workers.remove(worker)
        if worker.ready:
            self.stats["worker_s"] += time.perf_counter() - worker.ready_at
        mine = [(r, b) for r, (w, b) in self.inflight.items() if w is worker]
        for r, b in mine:
            del self.inflight[r]
            self.attempts[b] += 1
            if self.attempts[b] >= self.ex.max_attempts:
                raise batch_failed(self.batches[b], self.attempts[b], reason)
            self.pending.appendleft(b)
        emit(self.reporter, WorkerLost(worker.name, reason, len(mine)))
        self.ray.kill(worker.handle)
        if self.replacements > 0 and (self.pending or self.inflight):
            self.replacements -= 1
            self.respawn()

    def keep_finished(self) -> None:
        """Ctrl-C: write the batches that are already back (then the caller stops)."""
        ready, _ = self.ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=0)
        for ref in ready:
            try:
                pngs, _ = _get(self.ray, ref)
            except Exception:
                continue
            self.write(self.inflight[ref][1], pngs)


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
