"""The progress UI: Rich live display on a StringIO console, plain log, JSON lines, quiet."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

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
    StepDone,
    WorkerLost,
    WorkerProgress,
    WorkerStarted,
)
from scenecraft.ui.progress import JsonLines, LiveDisplay, progress_reporter

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def script() -> list[Event]:
    events: list[Event] = [
        MergeStarted("loraclr", ("ziggy", "momo"), "abc123"),
        MergeStage("text-encoder", 0, 3),
        MergeStage("text-encoder", 3, 3),
        MergeFinished("abc123", False, 1.5),
        RenderStarted(total=3, skipped=1, batches=2),
        JobSkipped("j0", "out/story/duo/0.png", "up to date"),
        BatchStarted(0, 2, ("j1", "j2"), 4),
    ]
    events += [StepDone(i, 4) for i in range(1, 5)]
    events += [
        ImageWritten("j1", "out/story/duo/1.png", "duo", 1),
        ImageWritten("j2", "out/story/duo/2.png", "duo", 2),
        Notice("warning", "out of memory at batch 2; retrying with 1"),
        BatchStarted(1, 2, ("j3",), 4),
    ]
    events += [StepDone(i, 4) for i in range(1, 5)]
    events += [
        ImageWritten("j3", "out/story/solo/3.png", "solo", 3),
        RenderFinished(written=3, skipped=1, seconds=2.0),
    ]
    return events


def test_live_display_on_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)
    with progress_reporter(console) as report:
        for event in script():
            report(event)
    out = ANSI.sub("", buf.getvalue())
    last = out[out.rindex("images") :]  # the final frame
    assert re.search(r"images\s.*3/3", last)
    assert re.search(r"batch 2/2\s", out) and re.search(r"\d+\.\d\d it/s", out)
    assert "duo/1.png" in last and "solo/3.png" in last  # last finished images
    assert "merge ready (1.5 s)" in out and "merge: text-encoder" in out
    assert "warning: out of memory at batch 2; retrying with 1" in out
    assert "1 image(s) up to date, skipped" in out
    assert "wrote 3 image(s), skipped 1 up to date, 2.0 s" in last
    assert "\x1b[" in buf.getvalue()  # it really drew a live display (cursor movement)


def test_live_images_rate_is_the_rate_over_the_run() -> None:
    # issue 11: a batch of 8 landing at once showed "113.56 img/s" on a ~0.1 img/s run
    now = [0.0]
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    display = LiveDisplay(console, clock=lambda: now[0])
    display.start()
    display(RenderStarted(total=16, skipped=0, batches=2))
    now[0] = 80.0  # loading, merging and one batch of 8
    for k in range(8):
        now[0] += 0.01
        display(ImageWritten(f"j{k}", f"out/story/duo/{k}.png", "duo", k))
    display.stop()
    last = ANSI.sub("", buf.getvalue()).rsplit("images", 1)[1]
    assert "0.10 img/s 0:01:20" in last.splitlines()[0]  # and 8 more take as long
    assert "duo/7.png" in last and "duo/5.png" in last  # the last images written


def test_plain_log_when_not_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with progress_reporter(console) as report:
        for event in script():
            report(event)
    lines = buf.getvalue().splitlines()
    assert "\x1b[" not in buf.getvalue()
    assert lines == [
        "merging 2 concept(s) with loraclr (abc123)",
        "merge: text-encoder (3)...",
        "merge: text-encoder done (3)",
        "merge abc123 ready in 1.5 s",
        "rendering 3 image(s) in 2 batch(es), 1 up to date",
        "batch 1/2: 2 images, 4 steps",
        "[1/3] duo seed 1 -> out/story/duo/1.png",
        "[2/3] duo seed 2 -> out/story/duo/2.png",
        "warning: out of memory at batch 2; retrying with 1",
        "batch 2/2: 1 image, 4 steps",
        "[3/3] solo seed 3 -> out/story/solo/3.png",
        "wrote 3 image(s), skipped 1 up to date, 2.0 s",
    ]


def test_quiet_prints_only_warnings() -> None:
    buf = io.StringIO()
    with progress_reporter(Console(file=buf, width=200), quiet=True) as report:
        for event in script():
            report(event)
    assert buf.getvalue() == "warning: out of memory at batch 2; retrying with 1\n"


def test_events_json_lines() -> None:
    buf = io.StringIO()
    with progress_reporter(Console(file=io.StringIO()), events="json", stream=buf) as report:
        assert isinstance(report, JsonLines)
        for event in script():
            report(event)
    rows = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(rows) == len(script())
    assert rows[0] == {
        "type": "merge-started",
        "method": "loraclr",
        "concepts": ["ziggy", "momo"],
        "key": "abc123",
    }
    assert rows[-1] == {
        "type": "render-finished",
        "written": 3,
        "skipped": 1,
        "seconds": 2.0,
        "interrupted": False,
    }
    assert [r["type"] for r in rows].count("step-done") == 8


def ray_script() -> list[Event]:
    """A Ray run: per-worker progress rows, a lost worker, images written by the driver."""
    return [
        RenderStarted(total=2, skipped=0, batches=2),
        WorkerStarted("w0", "10.0.0.5", "cuda:0"),
        WorkerStarted("w1", "10.0.0.6", "cuda:0"),
        WorkerProgress("w0", 0, 2, 3, 4),
        WorkerProgress("w1", 1, 2, 1, 4),
        WorkerLost("w1", "ActorDiedError: killed", 1),
        ImageWritten("j1", "out/story/duo/1.png", "duo", 1),
        WorkerProgress("w0", 1, 2, 4, 4),
        ImageWritten("j2", "out/story/duo/2.png", "duo", 2),
        RenderFinished(written=2, skipped=0, seconds=3.0),
    ]


def test_ray_workers_get_rows_on_a_terminal_and_lines_in_a_log() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    with progress_reporter(console) as report:
        for event in ray_script():
            report(event)
    out = ANSI.sub("", buf.getvalue())
    last = out[out.rindex("images") :]
    assert re.search(r"w0 batch 2/2\s.*4/4", last) and "w1 lost" in last
    assert "warning: worker w1 lost (ActorDiedError: killed); 1 batch(es) retried" in out
    log = io.StringIO()
    with progress_reporter(Console(file=log, force_terminal=False, width=200)) as report:
        for event in ray_script():
            report(event)
    assert log.getvalue().splitlines() == [
        "rendering 2 image(s) in 2 batch(es), 0 up to date",
        "worker w0 ready on 10.0.0.5 (cuda:0)",
        "worker w1 ready on 10.0.0.6 (cuda:0)",
        "warning: worker w1 lost (ActorDiedError: killed); 1 batch(es) retried",
        "[1/2] duo seed 1 -> out/story/duo/1.png",
        "[2/2] duo seed 2 -> out/story/duo/2.png",
        "wrote 2 image(s), skipped 0 up to date, 3.0 s",
    ]
    quiet = io.StringIO()
    with progress_reporter(Console(file=quiet, width=200), quiet=True) as report:
        for event in ray_script():
            report(event)
    assert (
        quiet.getvalue()
        == "warning: worker w1 lost (ActorDiedError: killed); 1 batch(es) retried\n"
    )
