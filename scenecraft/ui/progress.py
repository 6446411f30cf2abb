"""Drawing render and merge events: a Rich live display, a plain line log, or JSON lines.

`progress_reporter(console, events=..., quiet=...)` picks the right one:
- ``events="json"``: every event as one JSON line (`Event.as_dict`) on stdout, nothing else;
- ``quiet``: warnings and errors only (stderr);
- a terminal: `LiveDisplay` (overall images bar with ETA, the current batch's step bar with
  it/s, the merge stage, the last finished images);
- otherwise (piped, CI logs): `PlainLog`, a line per model load, merge stage, batch and
  finished image, so a slow run on a busy machine is never a silent one.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from scenecraft.events import (
    BatchStarted,
    Event,
    ImageWritten,
    JobSkipped,
    MergeFinished,
    MergeStage,
    MergeStarted,
    Notice,
    RenderFinished,
    RenderStarted,
    Reporter,
    StepDone,
    WorkerLost,
    WorkerProgress,
    WorkerStarted,
)


def short_path(path: str, parts: int = 3) -> str:
    """The last ``parts`` components of ``path`` (what fits on one line)."""
    return "/".join(Path(path).parts[-parts:])


def worker_lost(event: WorkerLost) -> str:
    return (
        f"warning: worker {event.worker} lost ({event.reason}); {event.retried} batch(es) retried"
    )


def summary(event: RenderFinished) -> str:
    text = (
        f"wrote {event.written} image(s), skipped {event.skipped} up to date, {event.seconds:.1f} s"
    )
    return text + (" (interrupted)" if event.interrupted else "")


class JsonLines:
    """``--events json``: each event as one JSON object per line, flushed at once."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream

    def __call__(self, event: Event) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(event.as_dict(), default=str) + "\n")
        stream.flush()


class Quiet:
    """``--quiet``: only warnings and errors, on the console given (stderr by default)."""

    def __init__(self, console: Console):
        self.console = console

    def __call__(self, event: Event) -> None:
        if isinstance(event, Notice) and event.level != "info":
            self.console.print(f"{event.level}: {event.message}", markup=False, highlight=False)
        elif isinstance(event, WorkerLost):
            self.console.print(worker_lost(event), markup=False, highlight=False)


class PlainLog:
    """One line per meaningful event, for logs and pipes (no cursor movement)."""

    def __init__(self, console: Console):
        self.console = console
        self.total = 0
        self.done = 0

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RenderStarted):
            self.total = event.total
            self.line(
                f"rendering {event.total} image(s) in {event.batches} batch(es), "
                f"{event.skipped} up to date"
            )
        elif isinstance(event, ImageWritten):
            self.done += 1
            self.line(f"[{self.done}/{self.total}] {event.scene} seed {event.seed} -> {event.path}")
        elif isinstance(event, Notice):
            self.line(f"{event.level}: {event.message}")
        elif isinstance(event, MergeStarted):
            self.line(f"merging {len(event.concepts)} concept(s) with {event.method} ({event.key})")
        elif isinstance(event, MergeStage) and event.done == 0 < event.total:
            self.line(f"merge: {event.stage} ({event.total})...")  # a slow stage is not silent
        elif isinstance(event, MergeStage) and event.done == event.total > 0:
            self.line(f"merge: {event.stage} done ({event.total})")
        elif isinstance(event, BatchStarted):
            n = len(event.job_ids)
            self.line(
                f"batch {event.index + 1}/{event.total}: {n} image{'s' if n != 1 else ''}, "
                f"{event.steps} steps"
            )
        elif isinstance(event, MergeFinished):
            how = "from cache" if event.cached else f"in {event.seconds:.1f} s"
            self.line(f"merge {event.key} ready {how}")
        elif isinstance(event, RenderFinished):
            self.line(summary(event))
        elif isinstance(event, WorkerStarted):
            self.line(f"worker {event.worker} ready on {event.node} ({event.device})")
        elif isinstance(event, WorkerLost):
            self.line(worker_lost(event))


class RateColumn(ProgressColumn):
    """Steps per second of a task (``– it/s`` until Rich has measured a speed).

    A task marked ``overall`` shows its rate over the whole run (completed / elapsed): images
    land a batch at a time, and Rich's recent-window speed would show the burst instead."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit")
        if not unit:
            return Text("")
        if task.fields.get("overall"):
            speed = overall_rate(task)
        else:
            speed = task.finished_speed or task.speed
        return Text(f"– {unit}/s" if speed is None else f"{speed:.2f} {unit}/s", style="cyan")


def overall_rate(task: Task) -> float | None:
    """Completed units per second since the task started (None before the first one)."""
    elapsed = task.elapsed
    return task.completed / elapsed if elapsed and task.completed else None


class RemainingColumn(TimeRemainingColumn):
    """Rich's ETA; for ``overall`` tasks, from the rate over the run (see RateColumn)."""

    def render(self, task: Task) -> Text:
        rate = overall_rate(task) if task.fields.get("overall") else None
        if rate is None or task.total is None or task.finished:
            return super().render(task)
        seconds = int((task.total - task.completed) / rate)
        minutes, secs = divmod(seconds, 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{secs:02d}", style="progress.remaining")


class LiveDisplay:
    """A Rich Live view: merge stage, overall images, current batch's steps, last images."""

    def __init__(self, console: Console, recent: int = 3, clock: Callable[[], float] | None = None):
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            RateColumn(),
            RemainingColumn(),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
            expand=False,
            get_time=clock,
        )
        self.merge = self.progress.add_task("merge", total=None, visible=False, unit="")
        self.images = self.progress.add_task(
            "images", total=None, visible=False, unit="img", overall=True
        )
        self.steps = self.progress.add_task("steps", total=None, visible=False, unit="it")
        self.recent: deque[str] = deque(maxlen=recent)
        self.workers: dict[str, TaskID] = {}  # one row per Ray worker
        self.footer = ""
        self.live = Live(self, console=console, refresh_per_second=8, transient=False)

    def __rich__(self) -> RenderableType:
        lines = [Text(f"✓ {p}", style="green") for p in self.recent]
        if self.footer:
            lines.append(Text(self.footer, style="bold"))
        return Group(self.progress, *lines)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.refresh()
        self.live.stop()

    def __call__(self, event: Event) -> None:
        handler = getattr(self, "on_" + type(event).__name__, None)
        if handler is not None:
            handler(event)
            self.live.refresh()

    # render events
    def on_RenderStarted(self, e: RenderStarted) -> None:  # noqa: N802
        self.progress.reset(self.images, total=e.total, completed=0, visible=True)  # clock starts
        if e.skipped:
            self.console.print(f"{e.skipped} image(s) up to date, skipped", highlight=False)

    def on_BatchStarted(self, e: BatchStarted) -> None:  # noqa: N802
        desc = f"batch {e.index + 1}/{e.total}"
        self.progress.reset(self.steps, total=e.steps, description=desc, visible=True)

    def on_StepDone(self, e: StepDone) -> None:  # noqa: N802
        self.progress.update(self.steps, total=e.total, completed=e.step)

    def on_ImageWritten(self, e: ImageWritten) -> None:  # noqa: N802
        self.progress.advance(self.images)
        self.recent.append(short_path(e.path))

    def on_JobSkipped(self, e: JobSkipped) -> None:  # noqa: N802
        pass

    def on_Notice(self, e: Notice) -> None:  # noqa: N802
        style = {"warning": "yellow", "error": "red"}.get(e.level, "dim")
        self.console.print(Text(f"{e.level}: {e.message}", style=style))

    def on_RenderFinished(self, e: RenderFinished) -> None:  # noqa: N802
        self.progress.update(self.steps, visible=False)
        self.footer = summary(e)

    # Ray workers: one row each
    def worker_row(self, name: str) -> TaskID:
        if name not in self.workers:
            self.workers[name] = self.progress.add_task(name, total=None, unit="it")
        return self.workers[name]

    def on_WorkerStarted(self, e: WorkerStarted) -> None:  # noqa: N802
        self.progress.update(self.worker_row(e.worker), description=f"{e.worker} {e.device}")

    def on_WorkerProgress(self, e: WorkerProgress) -> None:  # noqa: N802
        desc = f"{e.worker} batch {e.batch + 1}/{e.batches}"
        row = self.worker_row(e.worker)
        self.progress.update(row, description=desc, total=e.steps, completed=e.step)

    def on_WorkerLost(self, e: WorkerLost) -> None:  # noqa: N802
        self.progress.update(self.worker_row(e.worker), description=f"{e.worker} lost")
        self.console.print(Text(worker_lost(e), style="yellow"))

    # merge events
    def on_MergeStarted(self, e: MergeStarted) -> None:  # noqa: N802
        self.progress.update(self.merge, description=f"merge {e.method}", visible=True)

    def on_MergeStage(self, e: MergeStage) -> None:  # noqa: N802
        desc = f"merge: {e.stage}"
        self.progress.update(self.merge, description=desc, total=e.total, completed=e.done)

    def on_MergeFinished(self, e: MergeFinished) -> None:  # noqa: N802
        how = "cached" if e.cached else f"{e.seconds:.1f} s"
        self.progress.update(self.merge, description=f"merge ready ({how})", visible=True)


@contextmanager
def progress_reporter(
    console: Console | None = None,
    *,
    events: str | None = None,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> Iterator[Reporter]:
    """The reporter for the chosen output mode; a Live display is started and stopped here."""
    if events == "json":
        yield JsonLines(stream)
        return
    console = console or Console(stderr=quiet)
    if quiet:
        yield Quiet(console)
        return
    if not console.is_terminal:
        yield PlainLog(console)
        return
    display = LiveDisplay(console)
    display.start()
    try:
        yield display
    finally:
        display.stop()
