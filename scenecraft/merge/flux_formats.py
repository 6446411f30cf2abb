"""Every FLUX LoRA layout, read into per-module low-rank updates on diffusers' module names.

A FLUX LoRA names its layers in one of several spellings (docs/merge.md, "FLUX LoRA layouts"):

- diffusers / PEFT / ai-toolkit: ``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``
  (also without the ``transformer.`` prefix, or under peft's ``base_model.model.``);
- kohya sd-scripts: ``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`` + ``.alpha``,
  Black Forest Labs' module names with ``_`` for ``.``; the text encoders as ``lora_te1_…``
  (CLIP-L) and ``lora_te2_…`` or sd-scripts' ``lora_te3_…`` (T5);
- kohya "mixture": diffusers' names flattened, ``lora_transformer_transformer_blocks_0_attn_to_q``;
- ComfyUI: BFL names under ``diffusion_model.`` (``diffusion_model.double_blocks.0.img_attn.qkv``),
  text encoders under ``text_encoders.clip_l.transformer.`` / ``text_encoders.t5xxl.transformer.``;
- XLabs: ``double_blocks.0.processor.qkv_lora1.down.weight`` (image), ``qkv_lora2`` (text),
  ``proj_lora1/2``; ``single_blocks.0.processor.qkv_lora`` / ``proj_lora``;
- FLUX.2 (BFL names under ``diffusion_model.``): the same blocks, onto `Flux2Transformer2DModel`,
  whose single blocks keep ``linear1`` fused as ``attn.to_qkv_mlp_proj``.

BFL's fused layers (``img_attn.qkv``, ``txt_attn.qkv``, ``linear1``) become one LoRA per diffusers
module: B's rows are split by the modules' output widths, A is shared (ΔW_q = s · B_q A exactly).
Columns of B_i that are all zero (kohya's "split qkv" block-diagonal files) are dropped with the
rows of A they multiply, so the rank stays what the file trained. Each module keeps its own alpha
(kohya writes one per module), rescaled so that alpha_i / r_i = alpha / r.

Nothing here is silent: a key that is not a LoRA weight is `lora-unknown-keys`; a layer that maps
to no module of the base model keeps the file's name and `check_layers` lists it
(`lora-unknown-modules`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from scenecraft.diagnostics import error
from scenecraft.merge.formats_index import ModuleIndex, make_layer
from scenecraft.merge.types import LoRALayer

# ------------------------------------------------------------------------------ the tables
# BFL module name -> candidate diffusers targets, FLUX.1 (`FluxTransformer2DModel`) first, then
# FLUX.2 (`Flux2Transformer2DModel`); the first candidate whose modules all exist is used.
Targets = tuple[tuple[str, ...], ...]

DOUBLE: dict[str, Targets] = {
    "img_attn.qkv": (("attn.to_q", "attn.to_k", "attn.to_v"),),
    "img_attn.proj": (("attn.to_out.0",),),
    "img_mlp.0": (("ff.net.0.proj",), ("ff.linear_in",)),
    "img_mlp.2": (("ff.net.2",), ("ff.linear_out",)),
    "img_mod.lin": (("norm1.linear",),),
    "txt_attn.qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),),
    "txt_attn.proj": (("attn.to_add_out",),),
    "txt_mlp.0": (("ff_context.net.0.proj",), ("ff_context.linear_in",)),
    "txt_mlp.2": (("ff_context.net.2",), ("ff_context.linear_out",)),
    "txt_mod.lin": (("norm1_context.linear",),),
}
SINGLE: dict[str, Targets] = {
    "linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), ("attn.to_qkv_mlp_proj",)),
    "linear2": (("proj_out",), ("attn.to_out",)),
    "modulation.lin": (("norm.linear",),),
    "qkv": (("attn.to_q", "attn.to_k", "attn.to_v"),),  # XLabs' single-block LoRA (no MLP rows)
}
_TIME = "time_text_embed", "time_guidance_embed"  # FLUX.1, FLUX.2
GLOBAL: dict[str, Targets] = {
    "img_in": (("x_embedder",),),
    "txt_in": (("context_embedder",),),
    "time_in.in_layer": tuple((f"{t}.timestep_embedder.linear_1",) for t in _TIME),
    "time_in.out_layer": tuple((f"{t}.timestep_embedder.linear_2",) for t in _TIME),
    "guidance_in.in_layer": tuple((f"{t}.guidance_embedder.linear_1",) for t in _TIME),
    "guidance_in.out_layer": tuple((f"{t}.guidance_embedder.linear_2",) for t in _TIME),
    "vector_in.in_layer": (("time_text_embed.text_embedder.linear_1",),),
    "vector_in.out_layer": (("time_text_embed.text_embedder.linear_2",),),
    "final_layer.linear": (("proj_out",),),
    "final_layer.adaLN_modulation.1": (("norm_out.linear",),),
    "single_stream_modulation.lin": (("single_stream_modulation.linear",),),
    "double_stream_modulation_img.lin": (("double_stream_modulation_img.linear",),),
    "double_stream_modulation_txt.lin": (("double_stream_modulation_txt.linear",),),
}
# BFL's final modulation is (shift, scale); diffusers' `AdaLayerNormContinuous` reads (scale, shift)
_SWAP_HALVES = frozenset({"final_layer.adaLN_modulation.1"})

# XLabs processor LoRAs -> BFL module names
_XLABS_DOUBLE = {
    "qkv_lora1": "img_attn.qkv",
    "qkv_lora2": "txt_attn.qkv",
    "proj_lora1": "img_attn.proj",
    "proj_lora2": "txt_attn.proj",
}
_XLABS_SINGLE = {"qkv_lora": "qkv", "proj_lora": "linear2"}

# key suffix -> factor ("down" = A, "up" = B, "alpha"), longest first
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".down.weight", "down"),
    (".up.weight", "up"),
    (".alpha", "alpha"),
)
# component prefixes: (prefix, component, how the rest is spelled)
_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("lora_unet_", "transformer", "kohya"),
    ("lora_transformer_", "transformer", "flat"),
    ("lora_te1_", "text_encoder", "flat"),
    ("lora_te2_", "text_encoder_2", "flat"),
    ("lora_te3_", "text_encoder_2", "flat"),  # sd-scripts' lora_flux names T5 `lora_te3`
    ("lora_te_", "text_encoder", "flat"),
    ("text_encoders.clip_l.transformer.", "text_encoder", "dotted"),
    ("text_encoders.t5xxl.transformer.", "text_encoder_2", "dotted"),
    ("diffusion_model.", "transformer", "bfl"),
    ("transformer.", "transformer", "dotted"),
    ("text_encoder_2.", "text_encoder_2", "dotted"),
    ("text_encoder.", "text_encoder", "dotted"),
    ("double_blocks.", "transformer", "bfl-bare"),
    ("single_blocks.", "transformer", "bfl-bare"),
    ("base_model.model.", "transformer", "dotted"),  # peft's own `save_pretrained`
    ("transformer_blocks.", "transformer", "dotted-bare"),  # diffusers names, no component
    ("single_transformer_blocks.", "transformer", "dotted-bare"),
)
_BLOCK = re.compile(r"^(double_blocks|single_blocks)[._](\d+)[._](.+)$")
_XLABS = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.processor\.(\w+)$")
_DIFFUSERS_BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")


def _flat(name: str) -> str:
    return name.replace(".", "_")


_KOHYA_SUB = {
    "double_blocks": {_flat(k): k for k in DOUBLE},
    "single_blocks": {_flat(k): k for k in SINGLE},
}
_KOHYA_GLOBAL = {_flat(k): k for k in GLOBAL}


# ----------------------------------------------------------------------------- detection


def is_flux_layout(keys: list[str], index: ModuleIndex | None) -> bool:
    """True when the base model is a transformer (MM-DiT) or the keys are FLUX-only spellings."""
    if index is not None and any(p.startswith("transformer.") for p in index.shapes):
        return True
    flux_only = (
        "lora_unet_double_blocks_",
        "lora_unet_single_blocks_",
        "lora_transformer_",
        "diffusion_model.",
        "transformer.",
        "double_blocks.",
        "single_blocks.",
        "text_encoders.",
        "single_transformer_blocks.",
        "base_model.model.single_transformer_blocks.",
    )
    return any(k.startswith(flux_only) for k in keys)


def layout_name(keys: list[str]) -> str:
    """The layout a file is written in, for `LoRAInfo.format` and provenance."""
    if any(".processor." in k for k in keys):
        return "flux-xlabs"
    if any(k.startswith("lora_transformer_") for k in keys):
        return "flux-kohya-diffusers"
    if any(k.startswith("lora_unet_") for k in keys):
        return "flux-kohya"
    if any(k.startswith(("diffusion_model.", "double_blocks.", "single_blocks.")) for k in keys):
        return "flux-bfl"  # ComfyUI, FLUX.2 and bare BFL names
    if any(k.startswith("text_encoders.") for k in keys):
        return "flux-bfl"
    return "flux-peft"


# ------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Stem:
    """One layer of the file: which component, and its name in that spelling."""

    component: str  # "transformer" | "text_encoder" | "text_encoder_2"
    spelling: str  # "bfl" (BFL dotted) | "dotted" (diffusers) | "flat" (diffusers, `_` for `.`)
    name: str


def _split_suffix(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _kohya_bfl(rest: str) -> str | None:
    """``double_blocks_0_img_attn_qkv`` -> ``double_blocks.0.img_attn.qkv`` (None when unknown)."""
    match = _BLOCK.match(rest)
    if match:
        kind, n, sub = match.groups()
        dotted = _KOHYA_SUB[kind].get(sub)
        return f"{kind}.{n}.{dotted}" if dotted else None
    return _KOHYA_GLOBAL.get(rest)


def _stem(raw: str) -> _Stem | None:
    """Where a file's layer name points; None when no FLUX spelling matches it."""
    for prefix, component, how in _PREFIXES:
        if not raw.startswith(prefix):
            continue
        rest = raw[len(prefix) :]
        if how == "dotted-bare":
            return _Stem(component, "dotted", raw)
        if how == "kohya":
            bfl = _kohya_bfl(rest)
            return _Stem(component, "bfl", bfl) if bfl else None
        if how == "bfl" and rest.startswith(_DIFFUSERS_BLOCKS):  # FLUX.2's expanded names
            return _Stem(component, "dotted", rest)
        if how in ("bfl", "bfl-bare"):
            xlabs = _XLABS.match(raw if how == "bfl-bare" else rest)
            if xlabs:
                kind, n, proc = xlabs.groups()
                table = _XLABS_DOUBLE if kind == "double_blocks" else _XLABS_SINGLE
                return (
                    _Stem(component, "bfl", f"{kind}.{n}.{table[proc]}") if proc in table else None
                )
            return _Stem(component, "bfl", raw if how == "bfl-bare" else rest)
        return _Stem(component, how, rest)
    return None


@dataclass
class _Pair:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


def _collect(state: Mapping[str, Any], *, concept: str, source: str) -> dict[str, _Pair]:
    """File layer name -> its factors; `lora-unknown-keys` lists keys that are not LoRA weights."""
    pairs: dict[str, _Pair] = {}
    stray: list[str] = []
    for key, value in state.items():
        split = _split_suffix(key) if isinstance(value, torch.Tensor) else None
        if split is None:
            stray.append(key)
            continue
        stem, part = split
        pair = pairs.setdefault(stem, _Pair())
        if part == "alpha":
            pair.alpha = float(value)
        else:
            setattr(pair, part, value)
    unpaired = sorted(s for s, p in pairs.items() if p.down is None or p.up is None)
    if stray or unpaired:
        shown = stray + [
            f"{s} (no {'up/B' if pairs[s].up is None else 'down/A'})" for s in unpaired
        ]
        raise error(
            "lora-unknown-keys",
            f"concept `{concept}`: `{source}` has {len(shown)} key(s) that are not FLUX LoRA "
            "weight pairs",
            notes=tuple(f"`{k}`" for k in shown[:8]) + (("and more",) if len(shown) > 8 else ()),
            help="every `lora_A`/`lora_down` needs its `lora_B`/`lora_up`; export the LoRA again",
        )
    return pairs


# ----------------------------------------------------------------------------- resolving


def _flat_lookup(index: ModuleIndex, component: str) -> dict[str, str]:
    """Flattened name (``_`` for ``.``, with and without CLIP's ``text_model_``) -> index path."""
    table: dict[str, str] = {}
    for path in index.shapes:
        comp, _, rest = path.partition(".")
        if comp != component:
            continue
        flat = _flat(rest)
        table[flat] = path
        table.setdefault(f"text_model_{flat}", path)
        table.setdefault(flat.removeprefix("text_model_"), path)
    return table


def _candidates(bfl: str) -> tuple[str, Targets] | None:
    """BFL name -> (diffusers prefix, candidate target groups)."""
    match = _BLOCK.match(bfl)
    if match:
        kind, n, sub = match.groups()
        table = DOUBLE if kind == "double_blocks" else SINGLE
        block = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
        return (f"{block}.{n}.", table[sub]) if sub in table else None
    return ("", GLOBAL[bfl]) if bfl in GLOBAL else None


def _targets(stem: _Stem, index: ModuleIndex | None, flat: dict[str, str]) -> tuple[str, ...]:
    """Index paths a layer writes to (several for a fused BFL layer); () when none fits."""
    comp = stem.component
    if stem.spelling == "dotted":
        path = f"{comp}.{stem.name}"
        if index is None:
            return (path,)
        found = index.resolve(path)
        return (found,) if found else ()
    if stem.spelling == "flat":
        if index is None:
            return (f"{comp}.{stem.name}",)
        found = flat.get(stem.name)
        return (found,) if found else ()
    cands = _candidates(stem.name)
    if cands is None:
        return ()
    prefix, groups = cands
    for group in groups:
        paths = tuple(f"{comp}.{prefix}{t}" for t in group)
        if index is None or all(p in index.shapes for p in paths):
            return paths
    return ()


def _part(
    module: str, down: torch.Tensor, up_rows: torch.Tensor, alpha: float | None, rank: int
) -> LoRALayer:
    """One diffusers module's share of a (maybe fused) LoRA; zero columns of B_i dropped."""
    used = up_rows.abs().sum(dim=0) != 0
    if 0 < int(used.sum()) < rank:
        up_rows, down = up_rows[:, used], down[used]
    r_i = int(down.shape[0])
    # s_i = alpha_i / r_i must equal the file's s = alpha / r (alpha None means s = 1)
    alpha_i = None if alpha is None else alpha * r_i / rank
    return make_layer(module, down, up_rows.contiguous(), alpha_i)


def _split(
    name: str,
    pair: _Pair,
    targets: tuple[str, ...],
    index: ModuleIndex,
    *,
    concept: str,
    source: str,
) -> dict[str, LoRALayer]:
    """A fused layer (q/k/v[/mlp]) as one LoRA per target module, B split by output widths."""
    assert pair.down is not None and pair.up is not None
    down = pair.down.reshape(pair.down.shape[0], -1).float()
    up = pair.up.reshape(pair.up.shape[0], -1).float()
    rank = int(down.shape[0])
    widths = [index.shapes[t][0] for t in targets]
    if sum(widths) != up.shape[0]:
        raise error(
            "lora-shape-mismatch",
            f"concept `{concept}`: `{source}` does not fit the base model at fused layer `{name}`",
            notes=(
                f"its B (up) has {int(up.shape[0])} rows; the base model's "
                + ", ".join(f"`{t}`" for t in targets)
                + f" have {sum(widths)} output rows together ({' + '.join(map(str, widths))})",
            ),
            help="this LoRA was trained for another FLUX size; use one trained for this base",
        )
    rows = torch.split(up, widths, dim=0)
    return {t: _part(t, down, r, pair.alpha, rank) for t, r in zip(targets, rows, strict=True)}


def parse_flux(
    state: Mapping[str, Any],
    *,
    concept: str,
    source: str,
    index: ModuleIndex | None,
    alpha_of: Callable[[str, int], float | None] = lambda module, rank: None,
) -> dict[str, LoRALayer]:
    """A FLUX LoRA in any layout as layers keyed by the base model's module paths.

    With ``index=None`` (``scenecraft lora inspect``) fused layers are not split and names are
    not checked. Layers that map nowhere keep the file's name for `check_layers` to list.
    ``alpha_of(module, rank)`` supplies a PEFT file's alpha from its adapter metadata.
    """
    pairs = _collect(state, concept=concept, source=source)
    flats = {c: _flat_lookup(index, c) for c in _COMPONENTS} if index is not None else {}
    layers: dict[str, LoRALayer] = {}
    for raw, pair in pairs.items():
        assert pair.down is not None and pair.up is not None
        stem = _stem(raw)
        if stem is None and index is not None and f"transformer.{raw}" in index.shapes:
            stem = _Stem("transformer", "dotted", raw)  # a bare global layer (`x_embedder`)
        targets = _targets(stem, index, flats.get(stem.component, {})) if stem else ()
        if not targets:
            layers[raw] = make_layer(raw, pair.down, pair.up, pair.alpha)  # listed by check_layers
            continue
        up = pair.up
        if stem is not None and stem.spelling == "bfl" and stem.name in _SWAP_HALVES:
            half = up.shape[0] // 2
            up = torch.cat([up[half:], up[:half]], dim=0)
        alpha = pair.alpha
        if alpha is None and stem is not None and stem.spelling == "dotted":
            alpha = alpha_of(targets[0], int(pair.down.shape[0]))
        if len(targets) == 1 or index is None:
            layers[targets[0]] = make_layer(targets[0], pair.down, up, alpha)
        else:
            fused = _Pair(pair.down, up, alpha)
            layers.update(_split(raw, fused, targets, index, concept=concept, source=source))
    return layers


_COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")
