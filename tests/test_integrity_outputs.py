"""Outputs under faults: damaged PNGs never count as done, one path per output, --out checked
first, a full disk is a diagnostic, modes follow the umask, concurrent manifests keep everything.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from scenecraft.diagnostics import DiagnosticError
from scenecraft.render import outputs
from scenecraft.render.engine import plan_images, render
from scenecraft.render.outputs import Manifest, check_out_dir, safe_name
from tests._fixtures_render import (
    make_job,
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    tiny_pipe,
)


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "story" / "manifest.json").read_text())
    return data


# ----------------------------------------------------------------------- verified results


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "empty"])
def test_damaged_png_is_rendered_again(tmp_path: Path, damage: str) -> None:
    plan = make_plan(scenes=("solo",), seeds=(1,))
    first = render(plan, tmp_path, pipe=tiny_pipe())
    [path] = first.written
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])  # the header and our key survive
    elif damage == "overwrite":
        middle = len(good) // 2
        path.write_bytes(good[:middle] + b"\xff" * 16 + good[middle + 16 :])
    else:
        path.write_bytes(b"")  # the manifest still vouches for it
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert again.written == [path] and not again.skipped
    assert path.read_bytes() == good  # deterministic: the same image again
    third = render(plan, tmp_path, pipe=tiny_pipe())
    assert third.skipped == [path] and not third.written


def test_manifest_records_each_images_hash(tmp_path: Path) -> None:
    import hashlib

    result = render(make_plan(scenes=("solo",), seeds=(1, 2)), tmp_path, pipe=tiny_pipe())
    images = _manifest(tmp_path)["images"]
    for path in result.written:
        rel = path.relative_to(tmp_path.resolve()).as_posix()
        assert images[rel]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_damaged_storyboard_panel_is_rerendered_not_an_internal_error(tmp_path: Path) -> None:
    plan = make_plan(storyboard=True, scenes=(), seeds=())
    first = render(plan, tmp_path, pipe=tiny_pipe())
    panel = first.written[0]
    panel.write_bytes(panel.read_bytes()[:40])
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert again.written == [panel] and len(again.storyboards) == 2
    # a damaged panel outside the selection is drawn as missing
    panel.write_bytes(b"\x89PNG broken")
    only_other = render(plan, tmp_path, pipe=tiny_pipe(), only=["duo"])
    assert len(only_other.storyboards) == 2


# -------------------------------------------------------------------- one path per output


def test_scenes_whose_names_sanitise_alike_collide_before_rendering(tmp_path: Path) -> None:
    plan = make_plan(scenes=("a", "a_"), seeds=(1,))
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=object())  # never used: the check comes first
    [d] = exc.value.diagnostics
    assert d.code == "output-path-collision"
    assert "scene `a` seed 1" in d.message and "scene `a_` seed 1" in d.message
    with pytest.raises(DiagnosticError):
        plan_images(make_plan(scenes=("con", "_con"), seeds=(1,)), tmp_path)  # --dry-run too
    assert not any(tmp_path.rglob("*.png"))


def test_long_names_keep_a_hash_and_never_collide() -> None:
    a, b = "x" * 100 + "a", "x" * 100 + "b"
    assert safe_name(a) != safe_name(b)
    assert len(safe_name(a)) == 80 and safe_name("short") == "short"


def test_scene_files_whose_names_sanitise_alike_collide(tmp_path: Path) -> None:
    first = make_plan(scenes=("solo",), seeds=(1,)).model_copy(
        update={"file": "/s/ünï cödé 🙂.scene"}
    )
    second = first.model_copy(update={"file": "/s/uni_code.scene"})
    assert safe_name(Path(first.file).stem) == safe_name(Path(second.file).stem)
    render(first, tmp_path, pipe=tiny_pipe())
    with pytest.raises(DiagnosticError) as exc:
        render(second, tmp_path, pipe=tiny_pipe())
    [d] = exc.value.diagnostics
    assert d.code == "output-path-collision" and "uni_code.scene" in d.message


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_unusable_out_is_diagnosed_before_any_model_loads(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scenecraft.models

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model must not load")

    monkeypatch.setattr(scenecraft.models, "load_pipeline", boom)
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"  # cannot be created
    with pytest.raises(DiagnosticError) as exc:
        render(make_plan(scenes=("solo",), seeds=(1,)), out)
    assert exc.value.diagnostics[0].code == "output-dir-unusable"


def test_out_check_creates_missing_folders(tmp_path: Path) -> None:
    check_out_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()


# ---------------------------------------------------------------------------- full disk


def test_full_disk_is_output_unwritable_and_keeps_finished_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan(scenes=("solo",), seeds=(1, 2, 3))
    from scenecraft.render import session

    real = session.atomic_write
    written: list[Path] = []

    def full_after_two(path: Path, write: Any) -> None:
        if path.suffix == ".png" and len(written) >= 2:

            def failing(f: Any) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            return real(path, failing)
        real(path, write)
        if path.suffix == ".png":
            written.append(path)

    monkeypatch.setattr(session, "atomic_write", full_after_two)
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=tiny_pipe())
    [d] = exc.value.diagnostics
    assert d.code == "output-unwritable" and "No space left on device" in d.message
    assert "3.png" in d.message and "free on the disk holding" in d.notes[0]
    assert not list(tmp_path.rglob("*.tmp"))  # no temp file left behind
    images = _manifest(tmp_path)["images"]
    assert sorted(Path(k).name for k in images) == ["1.png", "2.png"]
    monkeypatch.setattr(session, "atomic_write", real)
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert [p.name for p in again.written] == ["3.png"] and len(again.skipped) == 2


def test_cli_full_disk_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from scenecraft import cli

    scene = tmp_path / "x.scene"
    scene.write_text(
        'model "example-org/sd15-base"\nmerge none\nconcept cube {\n  token "cube"\n}\n'
        "defaults {\n  size 64x64\n  steps 2\n}\nscene s {\n  cube\n}\n",
        encoding="utf-8",
    )

    def no_space(*a: Any, **k: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("scenecraft.models.load_pipeline", lambda *a, **k: tiny_pipe())
    monkeypatch.setattr("scenecraft.files.tempfile.mkstemp", no_space)  # every atomic write
    assert cli.main(["render", str(scene), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "output-unwritable" in capsys.readouterr().err


# -------------------------------------------------------------------------------- modes


def test_files_and_folders_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        result = render(make_plan(scenes=("solo",), seeds=(1,)), tmp_path, pipe=tiny_pipe())
    finally:
        os.umask(old)
    [png] = result.written
    assert png.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "story" / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert png.parent.stat().st_mode & 0o777 == 0o755


# --------------------------------------------------------------------------- concurrency


def _record_many(path: str, tag: str, n: int) -> None:
    for i in range(n):
        m = Manifest.open(Path(path), {"plan_file": "story.scene"})
        m.record(f"{tag}/{i}.png", {"key": f"{tag}{i}"})
        m.save(finished=False)


def test_concurrent_runs_keep_every_manifest_entry(tmp_path: Path) -> None:
    path = tmp_path / "story" / "manifest.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(path), tag, 40)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    images = json.loads(path.read_text())["images"]
    assert len(images) == 80


def test_a_run_keeps_entries_another_run_saved_after_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    one = Manifest.open(path, {"plan_file": "s.scene"})
    two = Manifest.open(path, {"plan_file": "s.scene"})
    one.record("a.png", {"key": "A"})
    one.save()
    two.record("b.png", {"key": "B"})
    two.save()
    assert set(json.loads(path.read_text())["images"]) == {"a.png", "b.png"}


def test_make_job_paths_are_distinct_for_distinct_seeds(tmp_path: Path) -> None:
    jobs = [make_job("solo", s, "p") for s in (1, 2)]
    paths = {outputs.image_path(tmp_path, j, "") for j in jobs}
    assert len(paths) == 2


def _render_only(out: str, scene: str) -> None:
    import torch

    torch.set_num_threads(1)
    render(make_plan(scenes=("duo", "solo"), seeds=(1, 2, 3)), out, pipe=tiny_pipe(), only=[scene])


def test_two_renders_with_different_only_into_one_out(tmp_path: Path) -> None:
    tiny_pipe()  # built once, shared by the forked children
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_render_only, args=(str(tmp_path), s)) for s in ("duo", "solo")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    images = _manifest(tmp_path)["images"]
    assert sorted(images) == [f"story/{s}/{n}.png" for s in ("duo", "solo") for n in (1, 2, 3)]
    again = render(make_plan(scenes=("duo", "solo"), seeds=(1, 2, 3)), tmp_path, pipe=tiny_pipe())
    assert len(again.skipped) == 6 and not again.written


def test_memoised_confinement_still_catches_symlinks_out(tmp_path: Path) -> None:
    from scenecraft.render.outputs import confined

    outside = tmp_path.parent / f"{tmp_path.name}-out"
    outside.mkdir()
    (tmp_path / "story").mkdir()
    os.symlink(outside, tmp_path / "link")  # a folder leading out
    os.symlink(outside / "x.png", tmp_path / "story" / "1.png")  # a final file leading out
    memo: dict[tuple[str, ...], Path] = {}
    assert confined(tmp_path, "story", "2.png", memo=memo) == tmp_path.resolve() / "story/2.png"
    for parts in (("link", "1.png"), ("story", "1.png")):
        with pytest.raises(DiagnosticError) as exc:
            confined(tmp_path, *parts, memo=memo)
        assert exc.value.diagnostics[0].code == "unsafe-output-path"
