"""`scenecraft watch`: an edit re-renders exactly the images whose keys changed (counted), a
broken edit shows its diagnostics and keeps the pictures, the live page follows the edits in
headless Chromium, file saves come through watchfiles, and Ctrl-C ends it cleanly."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scenecraft.cli import main
from scenecraft.cli import watch as command
from scenecraft.cli.args import WatchSettings, build_parser
from scenecraft.events import MergeFinished
from scenecraft.merge.apply import APPLIED_ATTR
from scenecraft.watch.builder import Builder, watch_loop
from scenecraft.watch.changes import saves
from scenecraft.watch.server import LiveServer
from scenecraft.watch.state import LiveState
from tests import _cdp
from tests._fixtures_render import (
    lora_files,
    one_thread,  # noqa: F401  (autouse)
    saved_pipeline_dir,
)
from tests._optional import missing, require_module


def needs_watchfiles() -> None:
    """Skip where the [watch] extra is missing, but fail under SCENECRAFT_CI=1."""
    require_module("watchfiles", install='pip install "scenecraft[watch]"')


def write_scene(folder: Path, method: str = "none") -> Path:
    ziggy, momo = lora_files()
    scene = folder / "duo.scene"
    scene.write_text(
        f'model "{saved_pipeline_dir()}" family sd15\n'
        f'concept ziggy {{\n  token "<ZIGGY>"\n  class "man"\n  lora "{ziggy}"\n}}\n'
        f'concept momo {{\n  token "<MOMO>"\n  class "dog"\n  lora "{momo}"\n}}\n'
        f"merge {method}\n"
        'defaults {\n  size 64x64\n  steps 2\n  sampler "DDIM"\n  seeds 1, 2\n}\n'
        'scene park {\n  setting "a park"\n  ziggy\n}\n'
        'scene beach {\n  setting "a beach"\n  momo\n}\n'
        'storyboard day {\n  columns 2\n  panel park "morning"\n  panel beach "noon"\n}\n',
        encoding="utf-8",
    )
    return scene


def edit(scene: Path, old: str, new: str) -> None:
    text = scene.read_text(encoding="utf-8")
    assert old in text
    scene.write_text(text.replace(old, new), encoding="utf-8")


def builder_for(scene: Path, tmp: Path) -> Builder:
    return Builder(LiveState(file=str(scene)), scene, tmp / "out", cache_dir=tmp / "cache")


def rel(paths: list[Path], out: Path) -> list[str]:
    return sorted(p.relative_to(out.resolve()).as_posix() for p in paths)


def test_an_edit_rerenders_exactly_the_changed_images(tmp_path: Path) -> None:
    scene = write_scene(tmp_path)
    builder = builder_for(scene, tmp_path)

    def changes() -> Iterator[set[Path]]:
        edit(scene, '"a beach"', '"a windy beach"')  # the two beach images change
        yield {scene}
        yield {scene}  # a save that changed nothing renders nothing

    first, second, third = list(watch_loop(builder, changes()))
    out = tmp_path / "out"
    assert first.ok and len(first.written) == 4 and not first.skipped
    assert rel(second.written, out) == ["duo/beach/1.png", "duo/beach/2.png"]
    assert rel(second.skipped, out) == ["duo/park/1.png", "duo/park/2.png"]
    assert third.ok and third.written == [] and len(third.skipped) == 4
    assert builder.pipeline.loads == 1  # the model stayed loaded between edits
    snap = builder.state.snapshot()
    assert snap["status"] == "ready" and snap["message"].startswith("rendered 0 image(s), 4 up")
    assert [s["title"] for s in snap["sections"]] == ["day"]
    cells = snap["sections"][0]["cells"]
    assert [c["label"] for c in cells] == [
        "morning · seed 1",
        "morning · seed 2",
        "noon · seed 1",
        "noon · seed 2",
    ]
    assert all(c["state"] == "ready" for c in cells)


def test_a_merged_file_rebuilds_no_merge_for_a_prompt_edit(tmp_path: Path) -> None:
    scene = write_scene(tmp_path, "linear")
    merges: list[bool] = []  # MergeFinished.cached, build by build
    builder = builder_for(scene, tmp_path)
    builder.reporter = lambda e: merges.append(e.cached) if isinstance(e, MergeFinished) else None

    def changes() -> Iterator[set[Path]]:
        edit(scene, '"a park"', '"a city park"')
        yield {scene}

    first, second = list(watch_loop(builder, changes()))
    assert merges == [False, True]  # merged once, then served from the cache
    assert len(first.written) == 4
    assert rel(second.written, tmp_path / "out") == ["duo/park/1.png", "duo/park/2.png"]
    # merged builds render on a copy: the kept pipeline never carries a merge
    assert builder.pipeline.loads == 1 and not hasattr(builder.pipeline.pipe, APPLIED_ATTR)


def test_a_broken_edit_shows_diagnostics_and_keeps_the_pictures(tmp_path: Path) -> None:
    scene = write_scene(tmp_path)
    builder = builder_for(scene, tmp_path)
    assert builder.build().ok
    before = builder.state.snapshot()
    pictures = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")}
    edit(scene, "  momo\n}", "  mom\n}")  # an unknown concept, line 25
    broken = builder.build()
    assert not broken.ok and broken.written == []
    snap = builder.state.snapshot()
    assert snap["status"] == "broken" and snap["sections"] == before["sections"]
    [diag] = [d for d in snap["diagnostics"] if d["severity"] == "error"]
    assert diag["code"] == "unknown-concept" and diag["where"] == f"{scene}:25:3"
    assert "25 |   mom\n" in diag["text"] and "did you mean `momo`?" in diag["text"]
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.png")} == pictures
    # the images are still served while the file is broken
    server = LiveServer(builder.state).start()
    try:
        status, body = get(server, before["sections"][0]["cells"][0]["url"])
        assert status == 200 and body.startswith(b"\x89PNG")
        assert get(server, "/image/99")[0] == 404
    finally:
        server.stop()
    edit(scene, "  mom\n}", "  momo\n}")
    fixed = builder.build()
    assert fixed.ok and fixed.written == [] and builder.state.snapshot()["diagnostics"] == []


def get(server: LiveServer, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def test_the_server_refuses_other_hosts_and_streams_events(tmp_path: Path) -> None:
    state = LiveState(file="x.scene")
    server = LiveServer(state).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/api/state", headers={"Host": "evil.example:80"})
        assert conn.getresponse().status == 403
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/events")
        reply = conn.getresponse()
        assert reply.getheader("Content-Type") == "text/event-stream"
        assert reply.readline() == b"event: state\n"
        assert json.loads(reply.readline().removeprefix(b"data: ")) == {"version": 0}
        reply.readline()
        state.set_status("checking", "checking x.scene")
        assert reply.readline() == b"event: state\n"
        assert json.loads(reply.readline().removeprefix(b"data: ")) == {"version": 1}
        conn.close()
    finally:
        server.stop()


def test_live_page_in_chromium_follows_an_edit(tmp_path: Path) -> None:
    if _cdp.chromium_path() is None:
        missing("chromium is not installed (apt-get install chromium)")
    scene = write_scene(tmp_path)
    builder = builder_for(scene, tmp_path)
    assert builder.build().ok
    server = LiveServer(builder.state).start()
    browser = _cdp.Browser(server.url, tmp_path / "chromium-profile")
    srcs = "[...document.querySelectorAll('figure img')].map(i => i.getAttribute('src'))"
    loaded = "[...document.querySelectorAll('figure img')].every(i => i.naturalWidth > 0)"
    try:
        browser.wait_for(f"{srcs}.length === 4 && {loaded}")
        first = browser.eval(srcs)
        edit(scene, '"a beach"', '"a stormy beach"')
        assert len(builder.build().written) == 2  # the page hears of it by server-sent events
        browser.wait_for(
            f"document.getElementById('status').dataset.status === 'ready' && {loaded}"
        )
        browser.wait_for(f"JSON.stringify({srcs}) !== {json.dumps(json.dumps(first))}")
        second = browser.eval(srcs)
        assert second[:2] == first[:2] and second[2] != first[2] and second[3] != first[3]
        # a broken file: the diagnostics beside the same pictures
        edit(scene, "  momo\n}", "  mom\n}")
        assert not builder.build().ok
        where = browser.wait_for("document.querySelector('pre.diagnostic.error')?.dataset.where")
        assert where == f"{scene}:25:3"
        assert browser.eval(srcs) == second
        assert "unknown-concept" in browser.eval("document.getElementById('problems').innerText")
    finally:
        browser.close()
        server.stop()


def next_save(it: Iterator[set[Path]], stop: threading.Event, *writes: Path) -> set[Path]:
    """The next item of ``it``, rewriting ``writes`` until it comes (the watcher may not be up
    yet); fails after 20 s."""
    got: list[set[Path]] = []
    thread = threading.Thread(target=lambda: got.append(next(it)), daemon=True)
    thread.start()
    for n in range(100):
        for path in writes:
            path.write_text(f"{n}\n")
        thread.join(timeout=0.2)
        if got:
            return got[0]
    stop.set()
    pytest.fail("no change came through")


def test_saves_come_through_watchfiles_and_none_is_lost(tmp_path: Path) -> None:
    needs_watchfiles()
    a, b, other = tmp_path / "a.scene", tmp_path / "b.scene", tmp_path / "notes.txt"
    for path in (a, b, other):
        path.write_text("x\n")
    stop = threading.Event()
    it = saves(lambda: {a, b}, stop)
    try:
        first = next_save(it, stop, other, a)  # `other` is in the folder, not watched
        assert {p.resolve() for p in first} == {a.resolve()}
        b.write_text("saved while the caller builds\n")  # the generator is suspended here
        time.sleep(0.5)
        later: set[Path] = set()
        while b.resolve() not in later:  # no more writes: b's save must come through
            batch = {p.resolve() for p in next_save(it, stop)}
            assert batch <= {a.resolve(), b.resolve()}  # (a: its last write, late)
            later |= batch
    finally:
        stop.set()


def test_a_real_save_of_an_included_file_rerenders(tmp_path: Path) -> None:
    """watchfiles -> watch_loop -> render: a save of the concept library the file includes."""
    needs_watchfiles()
    scene = write_scene(tmp_path)
    text = scene.read_text(encoding="utf-8")
    library = tmp_path / "cast" / "momo.scene"  # another folder: watched once included
    library.parent.mkdir()
    start = text.index("concept momo")
    block = text[start : text.index("}\n", start) + 2]
    library.write_text(block, encoding="utf-8")
    scene.write_text(text.replace(block, 'include "cast/momo.scene"\n'), encoding="utf-8")
    builder = builder_for(scene, tmp_path)
    stop = threading.Event()
    outcomes: list[Any] = []

    def loop() -> None:
        for outcome in watch_loop(builder, saves(lambda: builder.watched, stop)):
            outcomes.append(outcome)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(outcomes) >= 1)
        time.sleep(1.0)  # the watcher opens its folders; no second build without a save
        assert len(outcomes) == 1 and len(outcomes[0].written) == 4
        assert library.resolve() in {p.resolve() for p in builder.watched}
        edit(library, '"dog"', '"puppy"')  # momo's class: the beach prompts change
        wait_for(lambda: len(outcomes) >= 2)
        # a concept edit changes the merge key, which every job's key includes: all 4 redrawn
        assert len(outcomes[1].written) == 4
        prompts = [c["prompt"] for c in builder.state.snapshot()["sections"][0]["cells"]]
        assert prompts[2:] == ["<MOMO> puppy, in a beach"] * 2
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and len(outcomes) == 2


def wait_for(condition: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_settings_and_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_watchfiles()
    args = build_parser().parse_args(["watch", "s.scene", "--only", "a", "--port", "0"])
    s = WatchSettings.from_args(args)
    assert (s.source.file, s.only, s.out, s.port) == ("s.scene", ("a",), "./out", 0)
    scene = write_scene(tmp_path)
    built: list[Any] = []

    def interrupted(paths: Any, stop: Any = None) -> Iterator[set[Path]]:
        built.append(paths())
        raise KeyboardInterrupt
        yield  # a generator, like the real one

    monkeypatch.setattr(command, "saves", interrupted)
    out = tmp_path / "out"
    assert main(["watch", str(scene), "--out", str(out), "--port", "0", "--only", "park"]) == 130
    assert built and scene in built[0]  # the first build ran, then Ctrl-C
    assert rel(list(out.glob("duo/*/*.png")), out) == ["duo/park/1.png", "duo/park/2.png"]
    captured = capsys.readouterr()
    assert "rendered 2 image(s) (park/1.png, park/2.png), 0 up to date" in captured.out
    assert "Traceback" not in captured.err and captured.err.strip().endswith("stopped")
    port = int(captured.out.split("127.0.0.1:")[1].split("/")[0])
    with pytest.raises(ConnectionError):  # the page was stopped with the watch
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).request("GET", "/")


def test_without_watchfiles_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import fails
    assert main(["watch", "any.scene", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "error[watch-not-installed]" in err and "scenecraft[watch]" in err
    assert "Traceback" not in err
