"""Every FLUX LoRA layout loads to its truth: the dense ΔW per diffusers module of a tiny
FluxTransformer2DModel (+ CLIP-L and T5 text encoders), built in-process from known factors.

Each test prints the max abs difference it measured (docs/merge.md, "FLUX LoRA layouts", lists
them); where diffusers itself reads the layout, its conversion is compared too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from scenecraft.diagnostics import DiagnosticError
from scenecraft.merge.formats import inspect_lora, read_concept_lora
from scenecraft.merge.formats_index import ModuleIndex
from tests import _flux_lora_files as F

BLOCKS = (2, 2)  # the tiny FLUX: 2 double + 2 single blocks


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(tmp_path: Path, state: dict[str, torch.Tensor], index: Any = None, **meta: str) -> Any:
    path = tmp_path / "lora.safetensors"
    save_file(state, str(path), metadata=meta or None)
    return read_concept_lora(path, name="zig", pipe_or_module_index=index or F.flux_index())


def _max_diff(concept: Any, want: dict[str, torch.Tensor], label: str) -> float:
    assert sorted(concept.layers) == sorted(want), label
    diff = max(float((concept.delta(m).double() - want[m]).abs().max()) for m in want)
    print(f"{label}: {len(want)} modules, max |ΔW - truth| = {diff:.2e}")
    return diff


def _everything(**kw: Any) -> list[F.Fused]:
    return F.random_fused(F.flux_index(), F.bfl_modules(F.flux_index(), BLOCKS), **kw)


# ------------------------------------------------------------------------------ layouts


def test_kohya_fused_qkv_and_linear1_split_with_per_module_alphas(tmp_path: Path) -> None:
    fused = _everything(seed=1)
    assert len({f.alpha for f in fused}) > 1  # alphas differ per module
    concept = _load(tmp_path, F.kohya_state(fused))
    assert concept.metadata["format"] == "flux-kohya" and concept.family == "flux"
    assert _max_diff(concept, F.truth(fused), "kohya") < 1e-5
    assert any(m.startswith("text_encoder_2.") for m in concept.layers)  # T5 lora_te2_
    assert concept.layers["transformer.transformer_blocks.0.attn.to_k"].rank == 4


def test_kohya_split_qkv_block_diagonal_keeps_the_trained_rank(tmp_path: Path) -> None:
    fused = _everything(seed=2, split_qkv=True)
    concept = _load(tmp_path, F.kohya_state(fused))
    assert _max_diff(concept, F.truth(fused), "kohya split_qkv") < 1e-5
    for m in ("transformer_blocks.1.attn.add_v_proj", "single_transformer_blocks.0.proj_mlp"):
        assert concept.layers[f"transformer.{m}"].rank == 4  # not 12/16: zero columns dropped


@pytest.mark.parametrize("a_b", [False, True], ids=["lora_down", "lora_A"])
def test_comfyui_diffusion_model_prefix(tmp_path: Path, a_b: bool) -> None:
    fused = _everything(seed=3)
    concept = _load(tmp_path, F.comfy_state(fused, a_b=a_b))
    assert concept.metadata["format"] == "flux-bfl"
    assert (
        _max_diff(concept, F.truth(fused), f"comfyui ({'lora_A' if a_b else 'lora_down'})") < 1e-5
    )


def test_xlabs_processor_layout(tmp_path: Path) -> None:
    fused = F.random_fused(
        F.flux_index(), F.xlabs_modules(F.flux_index(), BLOCKS), seed=4, alphas=False
    )
    concept = _load(tmp_path, F.xlabs_state(fused))
    assert concept.metadata["format"] == "flux-xlabs"
    assert _max_diff(concept, F.truth(fused), "xlabs") < 1e-5


def test_peft_native_with_alpha_metadata(tmp_path: Path) -> None:
    import json

    per_module = F.split_per_module(_everything(seed=5, alphas=False))
    pattern_module = "transformer_blocks.1.attn.to_q"
    meta = {"transformer.lora_alpha": 8, "transformer.alpha_pattern": {pattern_module: 2}}
    meta_te = {"text_encoder.lora_alpha": 4}
    for f in per_module:  # what the metadata says, as truth
        comp, rel = f.targets[0].split(".", 1)
        f.alpha = {"transformer": 2.0 if rel == pattern_module else 8.0, "text_encoder": 4.0}.get(
            comp
        )
    per_module = [f for f in per_module if not f.targets[0].startswith("text_encoder_2.")]
    concept = _load(
        tmp_path, F.peft_state(per_module), lora_adapter_metadata=json.dumps({**meta, **meta_te})
    )
    assert concept.metadata["format"] == "flux-peft"
    assert _max_diff(concept, F.truth(per_module), "diffusers/PEFT") < 1e-5


@pytest.mark.parametrize(
    ("down_up", "prefix"),
    [(False, "transformer."), (True, "transformer."), (False, ""), (False, "base_model.model.")],
    ids=["lora_A", "lora_down", "no-prefix", "peft-base_model"],
)
def test_ai_toolkit_diffusers_names_without_alphas(
    tmp_path: Path, down_up: bool, prefix: str
) -> None:
    per_module = F.split_per_module(_everything(seed=6, alphas=False))
    if prefix != "transformer.":  # files of the transformer alone
        per_module = [f for f in per_module if f.targets[0].startswith("transformer.")]
    state = F.peft_state(per_module, lora_down_up=down_up)
    if prefix != "transformer.":
        state = {prefix + k.removeprefix("transformer."): v for k, v in state.items()}
    concept = _load(tmp_path, state)
    assert (
        _max_diff(
            concept,
            F.truth(per_module),
            f"ai-toolkit ({'lora_down' if down_up else 'lora_A'}, prefix {prefix!r})",
        )
        < 1e-5
    )


def test_kohya_mixture_flattened_diffusers_names(tmp_path: Path) -> None:
    per_module = F.split_per_module(_everything(seed=7))
    per_module = [f for f in per_module if not f.targets[0].startswith("text_encoder_2.")]
    concept = _load(tmp_path, F.mixture_state(per_module))
    assert concept.metadata["format"] == "flux-kohya-diffusers"
    assert _max_diff(concept, F.truth(per_module), "kohya mixture") < 1e-5


def test_flux2_fused_to_qkv_mlp_proj(tmp_path: Path) -> None:
    from diffusers import Flux2Transformer2DModel
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_flux2_lora_to_diffusers,
    )

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=16,
        axes_dims_rope=(2, 2, 2, 2),
    )
    index = ModuleIndex.from_pipe(SimpleNamespace(transformer=model))
    t = "transformer.transformer_blocks.0"
    s = "transformer.single_transformer_blocks"
    modules = {
        "double_blocks.0.img_attn.qkv": tuple(f"{t}.attn.to_{c}" for c in "qkv"),
        "double_blocks.0.txt_attn.proj": (f"{t}.attn.to_add_out",),
        "double_blocks.0.img_mlp.0": (f"{t}.ff.linear_in",),
        "single_blocks.0.linear1": (f"{s}.0.attn.to_qkv_mlp_proj",),
        "single_blocks.1.linear2": (f"{s}.1.attn.to_out",),
    }
    fused = F.random_fused(index, modules, seed=8, alphas=False)
    state = F.comfy_state(fused, a_b=True)
    concept = _load(tmp_path, state, index)
    assert concept.layers[f"{s}.0.attn.to_qkv_mlp_proj"].up.shape[0] == 144  # kept fused
    assert _max_diff(concept, F.truth(fused), "FLUX.2 (BFL, fused to_qkv_mlp_proj)") < 1e-5
    theirs = _convert_non_diffusers_flux2_lora_to_diffusers(dict(state))
    _compare_to_diffusers(concept, theirs, "FLUX.2 vs diffusers")


# --------------------------------------------------------------------- diffusers agrees


def _compare_to_diffusers(concept: Any, theirs: dict[str, torch.Tensor], label: str) -> None:
    """diffusers' conversion (alphas baked into A and B) gives the same ΔW per module."""
    # diffusers leaves the kohya converter's global layers (x_embedder, proj_out, …) unprefixed
    named = {
        k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in theirs.items()
    }
    dense = {
        k.removesuffix(".lora_A.weight"): named[k.replace("lora_A", "lora_B")].double() @ v.double()
        for k, v in named.items()
        if k.endswith(".lora_A.weight") and not k.startswith("transformer.text_encoder")
    }
    ours = {m for m in concept.layers if m.startswith("transformer.")}
    assert set(dense) == ours, label
    diff = max(float((concept.delta(m).double() - dense[m]).abs().max()) for m in dense)
    print(f"{label}: {len(dense)} modules, max |ours - diffusers| = {diff:.2e}")
    assert diff < 1e-5


def _no_linear1(fused: list[F.Fused]) -> list[F.Fused]:
    """diffusers' kohya converter hard-codes FLUX.1-dev's widths for linear1 (3072 ×3 + 12288),
    so the tiny model's linear1 is left out of the files diffusers reads; T5 it drops. It also
    drops the alphas of ``final_layer`` (its "TODO: alphas"): those two are written at alpha = r,
    where both readings agree (scenecraft applies a final_layer alpha; diffusers does not)."""
    kept = [f for f in fused if not f.name.endswith("linear1") and not f.name.startswith("te")]
    for f in kept:
        if f.name.startswith("final_layer"):
            f.alpha = None
    return kept


@pytest.mark.parametrize("layout", ["kohya", "comfyui", "xlabs", "mixture", "peft"])
def test_diffusers_own_conversion_agrees(tmp_path: Path, layout: str) -> None:
    from diffusers import FluxPipeline

    index = F.flux_index()
    if layout == "xlabs":
        fused = F.random_fused(index, F.xlabs_modules(index, BLOCKS), seed=9, alphas=False)
        state = F.xlabs_state(fused)
    else:
        fused = _no_linear1(_everything(seed=9))
        if layout in ("mixture", "peft"):
            fused = F.split_per_module(fused)
        if layout == "mixture":  # diffusers' mixture reader needs every alpha and knows only the
            # blocks' attention layers (it files ff/norm layers under the bare block name)
            fused = [f for f in fused if ".attn." in f.targets[0] or "blocks" not in f.targets[0]]
            for f in fused:
                f.alpha = 4.0 if f.alpha is None else f.alpha
        writer = {"kohya": F.kohya_state, "comfyui": F.comfy_state, "mixture": F.mixture_state}
        state = F.peft_state(fused) if layout == "peft" else writer[layout](fused)
        if layout == "peft":
            state = {k: v for k, v in state.items() if ".alpha" not in k}
            for f in fused:
                f.alpha = None
    concept = _load(tmp_path, dict(state))
    theirs = FluxPipeline.lora_state_dict({k: v.clone() for k, v in state.items()})
    _compare_to_diffusers(concept, theirs, f"{layout} vs diffusers")


def test_diffusers_load_lora_weights_fuses_the_same_weights(tmp_path: Path) -> None:
    """XLabs through `FluxPipeline.load_lora_weights` + `fuse_lora`: W - W0 is our ΔW."""
    index = F.flux_index()
    fused = F.random_fused(index, F.xlabs_modules(index, BLOCKS), seed=10, alphas=False)
    concept = _load(tmp_path, F.xlabs_state(fused))
    pipe = copy.deepcopy(F.flux_pipe())
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    pipe.fuse_lora()
    after = dict(pipe.transformer.named_parameters())
    diff = 0.0
    for module, layer in concept.layers.items():
        key = module.removeprefix("transformer.") + ".weight"
        wrapped = key.replace(".weight", ".base_layer.weight")  # peft's wrapper after fusing
        fused_delta = (after[wrapped].detach() - before[key]).double()
        diff = max(diff, float((fused_delta - layer.delta().double()).abs().max()))
    print(f"xlabs vs diffusers load_lora_weights+fuse: max diff {diff:.2e}")
    assert diff < 1e-5


# ---------------------------------------------------------------------------- diagnostics


def test_unmapped_keys_are_listed(tmp_path: Path) -> None:
    fused = _everything(seed=11)[:3]
    state = F.kohya_state(fused)
    g = torch.Generator().manual_seed(0)
    extra = {
        "lora_unet_double_blocks_7_img_attn_proj": (16, 16),  # no block 7
        "lora_unet_double_blocks_0_img_attn_norm_query_norm": (16, 16),  # not a BFL LoRA target
    }
    for stem, (o, i) in extra.items():
        state[f"{stem}.lora_down.weight"] = torch.randn(2, i, generator=g)
        state[f"{stem}.lora_up.weight"] = torch.randn(o, 2, generator=g)
    with pytest.raises(DiagnosticError) as exc:
        _load(tmp_path, state)
    diag = exc.value.diagnostics[0]
    assert diag.code == "lora-unknown-modules" and "2 layer(s)" in diag.message
    assert all(any(stem in n for n in diag.notes) for stem in extra)


def test_keys_that_are_not_lora_weights_are_listed(tmp_path: Path) -> None:
    state = F.kohya_state(_everything(seed=12)[:2])
    state["lora_unet_double_blocks_0_img_attn_qkv.scale_weight"] = torch.ones(1)
    state.pop("lora_unet_double_blocks_0_img_attn_proj.lora_up.weight")
    with pytest.raises(DiagnosticError) as exc:
        _load(tmp_path, state)
    diag = exc.value.diagnostics[0]
    assert diag.code == "lora-unknown-keys"
    assert any("scale_weight" in n for n in diag.notes)
    assert any("img_attn_proj (no up/B)" in n for n in diag.notes)


def test_fused_layer_of_another_size_is_a_shape_mismatch(tmp_path: Path) -> None:
    state = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(2, 16),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(40, 2),
    }
    with pytest.raises(DiagnosticError) as exc:
        _load(tmp_path, state)
    assert exc.value.diagnostics[0].code == "lora-shape-mismatch"
    assert "48 output rows together (16 + 16 + 16)" in exc.value.diagnostics[0].notes[0]


def test_inspect_names_the_layout(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file(
        F.xlabs_state(F.random_fused(F.flux_index(), F.xlabs_modules(F.flux_index(), BLOCKS))),
        str(path),
    )
    info = inspect_lora(path)
    assert info.format == "flux-xlabs" and info.components == ("transformer",)
    assert info.modules == 12 and info.ranks == (4,)  # 2 × 4 double + 2 × 2 single, unsplit


def test_an_sd_lora_on_a_flux_base_lists_its_layers(tmp_path: Path) -> None:
    state = {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
            torch.randn(2, 768)
        ),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (
            torch.randn(320, 2)
        ),
    }
    path = tmp_path / "sd.safetensors"
    save_file(state, str(path), metadata={"ss_base_model_version": "sd_v1"})
    with pytest.raises(DiagnosticError) as exc:
        read_concept_lora(path, name="zig", pipe_or_module_index=F.flux_index())
    diag = exc.value.diagnostics[0]
    assert diag.code == "lora-unknown-modules"
    assert "`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k`" in diag.notes[0]
    assert "trained for `sd15`, the base model is `flux`" in diag.notes[-1]
