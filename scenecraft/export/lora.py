"""A merge as ONE standard LoRA file: ΔW* = W* − W0 per layer, factored by truncated SVD.

For every module the merge changed, ΔW* (out, in·kh·kw) = U Σ Vᵀ and the rank-r factors are

    B = U_r Σ_r^½   (out, r)        A = Σ_r^½ V_rᵀ   (r, in·kh·kw)

with r the smallest rank whose relative Frobenius error
``‖ΔW* − B A‖_F / ‖ΔW*‖_F = sqrt(Σ_{i>r} σ_i²) / sqrt(Σ_i σ_i²)`` is within the budget
(``max_error``), or a fixed ``rank`` (the error is then reported).

Scale: every loader applies ``(alpha / r) · up @ down``. A kohya file gets ONE alpha for every
module (``KOHYA_ALPHA`` = 1, kohya's own default) and factors scaled by √(r / alpha), so the
product is ΔW at any rank. Per-module alpha = r (what the issue first asked for) is a trap once
ranks differ per layer: diffusers applies the most common alpha to every module (measured on
the toy world: 78 of 92 modules at the wrong scale, up to 40% off); one alpha is read right by
diffusers, A1111/Forge and ComfyUI alike. A PEFT file keeps the factors as they are and records
each module's rank and alpha = rank in diffusers' ``lora_adapter_metadata`` (rank_pattern,
alpha_pattern).

Key names: kohya (``lora_unet_…``, ``lora_te_text_model_…``; SDXL ``lora_te1_``/``lora_te2_``,
what A1111/Forge and ComfyUI load) or PEFT (``unet.….lora_A.weight``, what diffusers'
``save_lora_weights`` writes). Both are pure functions of the module path (`kohya_key`,
`peft_key`), the reverse of what `scenecraft.merge.formats` reads.

New tokens (textual inversion) cannot live in a LoRA file: `embedding_files` writes one
A1111/ComfyUI embedding per token beside it (``emb_params`` for SD 1.x/2.x, ``clip_l``/``clip_g``
for SDXL).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

LoRAFormat = Literal["kohya", "peft"]
FORMATS: tuple[str, ...] = ("kohya", "peft")
DEFAULT_MAX_ERROR = 0.01  # relative Frobenius error per layer
KOHYA_ALPHA = 1.0  # the one alpha of every module of a kohya file (module docstring)


@dataclass(frozen=True)
class Factored:
    """One module's exported update: ΔW ≈ up @ down (scale 1)."""

    module: str  # component-prefixed module path ("unet.down_blocks.1…attn2.to_k")
    up: torch.Tensor  # B, (out, r) or (out, r, 1, 1) for convs
    down: torch.Tensor  # A, (r, in) or (r, in, kh, kw) for convs
    rank: int
    error: float  # ‖ΔW − s · B A‖_F / ‖ΔW‖_F, measured after the cast to the file's dtype
    full_rank: int  # min(out, in·kh·kw): the rank that would be exact
    alpha: float | None = None  # the file's alpha (s = alpha / rank); None: alpha = rank, s = 1


@dataclass
class LoRAReport:
    """The LoRA `scenecraft.export.api.export_merge` wrote: per-layer rank and error, the file."""

    path: str
    format: str
    modules: int
    bytes: int
    max_error: float | None  # the budget asked for (None with a fixed rank)
    rank: int | None  # the fixed rank asked for (None with a budget)
    layers: list[dict[str, Any]] = field(default_factory=list)  # module, rank, error, full_rank

    @property
    def worst_error(self) -> float:
        return max((float(row["error"]) for row in self.layers), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        ranks = [int(row["rank"]) for row in self.layers]
        return {
            "path": self.path,
            "format": self.format,
            "modules": self.modules,
            "bytes": self.bytes,
            "max_error": self.max_error,
            "rank": self.rank,
            "worst_error": self.worst_error,
            "mean_rank": sum(ranks) / len(ranks) if ranks else 0.0,
            "max_rank": max(ranks, default=0),
            "layers": self.layers,
        }


# ----------------------------------------------------------------------------- 1. the SVD


def choose_rank(sigma: torch.Tensor, max_error: float) -> int:
    """The smallest r with sqrt(Σ_{i>r} σ_i²) <= max_error · sqrt(Σ σ_i²) (at least 1)."""
    energy = sigma.double() ** 2  # (k,), descending
    total = float(energy.sum())
    if total == 0.0:
        return 0
    tail = torch.flip(torch.cumsum(torch.flip(energy, [0]), 0), [0])  # tail[i] = Σ_{j>=i} σ_j²
    # error of rank r is sqrt(tail[r] / total); tail[k] = 0
    budget = (max_error**2) * total
    for r in range(1, len(energy) + 1):
        rest = float(tail[r]) if r < len(energy) else 0.0
        if rest <= budget:
            return r
    return len(energy)


def factor(
    module: str,
    delta: torch.Tensor,
    *,
    max_error: float | None = DEFAULT_MAX_ERROR,
    rank: int | None = None,
    dtype: torch.dtype = torch.float16,
    alpha: float | None = None,
) -> Factored | None:
    """Truncated SVD of one ΔW (its module's weight shape); None when ΔW is zero. With
    ``alpha``, both factors are scaled by √(r / alpha) so that (alpha / r) · up @ down ≈ ΔW."""
    shape = tuple(delta.shape)
    dw = delta.detach().double().reshape(shape[0], -1)  # (out, in·kh·kw)
    norm = float(torch.linalg.matrix_norm(dw))
    if norm == 0.0:
        return None
    u, s, vh = torch.linalg.svd(dw, full_matrices=False)  # (out, k), (k,), (k, in·kh·kw)
    full = int(s.shape[0])
    r = min(rank, full) if rank is not None else choose_rank(s, float(max_error or 0.0))
    gain = math.sqrt(r / alpha) if alpha is not None else 1.0
    root = s[:r].sqrt() * gain
    up = (u[:, :r] * root).to(dtype)  # (out, r)
    down = (root[:, None] * vh[:r]).to(dtype)  # (r, in·kh·kw)
    approx = (up.double() @ down.double()) / gain**2
    error = float(torch.linalg.matrix_norm(dw - approx)) / norm
    if len(shape) == 4:  # conv: A as (r, in, kh, kw), B as a 1×1 conv (out, r, 1, 1)
        down = down.reshape(r, *shape[1:])
        up = up.reshape(shape[0], r, 1, 1)
    return Factored(module, up.contiguous(), down.contiguous(), r, error, full, alpha)


def factor_all(
    deltas: Mapping[str, torch.Tensor],
    *,
    max_error: float | None = DEFAULT_MAX_ERROR,
    rank: int | None = None,
    dtype: torch.dtype = torch.float16,
    alpha: float | None = None,
) -> list[Factored]:
    """Every nonzero ΔW* factored, in module order."""
    out = []
    for module in sorted(deltas):
        f = factor(module, deltas[module], max_error=max_error, rank=rank, dtype=dtype, alpha=alpha)
        if f is not None:
            out.append(f)
    return out


# ----------------------------------------------------------------------------- 2. key names

_KOHYA_PREFIX = {"unet": "lora_unet", "transformer": "lora_transformer"}


def kohya_key(module: str, sdxl: bool = False) -> str:
    """``unet.a.b`` -> ``lora_unet_a_b``; ``text_encoder.encoder.x`` ->
    ``lora_te_text_model_encoder_x`` (``lora_te1_``/``lora_te2_`` for SDXL; a CLIP module outside
    ``text_model``, SDXL's ``text_projection``, keeps its name)."""
    component, _, rel = module.partition(".")
    if component.startswith("text_encoder"):
        prefix = (
            "lora_te2" if component == "text_encoder_2" else ("lora_te1" if sdxl else "lora_te")
        )
        if not rel.startswith(("text_model.", "text_projection")):
            rel = f"text_model.{rel}"  # transformers 5 dropped the wrapper; the files keep it
    else:
        prefix = _KOHYA_PREFIX[component]
    return f"{prefix}_{rel.replace('.', '_')}"


def peft_key(module: str) -> str:
    """The module path itself: ``unet.a.b`` (+ ``.lora_A.weight``), as diffusers saves it."""
    return module


def lora_tensors(
    layers: list[Factored], fmt: LoRAFormat, sdxl: bool = False
) -> dict[str, torch.Tensor]:
    """The file's tensors; kohya modules carry their ``.alpha`` (factor them with
    ``alpha=KOHYA_ALPHA``: one alpha for every module, see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for f in layers:
        if fmt == "kohya":
            key = kohya_key(f.module, sdxl)
            out[f"{key}.lora_down.weight"] = f.down
            out[f"{key}.lora_up.weight"] = f.up
            alpha = float(f.rank) if f.alpha is None else f.alpha
            out[f"{key}.alpha"] = torch.tensor(alpha, dtype=f.down.dtype)
        else:
            key = peft_key(f.module)
            out[f"{key}.lora_A.weight"] = f.down
            out[f"{key}.lora_B.weight"] = f.up
    return out


def peft_adapter_metadata(layers: list[Factored]) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata``: per component r, lora_alpha = r and patterns that
    give every module its own rank and alpha = rank (scale 1 everywhere)."""
    meta: dict[str, Any] = {}
    for f in layers:
        component, _, rel = f.module.partition(".")
        config = meta.setdefault(
            component,
            {"r": f.rank, "lora_alpha": f.rank, "rank_pattern": {}, "alpha_pattern": {}},
        )
        config.setdefault("target_modules", []).append(rel)
        if f.rank != config["r"]:
            config["rank_pattern"][rel] = f.rank
            config["alpha_pattern"][rel] = f.rank
    flat: dict[str, Any] = {}
    for component, config in meta.items():
        for name, value in config.items():
            flat[f"{component}.{name}"] = value
    return flat


# ---------------------------------------------------------------------- 3. header metadata

_BASE_VERSION = {"sd15": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}


def header_metadata(
    manifest: Mapping[str, Any],
    layers: list[Factored],
    fmt: LoRAFormat,
    *,
    max_error: float | None,
    rank: int | None,
    version: str,
) -> dict[str, str]:
    """The safetensors header: what was merged (concepts, tokens, method, merge key) and how it
    was exported; kohya's ``ss_*`` fields so tools tell the family and the tokens."""
    concepts = manifest.get("concepts", [])
    family = (manifest.get("base") or {}).get("family")
    tokens = [t for c in concepts for t in c.get("tokens", [])]
    meta = {
        "scenecraft.version": version,
        "scenecraft.method": str(manifest.get("method", "")),
        "scenecraft.merge_key": str(manifest.get("plan_key", "")),
        "scenecraft.entry": str(manifest.get("key", "")),
        "scenecraft.concepts": json.dumps(
            [
                {"name": c.get("name"), "tokens": c.get("tokens", []), "class": c.get("class_noun")}
                for c in concepts
            ]
        ),
        "scenecraft.tokens": json.dumps(tokens),
        "scenecraft.export": json.dumps({"max_error": max_error, "rank": rank, "format": fmt}),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max((f.rank for f in layers), default=0)),
        "ss_network_alpha": str(KOHYA_ALPHA) if fmt == "kohya" and family != "flux" else "rank",
        "modelspec.trigger_phrase": ", ".join(tokens),
    }
    if family in _BASE_VERSION:
        meta["ss_base_model_version"] = _BASE_VERSION[family]
    if fmt == "peft":
        meta["lora_adapter_metadata"] = json.dumps(peft_adapter_metadata(layers))
    return meta


def file_dtype(name: str) -> torch.dtype:
    return {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[name]


def relative_error(delta: torch.Tensor, approx: torch.Tensor) -> float:
    """‖ΔW − approx‖_F / ‖ΔW‖_F (0 for a zero ΔW)."""
    d = delta.double().reshape(delta.shape[0], -1)
    norm = float(torch.linalg.matrix_norm(d))
    diff = float(torch.linalg.matrix_norm(d - approx.double().reshape(d.shape)))
    return diff / norm if norm else (0.0 if diff == 0 else math.inf)
