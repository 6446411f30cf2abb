"""Output names, confinement, atomic writes, A1111 parameters and the PNG round trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from scenecraft.diagnostics import DiagnosticError
from scenecraft.files import atomic_write
from scenecraft.render.engine import render
from scenecraft.render.outputs import (
    a1111_parameters,
    confined,
    image_path,
    parse_parameters,
    read_png_metadata,
    safe_name,
    write_png,
)
from tests._fixtures_render import (
    make_job,
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    tiny_pipe,
)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("duo", "duo"),
        ("..", "_"),
        ("../../etc/passwd", "etc_passwd"),
        ("/abs/path", "abs_path"),
        ("C:\\win", "C_win"),
        ("café au lait", "cafe_au_lait"),
        ("", "_"),
        ("con", "_con"),
        ("a\x00b", "a_b"),
        (".hidden", "hidden"),
    ],
)
def test_safe_name(name: str, safe: str) -> None:
    assert safe_name(name) == safe


def test_paths_stay_inside_out(tmp_path: Path) -> None:
    job = make_job("../../escape", 3, "p", file="/etc/../../x y.scene")
    path = image_path(tmp_path, job, "")
    assert path == tmp_path.resolve() / "x_y" / "escape" / "3.png"
    board = make_job("duo", 4, "p", storyboard="../tale", panel=1)
    assert image_path(tmp_path, board.model_copy(update={"index": 1}), "").relative_to(
        tmp_path.resolve()
    ).as_posix() == ("story/tale/02-duo/4-2.png")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "link")
    with pytest.raises(DiagnosticError) as exc:
        confined(tmp_path, "link", "1.png")
    assert exc.value.errors[0].code == "unsafe-output-path"


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def boom(f: object) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a1111_parameters_text_and_parse_back() -> None:
    fields = {
        "Steps": 30,
        "Sampler": "DPM++ 2M Karras",
        "CFG scale": 7.5,
        "Seed": 1,
        "Size": "512x512",
        "Model hash": "0123456789",
        "Model": "my, model",
    }
    text = a1111_parameters("a man, a dog\nsecond line", "blurry, ugly", fields)
    assert text == (
        "a man, a dog\nsecond line\nNegative prompt: blurry, ugly\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, Size: 512x512, "
        'Model hash: 0123456789, Model: "my, model"'
    )
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == "a man, a dog\nsecond line"
    assert parsed["Negative prompt"] == "blurry, ugly"
    assert parsed["Model"] == "my, model" and parsed["Sampler"] == "DPM++ 2M Karras"
    no_negative = parse_parameters(a1111_parameters("p", "", {"Steps": 2}))
    assert no_negative == {"Prompt": "p", "Steps": "2"}


def test_write_png_round_trip(tmp_path: Path) -> None:
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    path = tmp_path / "x" / "1.png"
    write_png(path, image, "p\nSteps: 2", {"key": "k", "job": {"id": "j"}, "ü": "ß"})
    meta = read_png_metadata(path)
    assert meta.parameters == "p\nSteps: 2" and meta.scenecraft == {
        "key": "k",
        "job": {"id": "j"},
        "ü": "ß",
    }
    with Image.open(path) as im:
        assert im.getpixel((3, 3)) == (10, 20, 30)


def test_rendered_png_carries_provenance(tmp_path: Path) -> None:
    plan = make_plan(seeds=(42,), scenes=("duo",), sampler="DPM++ 2M Karras")
    [path] = render(plan, tmp_path, pipe=tiny_pipe()).written
    assert path == tmp_path.resolve() / "story" / "duo" / "42.png"
    meta = read_png_metadata(path)
    job = plan.jobs[0]
    assert meta.parameters is not None
    lines = meta.parameters.split("\n")
    assert lines[0] == job.prompt and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 32x32, Model hash: "
    )
    f = meta.fields
    assert (f["Steps"], f["Seed"], f["Size"], f["Model"]) == ("2", "42", "32x32", "tiny/test-model")
    sc = meta.scenecraft
    assert sc is not None
    assert sc["job"] == json.loads(job.model_dump_json())
    assert sc["span"] == {"file": "story.scene", "line": 45, "col": 1, "end_line": 47, "end_col": 2}
    assert sc["merge_key"] and sc["mode"] == "base" and sc["key"]
    manifest = json.loads((tmp_path / "story" / "manifest.json").read_text())
    assert manifest["images"]["story/duo/42.png"]["key"] == sc["key"]
    assert manifest["source_sha256"] == plan.source_sha256
