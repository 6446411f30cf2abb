"""The render engine: a RenderPlan to PNGs, a manifest and storyboards; progress as events.

``render`` runs these steps:
  1. select jobs (``only`` scenes/storyboards, ``shard``) and expand them to images;
  2. skip images whose PNG (or manifest entry) already carries the same image key;
  3. load the base model (unless a pipeline is given) and prepare it: the merged model applied
     in place (merge method != none), the base as is (none), or runtime LoRA adapters;
  4. render batches of compatible settings, one generator per image, halving on CUDA OOM;
  5. write each PNG atomically with provenance, and the manifest after every batch;
  6. draw the storyboards whose panels are on disk.
Steps 1-2 are `scenecraft.render.planning` (what a dry run shows, without torch); steps 3-5
belong to the executor (`scenecraft.render.executor`: in process, or Ray actors), which renders
each batch through the same `scenecraft.render.session.Session.run_batch` and writes each PNG
through the same `Recorder`.
Ctrl-C (KeyboardInterrupt) keeps every finished image and leaves a valid manifest.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.events import JobSkipped, RenderFinished, RenderStarted, Reporter, emit
from scenecraft.plan import RenderPlan
from scenecraft.render.batching import ImageTask, make_batches
from scenecraft.render.executor import Executor, InProcess
from scenecraft.render.manifest import Manifest
from scenecraft.render.paths import check_out_dir
from scenecraft.render.planning import (
    is_up_to_date,
    open_manifest,
    plan_images,
    render_mode,
    weights_key,
)
from scenecraft.render.session import Recorder, Work
from scenecraft.render.storyboard import write_storyboards

# the planning functions, importable from here as before
__all__ = [
    "RenderResult",
    "is_up_to_date",
    "open_manifest",
    "plan_images",
    "render",
    "render_mode",
    "weights_key",
]


@dataclass
class RenderResult:
    out_dir: Path  # the output root
    written: list[Path] = field(default_factory=list)  # images rendered by this run
    skipped: list[Path] = field(default_factory=list)  # images already up to date
    storyboards: list[Path] = field(default_factory=list)  # contact sheets and HTML pages
    manifest: Path | None = None  # the manifest written by this run
    seconds: float = 0.0  # wall time of the run
    mode: str = "merged"  # "merged", "base" or "adapters"
    merge_key: str = ""  # merge key recorded in every image

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "written": [str(p) for p in self.written],
            "skipped": [str(p) for p in self.skipped],
            "storyboards": [str(p) for p in self.storyboards],
            "manifest": str(self.manifest) if self.manifest else None,
            "seconds": round(self.seconds, 3),
            "mode": self.mode,
            "merge_key": self.merge_key,
        }


def render(
    plan: RenderPlan,
    out_dir: str | Path,
    *,
    pipe: Any = None,
    batch_size: int | None = None,
    only: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
    force: bool = False,
    adapters: bool = False,
    reporter: Reporter | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
    executor: Executor | None = None,
) -> RenderResult:
    """Render ``plan`` into ``out_dir``; see the module docstring for the steps.

    ``executor`` decides where the batches run: in this process (None, the default) or on a
    Ray cluster (`scenecraft.render.executor.ray_executor`)."""
    start = time.perf_counter()
    out = Path(out_dir)
    check_out_dir(out)  # before any model loads
    mode = render_mode(plan, adapters)
    result = RenderResult(out.resolve(), mode=mode, merge_key=weights_key(plan, mode))
    # 1. Select and expand
    tasks = plan_images(plan, out, only=only, shard=shard, adapters=adapters)
    manifest = open_manifest(plan, out, mode, shard)
    result.manifest = manifest.path
    # 2. Skip what is up to date
    todo = _to_render(tasks, manifest, result, force, reporter)
    size = max(1, batch_size or plan.batch_size)
    batches = make_batches(todo, size)
    emit(reporter, RenderStarted(len(todo), len(result.skipped), len(batches)))
    interrupted = ok = False
    recorder = Recorder(manifest, result.out_dir, reporter, result.written)
    try:
        if todo:
            load = (pipe, device, dtype, cache_dir)
            work = Work(plan, mode, result.merge_key, recorder, batches, size, *load)
            (executor or InProcess()).run(work)
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        result.seconds = time.perf_counter() - start
        _finish(plan, out, adapters, result, manifest, reporter, ok, interrupted)
    return result


def _finish(
    plan: RenderPlan,
    out: Path,
    adapters: bool,
    result: RenderResult,
    manifest: Manifest,
    reporter: Reporter | None,
    ok: bool,
    interrupted: bool,
) -> None:
    """6. The manifest (an error part-way still records the images it finished), the
    storyboards of a finished run, and `RenderFinished` unless the run failed."""
    if ok or result.written:
        manifest.save(finished=ok, interrupted=interrupted)
    if ok:
        result.storyboards = write_storyboards(plan, out, adapters=adapters)
    if ok or interrupted:
        done = RenderFinished(len(result.written), len(result.skipped), result.seconds, interrupted)
        emit(reporter, done)


def _to_render(
    tasks: list[ImageTask],
    manifest: Manifest,
    result: RenderResult,
    force: bool,
    reporter: Reporter | None,
) -> list[ImageTask]:
    """The tasks to render; those up to date go to ``result.skipped`` (`JobSkipped`)."""
    todo = []
    for task in tasks:
        if not force and is_up_to_date(task, manifest, result.out_dir):
            result.skipped.append(task.path)
            emit(reporter, JobSkipped(task.job.id, str(task.path), "up to date"))
        else:
            todo.append(task)
    return todo
