"""FLUX LoRA files in every layout, written from random factors on BFL's (fused) modules, and
the truth: the dense ΔW each diffusers module of the tiny FLUX gets.

The truth is written here by hand from diffusers' converters and BFL's model code, not from
`scenecraft.merge.flux_formats`: a fused BFL layer ``W_qkv`` is the row-stack of diffusers'
``to_q``, ``to_k``, ``to_v`` (single blocks: and ``proj_mlp``), so ΔW_q is rows of s · B A.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from scenecraft.merge.formats_index import ModuleIndex

# BFL module -> diffusers modules it is the row-stack of (FLUX.1), per block kind
DOUBLE_T = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
SINGLE_T = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
GLOBAL_T = {
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),  # rows (shift, scale) swapped
}
CLIP_T = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
T5_T = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v")


@dataclass
class Fused:
    """One BFL (or text-encoder) module's factors and what diffusers modules it covers."""

    name: str  # BFL name ("double_blocks.0.img_attn.qkv") or "te1:…" / "te2:…" module path
    targets: tuple[str, ...]  # component-prefixed diffusers paths
    down: torch.Tensor  # A (r, in)
    up: torch.Tensor  # B (sum(out), r)
    alpha: float | None

    def truth(self) -> dict[str, torch.Tensor]:
        """ΔW per diffusers module: rows of s · B A (halves swapped for the final modulation)."""
        rank = self.down.shape[0]
        scale = 1.0 if self.alpha is None else self.alpha / rank
        dense = scale * (self.up.double() @ self.down.double())
        if self.name == "final_layer.adaLN_modulation.1":
            half = dense.shape[0] // 2
            dense = torch.cat([dense[half:], dense[:half]])
        return dict(zip(self.targets, dense.split(_widths(self), dim=0), strict=True))


_WIDTHS: dict[str, list[int]] = {}


def _widths(f: Fused) -> list[int]:
    return _WIDTHS[f.name]


def bfl_modules(index: ModuleIndex, blocks: tuple[int, int]) -> dict[str, tuple[str, ...]]:
    """BFL name -> diffusers targets for a FLUX.1 with (double, single) blocks."""
    out: dict[str, tuple[str, ...]] = {}
    for i in range(blocks[0]):
        for bfl, tg in DOUBLE_T.items():
            out[f"double_blocks.{i}.{bfl}"] = tuple(
                f"transformer.transformer_blocks.{i}.{t}" for t in tg
            )
    for i in range(blocks[1]):
        for bfl, tg in SINGLE_T.items():
            out[f"single_blocks.{i}.{bfl}"] = tuple(
                f"transformer.single_transformer_blocks.{i}.{t}" for t in tg
            )
    for bfl, tg in GLOBAL_T.items():
        out[bfl] = tuple(f"transformer.{t}" for t in tg)
    for path in index.shapes:
        if path.startswith("text_encoder.") and path.endswith(CLIP_T):
            out[f"te1:{path}"] = (path,)
        if path.startswith("text_encoder_2.") and path.endswith(T5_T):
            out[f"te2:{path}"] = (path,)
    return out


def random_fused(
    index: ModuleIndex,
    modules: dict[str, tuple[str, ...]],
    *,
    rank: int = 4,
    seed: int = 0,
    alphas: bool = True,
    split_qkv: bool = False,
) -> list[Fused]:
    """Random factors per module; alpha differs per module (1, 2, 3, …) when ``alphas``.

    ``split_qkv``: fused layers written as kohya's block-diagonal form (A (k·r, in), B with one
    r-wide block of columns per target), as sd-scripts' ``split_qkv`` saves them.
    """
    g = torch.Generator().manual_seed(seed)
    out: list[Fused] = []
    for n, (name, targets) in enumerate(modules.items()):
        widths = [index.shapes[t][0] for t in targets]
        _WIDTHS[name] = widths
        fan_in = index.shapes[targets[0]][1]
        k = len(targets) if split_qkv and len(targets) > 1 else 1
        down = torch.randn(k * rank, fan_in, generator=g) / fan_in**0.5
        up = torch.randn(sum(widths), k * rank, generator=g)
        if k > 1:  # zero every block off the diagonal
            mask = torch.zeros_like(up)
            row = 0
            for j, w in enumerate(widths):
                mask[row : row + w, j * rank : (j + 1) * rank] = 1
                row += w
            up = up * mask
        alpha = float(1 + n % 5) if alphas else None
        out.append(Fused(name, targets, down, up, alpha))
    return out


def truth(fused: list[Fused]) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    for f in fused:
        result.update(f.truth())
    return result


# ------------------------------------------------------------------------------ writers


def _te_rel(name: str) -> tuple[str, str]:
    """``te1:text_encoder.encoder.layers.0.self_attn.q_proj`` -> ("te1", "encoder.layers.0…")."""
    tag, path = name.split(":", 1)
    return tag, path.split(".", 1)[1]


def _flat(s: str) -> str:
    return s.replace(".", "_")


def _pair(state: dict[str, torch.Tensor], stem: str, f: Fused, down: str, up: str) -> None:
    state[f"{stem}{down}"] = f.down.clone()
    state[f"{stem}{up}"] = f.up.clone()
    if f.alpha is not None:
        state[f"{stem}.alpha"] = torch.tensor(f.alpha)


def kohya_state(fused: list[Fused]) -> dict[str, torch.Tensor]:
    """sd-scripts: ``lora_unet_double_blocks_0_img_attn_qkv``, ``lora_te1_text_model_…``, ``lora_te2_…``."""
    state: dict[str, torch.Tensor] = {}
    for f in fused:
        if f.name.startswith("te"):
            tag, rel = _te_rel(f.name)
            rel = f"text_model.{rel}" if tag == "te1" else rel
            stem = f"lora_{tag}_{_flat(rel)}"
        else:
            stem = f"lora_unet_{_flat(f.name)}"
        _pair(state, stem, f, ".lora_down.weight", ".lora_up.weight")
    return state


def comfy_state(fused: list[Fused], a_b: bool = False) -> dict[str, torch.Tensor]:
    """ComfyUI: ``diffusion_model.<BFL>``, ``text_encoders.clip_l/t5xxl.transformer.<path>``."""
    down, up = (
        (".lora_A.weight", ".lora_B.weight") if a_b else (".lora_down.weight", ".lora_up.weight")
    )
    state: dict[str, torch.Tensor] = {}
    for f in fused:
        if f.name.startswith("te"):
            tag, rel = _te_rel(f.name)
            enc = "clip_l" if tag == "te1" else "t5xxl"
            rel = f"text_model.{rel}" if tag == "te1" else rel
            stem = f"text_encoders.{enc}.transformer.{rel}"
        else:
            stem = f"diffusion_model.{f.name}"
        _pair(state, stem, f, down, up)
    return state


_XLABS = {
    "img_attn.qkv": "qkv_lora1",
    "txt_attn.qkv": "qkv_lora2",
    "img_attn.proj": "proj_lora1",
    "txt_attn.proj": "proj_lora2",
}


def xlabs_modules(index: ModuleIndex, blocks: tuple[int, int]) -> dict[str, tuple[str, ...]]:
    """The layers XLabs trains: double-block attention, single-block qkv (no MLP) and proj."""
    full = bfl_modules(index, blocks)
    out = {
        k: v
        for k, v in full.items()
        if k.startswith("double_blocks") and k.split(".", 2)[2] in _XLABS
    }
    for i in range(blocks[1]):
        pre = f"transformer.single_transformer_blocks.{i}"
        out[f"single_blocks.{i}.qkv"] = tuple(f"{pre}.attn.to_{c}" for c in "qkv")
        out[f"single_blocks.{i}.linear2"] = (f"{pre}.proj_out",)
    return out


def xlabs_state(fused: list[Fused]) -> dict[str, torch.Tensor]:
    """XLabs: ``double_blocks.0.processor.qkv_lora1.down.weight``; no alphas."""
    state: dict[str, torch.Tensor] = {}
    for f in fused:
        kind, n, sub = f.name.split(".", 2)
        proc = (
            _XLABS[sub]
            if kind == "double_blocks"
            else {"qkv": "qkv_lora", "linear2": "proj_lora"}[sub]
        )
        _pair(state, f"{kind}.{n}.processor.{proc}", f, ".down.weight", ".up.weight")
    return state


def peft_state(layers: list[Fused], lora_down_up: bool = False) -> dict[str, torch.Tensor]:
    """diffusers / PEFT / ai-toolkit: ``transformer.<path>.lora_A.weight`` (one target each)."""
    down, up = (
        (".lora_down.weight", ".lora_up.weight")
        if lora_down_up
        else (".lora_A.weight", ".lora_B.weight")
    )
    state: dict[str, torch.Tensor] = {}
    for f in layers:
        assert len(f.targets) == 1
        state[f"{f.targets[0]}{down}"] = f.down.clone()
        state[f"{f.targets[0]}{up}"] = f.up.clone()
    return state


def mixture_state(layers: list[Fused]) -> dict[str, torch.Tensor]:
    """kohya from diffusers: ``lora_transformer_transformer_blocks_0_attn_to_q`` + alpha."""
    state: dict[str, torch.Tensor] = {}
    for f in layers:
        comp, rel = f.targets[0].split(".", 1)
        stem = (
            f"lora_transformer_{_flat(rel)}"
            if comp == "transformer"
            else f"lora_te1_text_model_{_flat(rel)}"
        )
        _pair(state, stem, f, ".lora_down.weight", ".lora_up.weight")
    return state


def split_per_module(fused: list[Fused]) -> list[Fused]:
    """The same ΔW as one LoRA per diffusers module (fused B split by rows, A shared)."""
    out: list[Fused] = []
    for f in fused:
        rows = f.up.split(_widths(f), dim=0)
        for t, r in zip(f.targets, rows, strict=True):
            up = r
            if f.name == "final_layer.adaLN_modulation.1":
                half = f.up.shape[0] // 2
                up = torch.cat([f.up[half:], f.up[:half]])
            name = f"{t}#"
            _WIDTHS[name] = [up.shape[0]]
            out.append(Fused(name, (t,), f.down, up, f.alpha))
    return out


@functools.cache
def flux_pipe() -> Any:
    """The session's tiny FluxPipeline (fp32, CPU). Tests must leave it as they found it."""
    from scenecraft.testing import quiet_libraries
    from scenecraft.testing_flux import tiny_flux_pipeline

    quiet_libraries()
    return tiny_flux_pipeline(0)


@functools.cache
def flux_index() -> ModuleIndex:
    return ModuleIndex.from_pipe(flux_pipe())
