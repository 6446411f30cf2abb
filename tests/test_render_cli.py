"""End to end through the CLI: a two-concept scene file, two random LoRAs, a LoRACLR merge,
rendered on the tiny local model; then `merge --json`, resume and --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenecraft.cli import main
from scenecraft.render.outputs import read_png_metadata
from tests._fixtures_render import (
    lora_files,
    one_thread,  # noqa: F401  (autouse)
    saved_pipeline_dir,
)


def write_scene(folder: Path, method: str = "loraclr {\n  iterations 5\n}") -> Path:
    ziggy, momo = lora_files()
    scene = folder / "duo.scene"
    scene.write_text(
        f'model "{saved_pipeline_dir()}" family sd15\n'
        f'concept ziggy {{\n  token "<ZIGGY>"\n  class "man"\n  lora "{ziggy}"\n}}\n'
        f'concept momo {{\n  token "<MOMO>"\n  class "dog"\n  lora "{momo}"\n  weight 0.8\n}}\n'
        f"merge {method}\n"
        'defaults {\n  size 64x64\n  steps 2\n  sampler "DDIM"\n  seeds 1, 2\n}\n'
        'scene park {\n  setting "a park"\n  ziggy wears "a hat" waves at momo\n}\n',
        encoding="utf-8",
    )
    return scene


def test_render_two_concepts_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = write_scene(tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["render", str(scene), "--out", str(out), "--cache-dir", str(cache), "--quiet"]
    assert main(argv) == 0
    images = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == ["duo/park/1.png", "duo/park/2.png"]
    meta = read_png_metadata(images[0])
    assert meta.fields["Seed"] == "1" and meta.fields["Size"] == "64x64"
    # two concepts: a global prompt, and a region per concept rendered with the merged model
    assert meta.fields["Prompt"] == "man waves at dog, in a park"
    assert meta.fields["Regions"] == (
        "ziggy [0,0,0.5,1] <ZIGGY> man wearing a hat, man waves at dog, in a park | "
        "momo [0.5,0,1,1] <MOMO> dog, man waves at dog, in a park"
    )
    assert meta.scenecraft is not None
    assert meta.scenecraft["job"]["concepts"] == ["ziggy", "momo"]
    assert list(cache.iterdir()), "the merge was cached"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err

    # a re-run renders nothing and leaves the files alone; --force redoes them
    stamps = [p.stat().st_mtime_ns for p in images]
    assert main(argv) == 0
    assert [p.stat().st_mtime_ns for p in images] == stamps
    assert main([*argv, "--force"]) == 0
    assert [p.stat().st_mtime_ns for p in images] != stamps


def test_merge_json_reports_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene = write_scene(tmp_path, "gradient-fusion")
    assert main(["merge", str(scene), "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "gradient-fusion" in text and "fidelity" in text


def test_render_refuses_a_missing_lora_with_a_diagnostic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = write_scene(tmp_path)
    scene.write_text(scene.read_text().replace(str(lora_files()[0]), "gone.safetensors"))
    assert main(["render", str(scene), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error[lora-not-found]" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_only_a_storyboard_renders_the_scenes_its_panels_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 11: `--only BOARD` whose panels name scenes rendered nothing, wrote no sheet, exit 0
    scene = write_scene(tmp_path, "none")
    scene.write_text(
        scene.read_text()
        + "scene other {\n  momo\n}\n"
        + 'storyboard day {\n  title "A day in the park"\n  panel park "at the park"\n}\n'
    )
    out = tmp_path / "out"
    assert main(["compile", str(scene), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["storyboards"][0]["title"] == "A day in the park"
    assert main(["render", str(scene), "--out", str(out), "--only", "day", "--quiet"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["duo/day.png", "duo/park/1.png", "duo/park/2.png"]
    page = (out / "duo" / "day.html").read_text()
    assert "<h1>A day in the park</h1>" in page and page.count("<img") == 2


def test_render_json_keeps_stdout_for_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 11: without --quiet, human progress lines were printed to stdout before the JSON
    scene = write_scene(tmp_path, "none")
    out = tmp_path / "out"
    assert main(["render", str(scene), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout is one JSON document
    assert len(result["written"]) == 2 and result["mode"] == "base"
    assert "wrote 2 image(s)" in captured.err  # the human summary still shows, on stderr
