"""`scenecraft export` on a FLUX scene (the tiny FluxPipeline, two concepts merged data-free):
the LoRA in kohya FLUX names (fused q/k/v) read back by scenecraft's own loader, and in PEFT names
loaded by plain diffusers (`load_lora_weights` + `fuse_lora`) against scenecraft's merge."""

from __future__ import annotations

import contextlib
import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scenecraft.cli import main
from scenecraft.export.flux import bfl_name, factor_fused, flux_kohya_key, fused_groups
from scenecraft.merge.apply import apply_merge, module_weight
from scenecraft.merge.cache import load_entry
from scenecraft.merge.formats import read_concept_lora
from tests import _flux_lora_files as F
from tests.test_export import validate_workflow
from tests.test_flux_cli import flux_dir, one_thread, write_scene  # noqa: F401

BUDGET = 0.01
PROMPT = "photo of a man"


@functools.cache
def exported(root: str) -> dict[str, Any]:
    """One FLUX scene exported as kohya and as PEFT (the second reuses the cached merge)."""
    folder = Path(root)
    scene = write_scene(folder, "merge linear")
    out: dict[str, Any] = {"scene": scene, "cache": folder / "cache"}
    for fmt in ("kohya", "peft"):
        path = folder / f"cast-{fmt}.safetensors"
        argv = ["export", str(scene), "--json", "--cache-dir", str(folder / "cache")]
        argv += ["--lora", str(path), "--format", fmt]
        if fmt == "kohya":
            argv += ["--comfyui", str(folder / "wf")]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(argv) == 0
        out[fmt] = (path, json.loads(buffer.getvalue()))
    return out


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return exported(str(tmp_path_factory.mktemp("flux-export")))


def _deltas(result: dict[str, Any]) -> dict[str, torch.Tensor]:
    report = result["kohya"][1]
    deltas, _, _ = load_entry(result["cache"] / report["entry"])
    return deltas


# ------------------------------------------------------------------------------ the names


def test_bfl_names_are_the_inverse_of_the_reader() -> None:
    assert bfl_name("transformer.transformer_blocks.1.attn.to_k") == (
        "double_blocks.1.img_attn.qkv",
        tuple(f"transformer.transformer_blocks.1.attn.to_{x}" for x in "qkv"),
    )
    assert bfl_name("transformer.single_transformer_blocks.0.proj_mlp") == (
        "single_blocks.0.linear1",
        tuple(
            f"transformer.single_transformer_blocks.0.{m}"
            for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        ),
    )
    assert bfl_name("transformer.single_transformer_blocks.0.proj_out")[0] == (  # type: ignore[index]
        "single_blocks.0.linear2"
    )
    assert bfl_name("transformer.proj_out") == ("final_layer.linear", ("transformer.proj_out",))
    assert bfl_name("transformer.norm_out.linear")[0] == "final_layer.adaLN_modulation.1"  # type: ignore[index]
    assert bfl_name("transformer.transformer_blocks.0.attn.norm_q") is None
    assert (
        flux_kohya_key("bfl.double_blocks.1.img_attn.qkv")
        == "lora_unet_double_blocks_1_img_attn_qkv"
    )
    assert flux_kohya_key("text_encoder.encoder.layers.0.mlp.fc1") == (
        "lora_te1_text_model_encoder_layers_0_mlp_fc1"
    )
    assert flux_kohya_key("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q") == (
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
    )
    assert flux_kohya_key("transformer.transformer_blocks.0.attn.norm_q") == (
        "lora_transformer_transformer_blocks_0_attn_norm_q"
    )


def test_fused_rank_meets_the_budget_for_every_member() -> None:
    """A small member next to a large one: the stack's budget alone would drop it."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(16, 4, generator=g) @ torch.randn(4, 16, generator=g)
    small = 1e-3 * (torch.randn(16, 2, generator=g) @ torch.randn(2, 16, generator=g))
    f = factor_fused("bfl.x", [big, small, torch.zeros(16, 16)], max_error=BUDGET)
    assert f is not None and f.rank == 6 and f.error <= BUDGET
    approx = f.up.double() @ f.down.double()
    for got, want in zip(torch.split(approx, 16), (big, small), strict=False):
        assert float((got - want).norm() / want.norm()) <= BUDGET * 1.05


def test_unchanged_members_are_zero_rows_and_final_layer_rows_swap() -> None:
    index = F.flux_index()
    q = torch.ones(index.shapes["transformer.transformer_blocks.0.attn.to_q"])
    norm_out = torch.arange(float(np.prod(index.shapes["transformer.norm_out.linear"])))
    norm_out = norm_out.reshape(index.shapes["transformer.norm_out.linear"])
    groups = fused_groups(
        {"transformer.transformer_blocks.0.attn.to_q": q, "transformer.norm_out.linear": norm_out},
        index.shapes,
    )
    qkv = groups["bfl.double_blocks.0.img_attn.qkv"]
    assert [float(b.abs().sum()) for b in qkv][1:] == [0.0, 0.0] and torch.equal(qkv[0], q)
    (swapped,) = groups["bfl.final_layer.adaLN_modulation.1"]
    half = norm_out.shape[0] // 2
    assert torch.equal(swapped[:half], norm_out[half:])


# ------------------------------------------------------------------------- the round trips


def test_kohya_file_is_fused_and_reads_back_within_the_budget(result: dict[str, Any]) -> None:
    path, report = result["kohya"]
    lora = report["lora"]
    assert lora["format"] == "kohya" and lora["worst_error"] <= BUDGET * 1.05
    state = load_file(str(path))
    keys = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in state}
    assert "lora_unet_double_blocks_0_img_attn_qkv" in keys
    assert "lora_unet_single_blocks_0_linear1" in keys
    assert not any("to_q" in k or "to_k" in k for k in keys)  # fused, never split
    assert any(k.startswith("lora_te1_text_model_") for k in keys)
    for key in keys:  # alpha = rank everywhere (scale 1)
        assert float(state[f"{key}.alpha"]) == state[f"{key}.lora_down.weight"].shape[0]
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["ss_base_model_version"] == "flux1" and meta["scenecraft.method"] == "linear"
    deltas = _deltas(result)
    back = read_concept_lora(path, name="cast", pipe_or_module_index=F.flux_index())
    assert set(back.layers) >= set(deltas)
    for module, delta in deltas.items():
        got = back.delta(module).reshape(delta.shape)
        assert float((got - delta.float()).norm() / delta.float().norm()) <= BUDGET * 1.05, module
    for module in set(back.layers) - set(deltas):  # members the merge left alone stay ~0
        assert float(back.delta(module).abs().max()) < 1e-6, module


def test_diffusers_kohya_converter_reads_our_names(result: dict[str, Any]) -> None:
    """A second reader of the kohya names: diffusers' own FLUX converter. It splits `linear1`
    by FLUX.1's full widths and refuses T5 (`lora_te3_`), so those layers are left out here
    (scenecraft's reader checks them above); every other transformer layer must come out as
    the same ΔW* (double-block qkv split, final_layer rows swapped back, alpha = rank)."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    path, _ = result["kohya"]
    state = {
        k: v.float()
        for k, v in load_file(str(path)).items()
        if "_linear1." not in k and not k.startswith("lora_te3_")
    }
    converted = _convert_kohya_flux_lora_to_diffusers(state)
    deltas = _deltas(result)
    checked = set()
    for key, down in converted.items():
        if not key.endswith(".lora_A.weight"):
            continue
        rel = key.removesuffix(".lora_A.weight").removeprefix("transformer.")
        module = f"transformer.{rel}"
        up = converted[key.replace(".lora_A.", ".lora_B.")]
        want = deltas[module].float()
        assert float((up @ down - want).norm() / want.norm()) <= BUDGET * 1.05, module
        checked.add(module)
    single_qkv = {m for m in deltas if ".single_transformer_blocks." in m and "attn.to_" in m}
    single_qkv |= {m for m in deltas if m.endswith(".proj_mlp")}
    transformer = {m for m in deltas if m.startswith("transformer.")}
    assert checked == transformer - single_qkv
    assert "transformer.norm_out.linear" in checked and "transformer.x_embedder" in checked


def _render(pipe: Any) -> np.ndarray:
    g = torch.Generator().manual_seed(5)
    image = pipe(
        PROMPT, height=64, width=64, num_inference_steps=2, generator=g, output_type="pil"
    ).images[0]
    return np.asarray(image).astype(np.int16)


def _pipe() -> Any:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(flux_dir() / "tiny-flux"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_plain_diffusers_loads_the_peft_file(result: dict[str, Any]) -> None:
    """`FluxPipeline.load_lora_weights` + `fuse_lora` of the PEFT file vs scenecraft's merge:
    every module within the budget, the same image within 2 pixel levels mean."""
    path, report = result["peft"]
    assert report["lora"]["worst_error"] <= BUDGET * 1.05
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    deltas = _deltas(result)
    pipe = _pipe()
    base = {m: module_weight(pipe, m).detach().clone() for m in deltas}
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(components=["transformer", "text_encoder"])  # FLUX's default: transformer
    assert [w["code"] for w in report["warnings"]] == ["export-flux-t5-lora"]
    for module, delta in deltas.items():
        if module.startswith("text_encoder_2."):  # diffusers drops T5 LoRA keys (the warning)
            assert torch.equal(module_weight(pipe, module).detach(), base[module])
            continue
        got = module_weight(pipe, module).detach() - base[module]
        assert float((got - delta.float()).norm() / delta.float().norm()) <= BUDGET * 1.1, module
    with torch.no_grad():  # what the warning's help says: T5's ΔW by hand, the rest by diffusers
        for module, delta in deltas.items():
            if module.startswith("text_encoder_2."):
                module_weight(pipe, module).add_(delta.float())
    merged = _pipe()
    apply_merge(merged, result["cache"] / report["entry"])
    plain = _pipe()
    diff = np.abs(_render(pipe) - _render(merged))
    lora = {k: v for k, v in report["lora"].items() if k != "layers"}
    print(f"FLUX PEFT export: {lora}, image diff mean {diff.mean():.3f}")
    assert diff.mean() <= 2.0
    assert np.abs(_render(plain) - _render(merged)).mean() > diff.mean()  # the merge shows


# ------------------------------------------------------------------------- ComfyUI, errors


def test_comfyui_workflows_use_the_flux_nodes(result: dict[str, Any]) -> None:
    """One workflow per seed, FLUX's built-in nodes only, every required input (the recorded
    node definitions); the scene's guidance in FluxGuidance, KSampler euler/simple at cfg 1."""
    _, report = result["kohya"]
    assert [Path(p).name for p in report["workflows"]] == ["park-1.json", "park-2.json"]
    workflow = json.loads(Path(report["workflows"][0]).read_text())
    validate_workflow(workflow)
    by_class = {node["class_type"]: node["inputs"] for node in workflow.values()}
    assert set(by_class) == {
        "UNETLoader", "DualCLIPLoader", "LoraLoader", "CLIPTextEncode", "FluxGuidance",
        "EmptySD3LatentImage", "KSampler", "VAELoader", "VAEDecode", "SaveImage",
    }  # fmt: skip
    assert by_class["UNETLoader"]["unet_name"] == "tiny-flux.safetensors"
    assert by_class["DualCLIPLoader"]["type"] == "flux"
    assert by_class["LoraLoader"]["lora_name"] == "cast-kohya.safetensors"  # CLIP-L changed too
    assert by_class["FluxGuidance"]["guidance"] == 3.5
    sampler = by_class["KSampler"]
    assert (sampler["sampler_name"], sampler["scheduler"], sampler["cfg"]) == (
        "euler",
        "simple",
        1.0,
    )
    assert (sampler["steps"], sampler["seed"]) == (2, 1)
    assert by_class["EmptySD3LatentImage"]["width"] == 64


def test_model_only_lora_when_no_text_encoder_changed() -> None:
    from scenecraft.export.comfyui import ModelFiles
    from scenecraft.export.comfyui_flux import flux_workflow
    from scenecraft.plan import RenderJob

    job = RenderJob(
        id="j", file="f.scene", scene="s", seed=4, prompt="a <Z> dog", width=64, height=64,
        steps=4, guidance=2.0, sampler="Euler",
    )  # fmt: skip
    files = ModelFiles("flux1-dev.safetensors", "cast.safetensors", {"<Z>": "Z"}, lora_clip=False)
    workflow = flux_workflow(job, files, prefix="p")
    validate_workflow(workflow)
    classes = [n["class_type"] for n in workflow.values()]
    assert "LoraLoaderModelOnly" in classes and "LoraLoader" not in classes
    texts = [n["inputs"]["text"] for n in workflow.values() if n["class_type"] == "CLIPTextEncode"]
    assert texts == ["a embedding:Z dog", ""]


def test_checkpoint_is_refused_for_flux(
    result: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(result["scene"]), "--cache-dir", str(result["cache"])]
    assert main([*argv, "--checkpoint", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "error[export-checkpoint-family]" in err and "FLUX" in err
