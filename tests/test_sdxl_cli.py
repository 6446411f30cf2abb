"""SDXL end to end through the CLI: a scene file on the tiny SDXL saved to a folder, a kohya
(SGM-named) LoRA with an SDXL embedding and a PEFT LoRA, merged with LoRACLR, rendered through
StableDiffusionXLPipeline; `merge --json` reports the figures of both text encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenecraft.cli import main
from scenecraft.render.outputs import read_png_metadata
from tests._fixtures_render import pixels
from tests._fixtures_sdxl import one_thread, sdxl_dir, sdxl_files  # noqa: F401  (autouse)


def write_scene(
    folder: Path, method: str = "loraclr {\n  iterations 5\n}", regions: str = "on"
) -> Path:
    files = sdxl_files()
    folder.mkdir(parents=True, exist_ok=True)
    scene = folder / "xl.scene"
    scene.write_text(
        f'model "{sdxl_dir()}" family sdxl\n'
        f'concept ziggy {{\n  token "<ZIGGY>"\n  class "man"\n  lora "{files["ziggy"]}"\n'
        f'  embedding "{files["ziggy_emb"]}"\n}}\n'
        f'concept momo {{\n  token "<MOMO>"\n  class "dog"\n  lora "{files["momo"]}"\n  weight 0.8\n}}\n'
        f"merge {method}\n"
        'defaults {\n  size 64x64\n  steps 2\n  sampler "Euler"\n  seeds 1, 2\n'
        f"  regions {regions}\n}}\n"
        'scene park {\n  setting "a park"\n  ziggy wears "a hat" waves at momo\n}\n',
        encoding="utf-8",
    )
    return scene


def test_merge_and_render_an_sdxl_scene(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene, cache = write_scene(tmp_path), tmp_path / "cache"
    assert main(["merge", str(scene), "--json", "--cache-dir", str(cache)]) == 0
    report = json.loads(capsys.readouterr().out)
    figures = report["figures"]
    assert figures["method"] == "loraclr" and not report["cached"]
    te2 = [p for p in figures["layers"] if p.startswith("text_encoder_2.")]
    assert te2 and all(figures["layers"][p]["stage"] == "text-encoder" for p in te2)
    for stage in ("text-encoder", "cross-attention"):
        assert figures["stages"][stage]["solved"] > 0
        assert figures["stages"][stage]["fidelity"]["worst"] < 1.0

    out = tmp_path / "out"
    argv = ["render", str(scene), "--out", str(out), "--cache-dir", str(cache), "--quiet"]
    assert main(argv) == 0
    images = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == ["xl/park/1.png", "xl/park/2.png"]
    meta = read_png_metadata(images[0])
    assert meta.fields["Size"] == "64x64" and meta.fields["Merge"].startswith("loraclr ")
    assert meta.scenecraft is not None and meta.scenecraft["merge_entry"] == report["key"]
    # two concepts: regional sampling on SDXL (region prompts through both encoders, pooled
    # text from the global prompt), with the merged model
    assert meta.fields["Regions"].startswith("ziggy [0,0,0.5,1] <ZIGGY> man")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err

    # the same scene without regions renders other pixels from the same merge
    plain = write_scene(tmp_path / "plain", regions="off")
    out2 = tmp_path / "out2"
    argv = ["render", str(plain), "--out", str(out2), "--cache-dir", str(cache), "--quiet"]
    assert main(argv) == 0
    other = out2 / "xl" / "park" / "1.png"
    assert "Regions" not in read_png_metadata(other).fields
    assert abs(pixels(other).astype(int) - pixels(images[0]).astype(int)).max() > 0


def test_data_free_merge_of_an_sdxl_scene(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = write_scene(tmp_path, "ties")
    assert main(["merge", str(scene), "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["figures"]["method"] == "ties"
    assert report["figures"]["stages"]["cross-attention"]["fidelity"]["mean"] is not None


def test_sdxl_scene_with_runtime_adapters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--adapters on SDXL: the kohya and PEFT LoRAs through diffusers' loader, the SDXL
    embedding's clip_l / clip_g into each encoder (diffusers loads them one at a time)."""
    scene, out = write_scene(tmp_path), tmp_path / "out"
    assert main(["render", str(scene), "--out", str(out), "--adapters", "--quiet"]) == 0
    images = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert images == ["xl/park/1.adapters.png", "xl/park/2.adapters.png"]
    assert "error" not in capsys.readouterr().err
