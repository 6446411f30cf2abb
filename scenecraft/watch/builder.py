"""One build of ``scenecraft watch``: load and check the file, then render what changed.

`Builder.build` runs:
  1. load (read, template, parse, check, compile); a DiagnosticError shows the diagnostics on the
     page beside the last good grid, and the build stops there;
  2. plan the images (`plan_images`) and show the new grid: cells whose key is on disk are ready,
     the others show their previous picture (stale) or nothing until they land;
  3. render through the engine's own `render`: it skips every image whose key is up to date, so
     only the images whose keys changed are drawn, and the merge cache rebuilds a merge only when
     its key changed. The base pipeline stays loaded between builds (`KeptPipeline`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft import models
from scenecraft.api import load
from scenecraft.diagnostics import Diagnostic, DiagnosticError
from scenecraft.events import Event, ImageWritten, Reporter, emit
from scenecraft.plan import RenderPlan, stable_hash
from scenecraft.render.batching import ImageTask
from scenecraft.render.engine import (
    is_up_to_date,
    open_manifest,
    plan_images,
    render,
    render_mode,
)
from scenecraft.render.outputs import Manifest
from scenecraft.watch.state import Cell, LiveState, Section, diagnostic_row

SCENE_COLUMNS = 6  # most cells per row in a scene's section
Stamp = tuple[int, int] | None  # a file's (mtime_ns, size), None when it cannot be read


@dataclass
class Outcome:
    """What one build did."""

    ok: bool
    written: list[Path] = field(default_factory=list)  # images rendered by this build
    skipped: list[Path] = field(default_factory=list)  # images already up to date
    diagnostics: list[Diagnostic] = field(default_factory=list)  # errors, or warnings when ok
    seconds: float = 0.0


class KeptPipeline:
    """The base pipeline, loaded once and kept while the file's `model` stays the same.

    A merged run changes the weights in place, so it renders on a copy of the kept pipeline
    (applying a cached merge is cheap next to loading the model); base runs use it as is."""

    def __init__(self, device: str | None, dtype: str | None, loader: Any = None) -> None:
        self.device, self.dtype = device, dtype
        self.loader = loader or models.load_pipeline
        self.ident: str | None = None
        self.pipe: Any = None
        self.loads = 0  # how many times a model was loaded (1 while `model` is unchanged)

    def get(self, plan: RenderPlan, mode: str) -> Any:
        ident = stable_hash(plan.merge.base.model_dump(mode="json"))
        if ident != self.ident:
            self.pipe, self.ident = None, None  # free the old model before loading the new one
            self.pipe = self.loader(plan.merge.base, self.device, self.dtype)
            self.ident, self.loads = ident, self.loads + 1
        return copy.deepcopy(self.pipe) if mode == "merged" else self.pipe


class Builder:
    """Builds ``file`` into ``out`` on demand, reporting into a `LiveState`."""

    def __init__(
        self,
        state: LiveState,
        file: str | Path,
        out: str | Path,
        *,
        variables: Callable[[], dict[str, Any]] = dict,
        vars_files: Sequence[str | Path] = (),
        only: Sequence[str] = (),
        max_jobs: int | None = None,
        cache_dir: str | Path | None = None,
        pipeline: KeptPipeline | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.state, self.file, self.out = state, Path(file), Path(out)
        self.variables, self.only, self.max_jobs = variables, tuple(only), max_jobs
        self.cache_dir, self.reporter = cache_dir, reporter  # reporter: every engine event
        self.pipeline = pipeline or KeptPipeline(None, None)
        self.inputs = {Path(f) for f in vars_files}  # read by every build: watched too
        self.watched: set[Path] = {self.file, *self.inputs}  # the file, its includes, vars files

    def build(self) -> Outcome:
        start = time.perf_counter()
        self.state.set_status("checking", f"checking {self.file.name}")
        try:
            outcome = self._build()
        except DiagnosticError as exc:
            self.watched |= {Path(d.span.file) for d in exc.diagnostics if d.span}
            self.state.show_diagnostics(exc.diagnostics)
            outcome = Outcome(False, diagnostics=list(exc.diagnostics))
        outcome.seconds = time.perf_counter() - start
        if outcome.ok:
            done = f"rendered {len(outcome.written)} image(s), {len(outcome.skipped)} up to date"
            self.state.set_status("ready", f"{done} in {outcome.seconds:.1f} s")
        return outcome

    def _build(self) -> Outcome:
        # 1. Load and check
        loaded = load(self.file, self.variables(), allow_missing=False, max_jobs=self.max_jobs)
        self.watched = {self.file, *self.inputs, *(Path(p) for p in loaded.sources)}
        plan = loaded.plan
        # 2. Plan and show the grid
        mode = render_mode(plan, False)
        tasks = plan_images(plan, self.out, only=self.only)
        manifest = open_manifest(plan, self.out, mode, None)
        sections, cells = grid(plan, tasks, manifest, self.out.resolve())
        warnings = [diagnostic_row(d, loaded.sources) for d in loaded.warnings]
        self.state.show_plan(sections, cells, warnings)
        # 3. Render what changed
        todo = [c for c in cells if c.state != "ready"]
        self.state.set_status("rendering", f"rendering {len(todo)} image(s)")
        result = render(
            plan,
            self.out,
            pipe=self.pipeline.get(plan, mode) if todo else None,
            only=self.only,
            reporter=self._on_event,
            device=self.pipeline.device,
            dtype=self.pipeline.dtype,
            cache_dir=self.cache_dir,
        )
        return Outcome(True, result.written, result.skipped, list(loaded.warnings))

    def _on_event(self, event: Event) -> None:
        emit(self.reporter, event)
        if isinstance(event, ImageWritten):
            self.state.image_ready(Path(event.path))

    def fingerprint(self, paths: Iterable[Path] | None = None) -> dict[Path, Stamp]:
        """(mtime, size) of ``paths`` (every watched file), to notice a save during a build."""
        out: dict[Path, Stamp] = {}
        for path in sorted(self.watched if paths is None else paths):
            try:
                st = path.stat()
                out[path] = (st.st_mtime_ns, st.st_size)
            except OSError:
                out[path] = None
        return out


def watch_loop(builder: Builder, changes: Iterable[object]) -> Iterator[Outcome]:
    """Build once, then again after every item of ``changes`` (and while saves keep arriving
    during a build); yields each build's outcome."""
    yield from _settled(builder)
    for _ in changes:
        yield from _settled(builder)


def _settled(builder: Builder) -> Iterator[Outcome]:
    while True:
        before = builder.fingerprint()
        yield builder.build()
        # the files watched before the build: a new include found by it is not a change
        if builder.fingerprint(before) == before:
            return


def grid(
    plan: RenderPlan, tasks: Sequence[ImageTask], manifest: Manifest, out_root: Path
) -> tuple[list[Section], list[Cell]]:
    """The page's sections: each storyboard's panels in order, then each scene's other images."""
    captions = {
        i: p.caption or p.scene for b in plan.storyboards for p in b.panels for i in p.job_ids
    }
    cells: list[Cell] = []
    by_job: dict[str, list[int]] = {}
    for t in tasks:
        by_job.setdefault(t.job.id, []).append(len(cells))
        cells.append(_cell(t, manifest, out_root, captions.get(t.job.id)))
    sections: list[Section] = []
    shown: set[int] = set()
    for board in plan.storyboards:
        ids = [n for p in board.panels for i in p.job_ids for n in by_job.get(i, [])]
        if ids:
            sections.append(Section(board.title or board.name, board.columns, tuple(ids)))
            shown |= set(ids)
    scenes: dict[str, list[int]] = {}
    for n, t in enumerate(tasks):
        if n not in shown:
            scenes.setdefault(t.job.scene, []).append(n)
    for scene, ids in scenes.items():
        sections.append(Section(f"scene {scene}", min(len(ids), SCENE_COLUMNS), tuple(ids)))
    return sections, cells


def _cell(task: ImageTask, manifest: Manifest, out_root: Path, caption: str | None) -> Cell:
    job = task.job
    label = f"{caption or job.caption or job.scene} · seed {task.seed}"
    if is_up_to_date(task, manifest, out_root):
        state = "ready"
    else:
        rel = task.path.relative_to(out_root).as_posix()
        state = "stale" if manifest.key_for(rel) and task.path.is_file() else "missing"
    return Cell(label, job.prompt, task.path, task.key, state)
