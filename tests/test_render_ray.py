"""`scenecraft render --ray`: the toy world on a local 2-CPU Ray cluster this module starts.

Without Ray installed these tests skip with the reason shown (`pytest -rs`); with
SCENECRAFT_CI=1 (set by .ci/run, which installs the extra) they fail instead of skipping.
One run with a worker killed mid-batch is shared by the tests that read its outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scenecraft.events import (
    Event,
    ImageWritten,
    JobSkipped,
    MergeFinished,
    MergeStarted,
    WorkerLost,
    WorkerProgress,
    WorkerStarted,
)
from scenecraft.render.engine import render
from scenecraft.render.outputs import read_png_metadata
from scenecraft.toyworld import BASE_DIR, lora_path
from tests._fixtures_render import pixels
from tests._optional import require_module

pytestmark = pytest.mark.slow  # a local Ray cluster: minutes on this CPU; .ci/run runs them

SCENE = """\
model "{base}" family sd15

concept ziggy {{
  token "<ZIGGY>"
  class "circle"
  lora "{ziggy}"
}}

concept blip {{
  token "<BLIP>"
  class "square"
  lora "{blip}"
}}

merge loraclr

defaults {{
  size 64x64
  steps 4
  guidance 4
  sampler "DDIM"
  seeds 1..4
  batch_size 2
}}

scene ziggy-on-grass {{
  setting "on grass"
  ziggy
}}

scene blip-at-sea {{
  setting "at sea"
  blip
}}

scene pair {{
  setting "in the desert"
  ziggy left of blip
}}
"""
IMAGES = 12  # 3 scenes x 4 seeds, in 6 batches of 2
MAX_DRIFT = 2  # pixel levels an image may move when its batch size changes (seen: 1)


def need_ray() -> Any:
    """Ray, or a visible skip; under SCENECRAFT_CI=1 a missing Ray is a failure."""
    # bind the test cluster to 127.0.0.1 (Ray's switch for its laptop mode; set before import)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return require_module("ray", install='pip install "scenecraft[ray]"')


class Recorder:
    """Keeps every event; ``hook(event)`` runs first (to kill a worker or press Ctrl-C)."""

    def __init__(self, hook: Any = None) -> None:
        self.events: list[Event] = []
        self.hook = hook

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if self.hook is not None:
            self.hook(event)

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray = need_ray()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process renders run like the one-CPU workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from scenecraft.api import load

    folder = tmp_path_factory.mktemp("scene")
    path = folder / "duo.scene"
    path.write_text(
        SCENE.format(base=BASE_DIR, ziggy=lora_path("ziggy"), blip=lora_path("blip")),
        encoding="utf-8",
    )
    loaded = load(path, allow_missing=False)
    assert len(loaded.plan.jobs) == IMAGES
    return loaded.plan


@pytest.fixture(scope="module")
def killed_run(cluster: Any, plan: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """All 12 images over 2 actors, one of them killed by `ray.kill` in the middle of a batch."""
    from scenecraft.render.ray_executor import RayExecutor

    root = tmp_path_factory.mktemp("ray")
    executor = RayExecutor(actors=2)
    killed: list[str] = []

    def kill_mid_batch(event: Event) -> None:
        if isinstance(event, WorkerProgress) and event.step >= 1 and not killed:
            worker = next(w for w in executor.workers if w.name == event.worker)
            killed.append(worker.name)
            cluster.kill(worker.handle)

    rec = Recorder(kill_mid_batch)
    result = render(plan, root / "out", cache_dir=root / "cache", executor=executor, reporter=rec)
    return {
        "result": result,
        "rec": rec,
        "killed": killed,
        "root": root,
        "merge_key": executor.merge_key,
        "stats": dict(executor.stats),
    }


def pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_a_killed_worker_still_gives_every_image_once_and_a_valid_manifest(
    killed_run: Any,
) -> None:
    result, rec = killed_run["result"], killed_run["rec"]
    out = killed_run["root"] / "out"
    # the kill happened mid-batch, the lost worker's batches were retried on the others
    assert killed_run["killed"]
    [lost] = rec.of(WorkerLost)
    assert lost.worker == killed_run["killed"][0] and lost.retried >= 1
    progress = {e.worker for e in rec.of(WorkerProgress)}
    assert {"w0", "w1"} <= progress  # two actors rendered batches
    assert len({e.worker for e in rec.of(WorkerStarted)}) >= 2
    # every image written exactly once
    written = Counter(e.path for e in rec.of(ImageWritten))
    assert len(written) == IMAGES and set(written.values()) == {1}
    assert len(result.written) == IMAGES == len(set(result.written))
    assert killed_run["stats"]["images"] == IMAGES  # the lost batches were not counted
    files = pngs(out)
    assert len(files) == IMAGES
    # the manifest: finished, one entry per image, each entry's key is the PNG's own key
    manifest = json.loads(Path(result.manifest).read_text("utf-8"))
    assert manifest["finished"] is True and manifest["interrupted"] is False
    assert set(manifest["images"]) == set(files)
    for rel, entry in manifest["images"].items():
        meta = read_png_metadata(out / rel)
        assert meta.scenecraft is not None and meta.scenecraft["key"] == entry["key"]
        assert meta.fields["Seed"] == str(entry["seed"])
        assert entry["sha256"] == hashlib.sha256((out / rel).read_bytes()).hexdigest()


def test_the_merge_is_built_once_and_reaches_every_worker(killed_run: Any) -> None:
    rec, out = killed_run["rec"], killed_run["root"] / "out"
    assert len(rec.of(MergeStarted)) == 1
    [finished] = rec.of(MergeFinished)
    assert finished.cached is False  # a fresh cache: built, by one worker, once
    entries = [p for p in (killed_run["root"] / "cache").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in entries if p.is_dir()] == [killed_run["merge_key"]]
    # two workers (and maybe the killed one's replacement) rendered with that one merge
    assert len(rec.of(WorkerStarted)) >= 2
    for path in out.rglob("*.png"):
        meta = read_png_metadata(path)
        assert meta.scenecraft is not None
        assert meta.scenecraft["merge_entry"] == killed_run["merge_key"]


def test_same_seed_same_bytes_as_in_process(killed_run: Any, plan: Any) -> None:
    root = killed_run["root"]
    assert any(j.regions for j in plan.jobs)  # `pair` is regional: those go through Ray too
    local = render(plan, root / "local", cache_dir=root / "cache")  # same device and dtype (CPU)
    assert len(local.written) == IMAGES
    ray_files, local_files = pngs(root / "out"), pngs(root / "local")
    assert ray_files.keys() == local_files.keys()
    different = [rel for rel in ray_files if ray_files[rel] != local_files[rel]]
    assert different == []


def test_ctrl_c_keeps_finished_images_and_a_rerun_renders_only_what_is_missing(
    killed_run: Any, plan: Any, cluster: Any
) -> None:
    from scenecraft.render.ray_executor import RayExecutor

    root = killed_run["root"]
    out = root / "resume"
    shutil.copytree(root / "out", out)
    before = pngs(out)
    gone = sorted(before)[:5]
    for rel in gone:
        (out / rel).unlink()

    pressed: list[Event] = []

    def ctrl_c(event: Event) -> None:
        if isinstance(event, ImageWritten) and not pressed:
            pressed.append(event)
            raise KeyboardInterrupt

    rec = Recorder(ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        render(plan, out, cache_dir=root / "cache", executor=RayExecutor(actors=2), reporter=rec)
    assert len(rec.of(JobSkipped)) == IMAGES - len(gone)
    kept = pngs(out)
    assert 1 <= len(kept) - (IMAGES - len(gone)) < len(gone)  # some, not all, of the missing
    manifest = json.loads(next(out.glob("*/manifest.json")).read_text("utf-8"))
    assert manifest["interrupted"] is True and manifest["finished"] is False
    assert set(kept) <= set(manifest["images"])
    # the re-run: only the images still missing, identical to the first run's bytes
    again = Recorder()
    result = render(
        plan, out, cache_dir=root / "cache", executor=RayExecutor(actors=2), reporter=again
    )
    assert len(result.skipped) == len(kept)
    assert sorted(p.relative_to(out.resolve()).as_posix() for p in result.written) == sorted(
        set(before) - set(kept)
    )
    assert [e.cached for e in again.of(MergeFinished)] == [True]  # the worker's cache served it
    after = pngs(out)
    assert after.keys() == before.keys()
    assert all(after[rel] == kept[rel] for rel in kept)  # the re-run rewrote no finished image
    assert all(after[rel] == before[rel] for rel in set(before) - set(gone))  # never redrawn
    # an image drawn again (by the interrupted run or by the re-run) may land in a batch of
    # another size than the first time; on CPU the batched matmuls then round differently, so
    # compare pixels, not bytes
    for rel in gone:
        a, b = pixels(out / rel), pixels(root / "out" / rel)
        drift = int(np.abs(a.astype(int) - b).max())
        assert a.shape == b.shape and drift <= MAX_DRIFT, rel


def test_ray_flag_without_ray_is_a_diagnostic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from scenecraft.cli import main
    from scenecraft.cli.args import build_parser

    assert build_parser().parse_args(["render", "a.scene", "--ray"]).ray == ""
    args = build_parser().parse_args(["render", "a.scene", "--ray", "ray://head:10001"])
    assert args.ray == "ray://head:10001"
    assert build_parser().parse_args(["render", "a.scene"]).ray is None
    scene = tmp_path / "duo.scene"
    scene.write_text(
        SCENE.format(base=BASE_DIR, ziggy=lora_path("ziggy"), blip=lora_path("blip")), "utf-8"
    )
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    code = main(["render", str(scene), "--ray", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error[ray-not-installed]" in err and 'pip install "scenecraft[ray]"' in err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_cluster_is_a_diagnostic_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = need_ray()
    from scenecraft.diagnostics import DiagnosticError
    from scenecraft.render.ray_executor import RayExecutor

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    with pytest.raises(DiagnosticError) as caught:
        RayExecutor("127.0.0.1:1")._connect(ray)  # nothing listens on port 1
    [diag] = caught.value.diagnostics
    assert diag.code == "ray-connect-failed" and "127.0.0.1:1" in diag.message
    assert "refused" in " ".join(diag.notes).lower()


def test_retries_are_bounded_then_the_error_names_the_jobs(
    cluster: Any, plan: Any, tmp_path: Path
) -> None:
    from scenecraft.diagnostics import DiagnosticError
    from scenecraft.render.ray_executor import RayExecutor

    executor = RayExecutor(actors=1, max_attempts=1)  # the first loss is the last

    def kill(event: Event) -> None:
        if isinstance(event, WorkerProgress) and executor.workers:
            cluster.kill(executor.workers[0].handle)

    with pytest.raises(DiagnosticError) as caught:
        render(plan, tmp_path, only=["pair"], executor=executor, reporter=Recorder(kill))
    [diag] = caught.value.diagnostics
    assert diag.code == "ray-batch-failed"
    named = [n for n in diag.notes if n.startswith("job: pair seed ")]
    assert len(named) == 2  # the lost batch: two images of scene `pair`
    assert executor.workers == []  # stopped
