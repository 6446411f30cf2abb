"""Write random LoRA files in every format scenecraft reads (for tests and benchmarks).

One source of truth: `random_concept_layers` draws the low-rank factors; the ``write_*`` helpers
write those same factors as diffusers/PEFT, kohya and Mix-of-Show ED-LoRA files, so a test can
check that every reader gives the same ΔW. Each writer returns the layers it wrote.

    layers = write_kohya_lora(tmp / "a.safetensors", pipe, modules, rank=4, seed=1, alpha=2.0)
    concept = read_concept_lora(tmp / "a.safetensors", name="a", pipe_or_module_index=pipe)
    torch.testing.assert_close(concept.delta(m), layers[m].delta())
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.merge.types import LoRALayer

# Linear layers and 1×1 convs a typical SD LoRA trains (attention, feed-forward, proj_in/out,
# CLIP self-attention and MLP).
DEFAULT_PATTERN = (
    r"(attn[12]\.(to_[qkv]|to_out\.0)|ff\.net\.(0\.proj|2)|proj_(in|out)|self_attn\.|mlp\.fc)"
)


def _shapes(pipe_or_shapes: Any) -> Mapping[str, tuple[int, ...]]:
    if isinstance(pipe_or_shapes, Mapping):
        return pipe_or_shapes
    if isinstance(pipe_or_shapes, ModuleIndex):
        return pipe_or_shapes.shapes
    return ModuleIndex.from_pipe(pipe_or_shapes).shapes


def lora_modules(pipe_or_shapes: Any, pattern: str = DEFAULT_PATTERN) -> list[str]:
    """Module paths matching ``pattern`` whose weight is Linear or a 1×1 conv, sorted."""
    shapes = _shapes(pipe_or_shapes)
    return sorted(
        m for m, s in shapes.items() if re.search(pattern, m) and (len(s) == 2 or s[2:] == (1, 1))
    )


def random_concept_layers(
    pipe_or_shapes: Any,
    modules: Iterable[str],
    rank: int,
    seed: int,
    alpha: float | None = None,
) -> dict[str, LoRALayer]:
    """Random factors for ``modules``: down (r, in·kh·kw), up (out, r), both ~ N(0, 0.1²)."""
    shapes = _shapes(pipe_or_shapes)
    gen = torch.Generator().manual_seed(seed)
    layers: dict[str, LoRALayer] = {}
    for module in modules:
        shape = shapes[module]
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        down = 0.1 * torch.randn(rank, fan_in, generator=gen)
        up = 0.1 * torch.randn(shape[0], rank, generator=gen)
        layers[module] = LoRALayer(module, up, down, alpha)
    return layers


def _factors(layer: LoRALayer, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) in the module's own layout: conv down (r, in, kh, kw), up (out, r, 1, 1)."""
    if len(shape) == 4:
        return (
            layer.down.reshape(layer.rank, *shape[1:]).contiguous(),
            layer.up.reshape(shape[0], layer.rank, 1, 1).contiguous(),
        )
    return layer.down.contiguous(), layer.up.contiguous()


# ------------------------------------------------------------------------------ diffusers/PEFT


def save_peft_lora(
    path: str | Path, layers: Mapping[str, LoRALayer], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """Write with diffusers' own ``save_lora_weights`` (alpha in ``lora_adapter_metadata``);
    the SDXL pipeline's when a layer is in ``text_encoder_2``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    path = Path(path)
    per_component: dict[str, dict[str, torch.Tensor]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for module, layer in layers.items():
        component, _, rel = module.partition(".")
        down, up = _factors(layer, shapes[module])
        sd = per_component.setdefault(component, {})
        sd[f"{rel}.lora_A.weight"], sd[f"{rel}.lora_B.weight"] = down, up
        config = meta.setdefault(
            component, {"r": layer.rank, "target_modules": [], "alpha_pattern": {}}
        )
        config["target_modules"].append(rel)
        config["lora_alpha"] = layer.alpha if layer.alpha is not None else layer.rank
    kwargs: dict[str, Any] = {}
    for component in per_component:
        kwargs[f"{component}_lora_layers"] = per_component[component]
        kwargs[f"{component}_lora_adapter_metadata"] = meta[component]
    cls = (
        StableDiffusionXLPipeline if "text_encoder_2" in per_component else StableDiffusionPipeline
    )
    cls.save_lora_weights(save_directory=str(path.parent), weight_name=path.name, **kwargs)


def write_peft_lora(
    path: str | Path,
    pipe: Any,
    modules: Iterable[str],
    rank: int,
    seed: int,
    alpha: float | None = None,
) -> dict[str, LoRALayer]:
    layers = random_concept_layers(pipe, modules, rank, seed, alpha)
    save_peft_lora(path, layers, _shapes(pipe))
    return layers


# ------------------------------------------------------------------------------------- kohya


_DIFFUSERS_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(attentions|resnets)\.(\d+)\.")
_MID_BLOCK = re.compile(r"^mid_block\.(attentions|resnets)\.(\d+)\.")


def sgm_name(rel: str, layers_per_block: int) -> str:
    """A diffusers UNet module name in the original (SGM) layout kohya's SDXL LoRAs use:
    ``down_blocks.1.attentions.0.x`` -> ``input_blocks.4.1.x``, ``mid_block.attentions.0.x`` ->
    ``middle_block.1.x``, ``up_blocks.0.attentions.2.x`` -> ``output_blocks.2.1.x``."""
    m = _DIFFUSERS_BLOCK.match(rel)
    if m:
        kind, block, inner, layer = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        inner_id = 1 if inner == "attentions" else 0
        if kind == "down_blocks":
            return f"input_blocks.{block * (layers_per_block + 1) + layer + 1}.{inner_id}.{rel[m.end() :]}"
        return f"output_blocks.{block * (layers_per_block + 1) + layer}.{inner_id}.{rel[m.end() :]}"
    m = _MID_BLOCK.match(rel)
    if m:
        inner, layer = m.group(1), int(m.group(2))
        index = 1 if inner == "attentions" else 2 * layer
        return f"middle_block.{index}.{rel[m.end() :]}"
    return rel


def kohya_key(module: str, sdxl: bool = False, sgm_layers_per_block: int | None = None) -> str:
    """``unet.a.b`` -> ``lora_unet_a_b``; ``text_encoder.encoder.x`` -> ``lora_te_text_model_encoder_x``
    (``lora_te1_``/``lora_te2_`` with ``sdxl``; ``text_projection`` sits outside ``text_model``).
    ``sgm_layers_per_block`` writes UNet names in the SGM layout (kohya's SDXL files)."""
    component, _, rel = module.partition(".")
    if component == "unet" and sgm_layers_per_block is not None:
        rel = sgm_name(rel, sgm_layers_per_block)
    prefixes = {"unet": "lora_unet", "text_encoder": "lora_te1" if sdxl else "lora_te"}
    prefix = prefixes.get(component, "lora_te2")
    if component.startswith("text_encoder") and not rel.startswith(
        ("text_model.", "text_projection")
    ):
        rel = f"text_model.{rel}"
    return f"{prefix}_{rel.replace('.', '_')}"


def kohya_state(
    layers: Mapping[str, LoRALayer],
    shapes: Mapping[str, tuple[int, ...]],
    sdxl: bool = False,
    sgm_layers_per_block: int | None = None,
) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for module, layer in layers.items():
        key = kohya_key(module, sdxl, sgm_layers_per_block)
        down, up = _factors(layer, shapes[module])
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
        alpha = layer.alpha if layer.alpha is not None else float(layer.rank)
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def write_kohya_lora(
    path: str | Path,
    pipe: Any,
    modules: Iterable[str],
    rank: int,
    seed: int,
    alpha: float | None = None,
    metadata: Mapping[str, str] | None = None,
    sdxl: bool = False,
) -> dict[str, LoRALayer]:
    """A kohya sd-scripts style file; ``metadata`` adds ``ss_*`` header fields."""
    layers = random_concept_layers(pipe, modules, rank, seed, alpha)
    meta = {
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha if alpha is not None else rank),
    }
    meta.update(metadata or {})
    save_file(kohya_state(layers, _shapes(pipe), sdxl), str(path), metadata=meta)
    return layers


# ----------------------------------------------------------------------------------- ED-LoRA


def edlora_params(
    layers: Mapping[str, LoRALayer],
    shapes: Mapping[str, tuple[int, ...]],
    embeddings: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "new_concept_embedding": dict(embeddings),
        "text_encoder": {},
        "unet": {},
    }
    for module, layer in layers.items():
        if layer.alpha is not None:
            raise ValueError("ED-LoRA files store no alpha; use alpha=None")
        component, _, rel = module.partition(".")
        if component == "text_encoder":
            rel = f"text_model.{rel}"  # Mix-of-Show was written against transformers 4
        down, up = _factors(layer, shapes[module])
        params[component][f"{rel}.lora_down.weight"] = down
        params[component][f"{rel}.lora_up.weight"] = up
    return params


def write_edlora(
    path: str | Path,
    pipe: Any,
    modules: Iterable[str],
    rank: int,
    seed: int,
    tokens: tuple[str, ...] = ("<x1>",),
    rows: int = 16,
    dim: int | None = None,
) -> tuple[dict[str, LoRALayer], dict[str, torch.Tensor]]:
    """A Mix-of-Show ``.pth``; each token gets ``rows`` layer-wise embeddings (rows, dim)."""
    shapes = _shapes(pipe)
    layers = random_concept_layers(shapes, modules, rank, seed)
    if dim is None:
        dim = ModuleIndex.from_pipe(pipe).embedding_dims["text_encoder"]
    gen = torch.Generator().manual_seed(seed + 1)
    embeddings = {t: torch.randn(rows, dim, generator=gen) for t in tokens}
    torch.save({"params": edlora_params(layers, shapes, embeddings)}, str(path))
    return layers, embeddings


# ------------------------------------------------------------------------- textual inversion


def write_embedding(
    path: str | Path, token: str, rows: torch.Tensor, form: str = "diffusers"
) -> None:
    """``form``: "diffusers" ({token: rows}, safetensors or .bin by suffix) or "a1111" (.pt)."""
    path = Path(path)
    if form == "a1111":
        torch.save({"string_to_param": {"*": rows}, "name": token, "step": 100}, str(path))
    elif path.suffix == ".safetensors":
        save_file({token: rows.contiguous()}, str(path))
    else:
        torch.save({token: rows}, str(path))


def write_json_metadata_lora(
    path: str | Path, state: Mapping[str, torch.Tensor], **metadata: Any
) -> None:
    """Any state dict with JSON-encoded header metadata (for hand-made odd files)."""
    save_file(
        dict(state),
        str(path),
        metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()},
    )
