"""A FLUX merge as one LoRA file: kohya's FLUX names (fused q/k/v) or diffusers/PEFT names.

The merge cache holds ΔW* per diffusers module (``transformer.transformer_blocks.0.attn.to_q``).
A kohya FLUX file (sd-scripts' ``lora_flux``, what ComfyUI and Forge load) names Black Forest
Labs' modules instead, and those fuse several diffusers modules into one layer:

    double_blocks.N.img_attn.qkv  = [to_q; to_k; to_v]                   (rows stacked)
    double_blocks.N.txt_attn.qkv  = [add_q_proj; add_k_proj; add_v_proj]
    single_blocks.N.linear1       = [to_q; to_k; to_v; proj_mlp]

so the exported layer is the SVD of the stacked ΔW (a member the merge left alone is a zero
block): the exact inverse of the split `scenecraft.merge.flux_formats` does when reading (B's
rows split by output widths, A shared). The rank is the smallest whose error is within the
budget for EVERY member on its own (its rows of the residual, ``Σ_{j>=r} σ_j² ‖U_i[:, j]‖²``),
not only for the stack. ``final_layer.adaLN_modulation.1`` stores (shift, scale) where diffusers'
``norm_out.linear`` has (scale, shift): its rows are swapped back. A transformer module with no
BFL name is written in kohya's diffusers-flat spelling (``lora_transformer_…``).

Text encoders: CLIP-L as ``lora_te1_text_model_…``, T5 as ``lora_te3_…`` (sd-scripts' FLUX
prefix for T5, "ComfyUI compatible"). Every kohya module gets alpha = its rank (scale 1): the
FLUX converters read each module's alpha (diffusers ignores ``final_layer``'s, so any other
alpha would be wrong there).

PEFT: the module paths themselves (`scenecraft.export.lora.peft_key`), what diffusers'
``FluxPipeline.save_lora_weights`` writes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from scenecraft.diagnostics import Diagnostic
from scenecraft.export.lora import DEFAULT_MAX_ERROR, Factored, factor, kohya_key
from scenecraft.merge.flux_formats import _SWAP_HALVES, DOUBLE, GLOBAL, SINGLE

Shapes = Mapping[str, tuple[int, ...]]


def _bfl_table() -> dict[str, tuple[str, tuple[str, ...]]]:
    """diffusers module (relative to the transformer) -> (BFL name, the fused group's members),
    FLUX.1 block layout (the first candidate of each `flux_formats` table row)."""
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for kind, block, rows in (
        ("double_blocks", "transformer_blocks", DOUBLE),
        ("single_blocks", "single_transformer_blocks", SINGLE),
    ):
        for bfl, groups in rows.items():
            if bfl == "qkv":  # XLabs' single-block spelling; linear1 is kohya's
                continue
            for member in groups[0]:
                table[f"{block}.{{n}}.{member}"] = (f"{kind}.{{n}}.{bfl}", groups[0])
    for bfl, groups in GLOBAL.items():
        for group in groups:
            table.setdefault(group[0], (bfl, group))
    return table


_TABLE = _bfl_table()


def bfl_name(module: str) -> tuple[str, tuple[str, ...]] | None:
    """``transformer.transformer_blocks.3.attn.to_k`` -> (``double_blocks.3.img_attn.qkv``,
    the member paths in row order); None for a module with no BFL name."""
    component, _, rel = module.partition(".")
    if component != "transformer":
        return None
    parts = rel.split(".")
    if len(parts) > 2 and parts[1].isdigit():
        n = parts[1]
        found = _TABLE.get(".".join([parts[0], "{n}", *parts[2:]]))
        if found is None:
            return None
        bfl, members = found
        block = parts[0]
        return bfl.format(n=n), tuple(f"transformer.{block}.{n}.{m}" for m in members)
    found = _TABLE.get(rel)
    if found is None or found[0].startswith(("double_blocks", "single_blocks")):
        return None
    bfl, members = found
    return bfl, tuple(f"transformer.{m}" for m in members)


def flux_kohya_key(name: str) -> str:
    """A layer's kohya key: ``transformer.<BFL name>`` -> ``lora_unet_<flat>``; a diffusers
    transformer path -> ``lora_transformer_<flat>``; CLIP-L -> ``lora_te1_text_model_…``;
    T5 -> ``lora_te3_…``."""
    component, _, rel = name.partition(".")
    if component == "bfl":
        return f"lora_unet_{rel.replace('.', '_')}"
    if component == "text_encoder_2":
        return f"lora_te3_{rel.replace('.', '_')}"
    return kohya_key(name, sdxl=True)  # lora_transformer_…, lora_te1_text_model_…


def fused_groups(
    deltas: Mapping[str, torch.Tensor], shapes: Shapes
) -> dict[str, list[torch.Tensor]]:
    """Layer name -> its row blocks: ``bfl.<BFL name>`` (members stacked in BFL's row order,
    zeros for members the merge did not change), or the module path itself."""
    groups: dict[str, list[torch.Tensor]] = {}
    for module in sorted(deltas):
        found = bfl_name(module)
        if found is None:
            groups[module] = [deltas[module]]
            continue
        bfl, members = found
        if f"bfl.{bfl}" in groups:
            continue
        blocks = []
        for member in members:
            if member in deltas:
                blocks.append(deltas[member].detach().float())
            else:
                blocks.append(torch.zeros(shapes[member], dtype=torch.float32))
        if bfl in _SWAP_HALVES:  # diffusers' (scale, shift) -> BFL's (shift, scale)
            half = blocks[0].shape[0] // 2
            blocks = [torch.cat([blocks[0][half:], blocks[0][:half]], dim=0)]
        groups[f"bfl.{bfl}"] = blocks
    return groups


def member_rank(
    u: torch.Tensor, s: torch.Tensor, widths: list[int], norms: list[float], max_error: float
) -> int:
    """The smallest r whose residual rows of every member i, ``Σ_{j>=r} σ_j² ‖U_i[:, j]‖²``,
    are within ``max_error² ‖ΔW_i‖²``."""
    k = int(s.shape[0])
    need = 0
    for rows, norm in zip(torch.split(u, widths, dim=0), norms, strict=True):
        if norm == 0.0:
            continue
        energy = (s**2) * (rows**2).sum(dim=0)  # (k,)
        tail = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])  # tail[r]: Σ_{j>=r}
        budget = (max_error**2) * norm**2
        r = next((r for r in range(1, k) if float(tail[r]) <= budget), k)
        need = max(need, r)
    return max(need, 1)


def factor_fused(
    name: str,
    blocks: list[torch.Tensor],
    *,
    max_error: float | None = DEFAULT_MAX_ERROR,
    rank: int | None = None,
    dtype: torch.dtype = torch.float16,
) -> Factored | None:
    """SVD of the stacked blocks with the rank that meets the budget for each block; the
    reported error is the worst block's (after the cast to ``dtype``)."""
    if len(blocks) == 1:
        return factor(name, blocks[0], max_error=max_error, rank=rank, dtype=dtype)
    stacked = torch.cat([b.double().reshape(b.shape[0], -1) for b in blocks], dim=0)
    if float(stacked.abs().max()) == 0.0:
        return None
    widths = [int(b.shape[0]) for b in blocks]
    norms = [float(torch.linalg.matrix_norm(b.double().reshape(b.shape[0], -1))) for b in blocks]
    u, s, vh = torch.linalg.svd(stacked, full_matrices=False)
    full = int(s.shape[0])
    if rank is not None:
        r = min(rank, full)
    else:
        r = member_rank(u, s, widths, norms, float(max_error or 0.0))
    root = s[:r].sqrt()
    up = (u[:, :r] * root).to(dtype)
    down = (root[:, None] * vh[:r]).to(dtype)
    approx = up.double() @ down.double()
    error = 0.0
    for got, want, norm in zip(
        torch.split(approx, widths), torch.split(stacked, widths), norms, strict=True
    ):
        if norm:
            error = max(error, float(torch.linalg.matrix_norm(want - got)) / norm)
    return Factored(name, up.contiguous(), down.contiguous(), r, error, full)


def factor_flux_kohya(
    deltas: Mapping[str, torch.Tensor],
    shapes: Shapes,
    *,
    max_error: float | None = DEFAULT_MAX_ERROR,
    rank: int | None = None,
    dtype: torch.dtype = torch.float16,
) -> list[Factored]:
    """Every changed layer in kohya FLUX grouping (``Factored.module`` is ``bfl.<BFL name>``
    for a BFL layer, else the module path), alpha = rank."""
    out = []
    for name, blocks in fused_groups(deltas, shapes).items():
        f = factor_fused(name, blocks, max_error=max_error, rank=rank, dtype=dtype)
        if f is not None:
            out.append(f)
    return out


def flux_kohya_tensors(layers: list[Factored]) -> dict[str, torch.Tensor]:
    """The kohya FLUX file's tensors: ``.lora_down``/``.lora_up``/``.alpha`` (= rank)."""
    out: dict[str, torch.Tensor] = {}
    for f in layers:
        key = flux_kohya_key(f.module)
        out[f"{key}.lora_down.weight"] = f.down
        out[f"{key}.lora_up.weight"] = f.up
        out[f"{key}.alpha"] = torch.tensor(float(f.rank), dtype=f.down.dtype)
    return out


def display_name(module: str) -> str:
    """The report's name of a layer: ``transformer.double_blocks.0.img_attn.qkv`` for a fused
    BFL layer, the module path otherwise."""
    return f"transformer.{module[4:]}" if module.startswith("bfl.") else module


def is_flux(pipe: object) -> bool:
    """A FLUX pipeline: the base model is an MM-DiT ``transformer`` (no UNet)."""
    return getattr(pipe, "transformer", None) is not None


def flux_lora_warnings(
    pipe: object, deltas: Mapping[str, torch.Tensor], fmt: str
) -> list[Diagnostic]:
    """`export-flux-t5-lora` when the merge changed T5: diffusers' FluxPipeline loads LoRA
    into the transformer and CLIP-L only, and drops ``text_encoder_2`` keys without a word."""
    t5 = sum(1 for m in deltas if m.startswith("text_encoder_2."))
    if not is_flux(pipe) or not t5:
        return []
    where = "`lora_te3_…` (ComfyUI loads them)" if fmt == "kohya" else "`text_encoder_2.…`"
    return [
        Diagnostic(
            "export-flux-t5-lora",
            f"the merge changed {t5} T5 module(s), written as {where}; diffusers' "
            "`FluxPipeline.load_lora_weights` ignores T5 LoRA keys",
            severity="warning",
            help="in diffusers, render with the merge applied (`scenecraft render`) or fuse the "
            "T5 deltas yourself; the transformer and CLIP-L parts load as they are",
        )
    ]
