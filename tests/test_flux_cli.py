"""FLUX end to end: `family flux` through the checker, the tiny FluxPipeline saved to a folder and
loaded through scenecraft's own loading path, two concepts' LoRAs in two layouts (kohya with
fused qkv, XLabs) merged data-free onto the transformer, rendered by the CLI."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scenecraft.cli import main
from scenecraft.diagnostics import DiagnosticError
from scenecraft.language.check import check
from scenecraft.language.loader import load_program
from scenecraft.render.outputs import read_png_metadata
from tests import _flux_lora_files as F
from tests._fixtures_render import pixels


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def flux_dir() -> Path:
    """The tiny FLUX pipeline saved as a diffusers folder, and two concepts' LoRA files."""
    from scenecraft.testing_flux import save_tiny_flux_pipeline

    root = Path(tempfile.mkdtemp(prefix="scenecraft-flux-tests-"))
    save_tiny_flux_pipeline(root / "tiny-flux")
    index = F.flux_index()
    ziggy = F.random_fused(index, F.bfl_modules(index, (2, 2)), seed=21)
    momo = F.random_fused(index, F.xlabs_modules(index, (2, 2)), seed=22, alphas=False)
    save_file(F.kohya_state(ziggy), str(root / "ziggy-kohya.safetensors"))
    save_file(F.xlabs_state(momo), str(root / "momo-xlabs.safetensors"))
    return root


def write_scene(folder: Path, merge: str = "merge linear", extra: str = "") -> Path:
    root = flux_dir()
    folder.mkdir(parents=True, exist_ok=True)
    scene = folder / "fx.scene"
    scene.write_text(
        f'model "{root / "tiny-flux"}" family flux\n'
        f'concept ziggy {{\n  token "<ZIGGY>"\n  class "man"\n'
        f'  lora "{root / "ziggy-kohya.safetensors"}"\n}}\n'
        f'concept momo {{\n  token "<MOMO>"\n  class "dog"\n'
        f'  lora "{root / "momo-xlabs.safetensors"}"\n  weight 0.8\n}}\n'
        f"{merge}\n"
        f"defaults {{\n  size 64x64\n  steps 2\n  seeds 1, 2\n{extra}}}\n"
        'scene park {\n  setting "a park"\n  ziggy waves at momo\n}\n',
        encoding="utf-8",
    )
    return scene


def _check(scene: Path) -> tuple[list[str], list[str]]:
    """(error codes, warning codes) of the checker on ``scene``."""
    try:
        checked = check(load_program(scene))
    except DiagnosticError as exc:
        return [d.code for d in exc.errors], [d.code for d in exc.diagnostics if not d.is_error]
    return [], [w.code for w in checked.warnings]


# ---------------------------------------------------------------------------- the checker


def test_checker_takes_family_flux_with_its_defaults(tmp_path: Path) -> None:
    checked = check(load_program(write_scene(tmp_path)))
    assert checked.model is not None and checked.model.family == "flux"
    assert checked.defaults["sampler"] == "Euler" and checked.defaults["guidance"] == 3.5
    assert checked.defaults["regions"] == "off"
    assert checked.merge_method == "linear"
    # no merge block: linear, not loraclr
    assert check(load_program(write_scene(tmp_path / "b", merge=""))).merge_method == "linear"


@pytest.mark.parametrize(
    ("merge", "extra", "errors", "warnings"),
    [
        ("merge loraclr", "", ["merge-unsupported-family"], []),
        ("merge gradient-fusion", "", ["merge-unsupported-family"], []),
        ("merge ties", '  sampler "DPM++ 2M Karras"\n', ["sampler-not-flow-matching"], []),
        ("merge dare", "  regions on\n", ["regions-unsupported-family"], []),
        ("merge average", '  negative "blurry"\n', [], ["flux-ignores-negative"]),
    ],
)
def test_checker_diagnostics_for_settings_flux_does_not_take(
    tmp_path: Path, merge: str, extra: str, errors: list[str], warnings: list[str]
) -> None:
    found_errors, found_warnings = _check(write_scene(tmp_path, merge, extra))
    assert found_errors == errors
    assert [w for w in found_warnings if w in warnings] == warnings


def test_merge_unsupported_family_names_the_methods_that_work(tmp_path: Path) -> None:
    with pytest.raises(DiagnosticError) as exc:
        check(load_program(write_scene(tmp_path, "merge loraclr")))
    diag = exc.value.errors[0]
    assert "`linear`, `average`, `ties`, `dare`" in " ".join(diag.notes)


# ------------------------------------------------------------------------------ rendering


def test_render_a_flux_scene_with_two_merged_concepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene, cache = write_scene(tmp_path, "merge ties"), tmp_path / "cache"
    assert main(["merge", str(scene), "--json", "--cache-dir", str(cache)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["figures"]["method"] == "ties"
    out = tmp_path / "out"
    assert (
        main(["render", str(scene), "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0
    )
    images = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in images] == ["fx/park/1.png", "fx/park/2.png"]
    meta = read_png_metadata(images[0])
    assert meta.fields["Size"] == "64x64" and meta.fields["Sampler"] == "Euler"
    assert meta.fields["Merge"].startswith("ties ") and "Regions" not in meta.fields
    assert meta.scenecraft is not None and meta.scenecraft["merge_entry"] == report["key"]

    # the base alone renders other pixels: the merge reached the transformer
    base = write_scene(tmp_path / "base", "merge none")
    out2 = tmp_path / "out2"
    assert main(["render", str(base), "--out", str(out2), "--quiet"]) == 0
    plain = out2 / "fx" / "park" / "1.png"
    assert abs(pixels(plain).astype(int) - pixels(images[0]).astype(int)).max() > 0


@pytest.mark.slow
def test_render_through_the_cli_module(tmp_path: Path) -> None:
    """`python -m scenecraft.cli render` in a fresh process (the real entry point)."""
    scene = write_scene(tmp_path, "merge linear")
    out = tmp_path / "out"
    argv = ["render", str(scene), "--out", str(out), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "scenecraft.cli", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(sorted(out.rglob("*.png"))) == 2
    assert "Traceback" not in done.stdout + done.stderr


def test_linear_merge_on_the_transformer_is_the_weighted_sum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ΔW* of `merge linear` = ΔW_ziggy + 0.8 ΔW_momo on every module, fused q/k/v split."""
    from safetensors.torch import load_file

    from scenecraft.merge.formats import read_concept_lora

    scene, cache = write_scene(tmp_path, "merge linear"), tmp_path / "cache"
    assert main(["merge", str(scene), "--json", "--cache-dir", str(cache)]) == 0
    key = json.loads(capsys.readouterr().out)["key"]
    merged = load_file(str(cache / key / "weights.safetensors"))
    root, index = flux_dir(), F.flux_index()
    ziggy = read_concept_lora(
        root / "ziggy-kohya.safetensors", name="ziggy", pipe_or_module_index=index
    )
    momo = read_concept_lora(
        root / "momo-xlabs.safetensors", name="momo", weight=0.8, pipe_or_module_index=index
    )
    assert set(merged) == set(ziggy.layers) | set(momo.layers)
    assert any(m.startswith("transformer.single_transformer_blocks.") for m in merged)
    diff = 0.0
    for module, delta in merged.items():
        want = sum(c.delta(module) for c in (ziggy, momo) if module in c.layers)
        diff = max(diff, float((delta.float() - want).abs().max()))
    print(f"linear merge on FLUX: {len(merged)} modules, max |ΔW* - Σ w ΔW| = {diff:.2e}")
    assert diff < 1e-5


# ------------------------------------------------------------------------ loading the base


def test_a_flux_folder_loads_through_scenecraft_and_renders_as_built() -> None:
    """Detected as flux from model_index.json (no declaration), loaded as a FluxPipeline in
    fp32 on CPU; the same seed gives the in-process pipeline's image exactly."""
    from diffusers import FluxPipeline

    from scenecraft.models import detect_family, load_pipeline
    from scenecraft.plan import BaseModelSpec

    folder = flux_dir() / "tiny-flux"
    assert detect_family(folder) == "flux"
    pipe = load_pipeline(BaseModelSpec(source=str(folder)), device="cpu")
    assert isinstance(pipe, FluxPipeline) and pipe.transformer.dtype == torch.float32
    images = []
    for p in (pipe, F.flux_pipe()):
        g = torch.Generator().manual_seed(3)
        images.append(
            p(
                "photo of a man",
                height=64,
                width=64,
                num_inference_steps=2,
                generator=g,
                output_type="np",
            ).images
        )
    assert abs(images[0] - images[1]).max() == 0.0


def test_flux_dtype_sampler_and_single_file_family() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from scenecraft.models import choose_dtype, family_from_state_dict
    from scenecraft.render.samplers import make_scheduler

    cuda = torch.device("cuda")  # choose_dtype only reads the device type
    assert choose_dtype(cuda, None, "flux") == torch.bfloat16
    assert choose_dtype(cuda, None, "sdxl") == torch.float16
    assert choose_dtype(cuda, "float16", "flux") == torch.float16  # asked for: kept
    assert choose_dtype(torch.device("cpu"), None, "flux") == torch.float32
    config = F.flux_pipe().scheduler.config
    assert isinstance(make_scheduler("Euler", config), FlowMatchEulerDiscreteScheduler)
    with pytest.raises(DiagnosticError) as exc:
        make_scheduler("DPM++ 2M Karras", config)
    assert exc.value.diagnostics[0].code == "sampler-not-flow-matching"
    shapes = {"double_blocks.0.img_attn.qkv.weight": (9216, 3072)}
    assert family_from_state_dict(shapes) == "flux"
