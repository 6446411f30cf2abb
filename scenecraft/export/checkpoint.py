"""The merged model as one single-file checkpoint with original (LDM) key names, and as a
diffusers folder.

The single file is what A1111/Forge and ComfyUI load as a checkpoint and what diffusers'
``from_single_file`` reads: ``model.diffusion_model.*`` (the UNet in the original
``input_blocks``/``middle_block``/``output_blocks`` layout), ``first_stage_model.*`` (the VAE)
and ``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L). The key maps below are the
inverse of diffusers' own converters (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``); tests/test_export.py checks that converting back gives every
weight exactly. SD 1.x/2.x layouts with a CLIP text encoder only: SDXL's OpenCLIP encoder packs
q/k/v differently (`export-checkpoint-family`; use ``--diffusers`` or ``--lora`` there).

The merge is fused as W0 + ΔW* from the cache entry; tokens the merge adds cannot live in a
single file (its tokenizer is the base's), so they are written as embedding files beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from scenecraft.diagnostics import error

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_DIRECT = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_DIRECT = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_BLOCK = re.compile(
    r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$"
)
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _rename_first(rest: str, table: Mapping[str, str]) -> str:
    """Rename the leading module name of ``rest`` (``norm1.weight`` -> ``in_layers.0.weight``)."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _unmapped(component: str, key: str) -> Exception:
    return error(
        "export-checkpoint-layout",
        f"cannot name `{component}.{key}` in the original single-file layout",
        help="export a diffusers folder with `--diffusers DIR` instead",
    )


def unet_key(key: str, config: Any) -> str:
    """A diffusers UNet2DConditionModel key -> its LDM name (without ``model.diffusion_model.``)."""
    stem, _, param = key.rpartition(".")
    if stem in _UNET_DIRECT:
        return f"{_UNET_DIRECT[stem]}.{param}"
    per = _layers_per_block(config) + 1  # LDM input/output blocks per diffusers block
    m = _BLOCK.match(key)
    if m:
        kind, b, part, j, rest = (
            m.group(1),
            int(m.group(2)),
            m.group(3),
            int(m.group(4)),
            m.group(5),
        )
        if kind == "down_blocks":
            if part == "downsamplers":
                return f"input_blocks.{(b + 1) * per}.0.op.{rest.removeprefix('conv.')}"
            inner = 0 if part == "resnets" else 1
            rest = _rename_first(rest, _RESNET) if part == "resnets" else rest
            return f"input_blocks.{b * per + j + 1}.{inner}.{rest}"
        if part == "upsamplers":
            has_attention = "CrossAttn" in config.up_block_types[b]
            return f"output_blocks.{b * per + per - 1}.{2 if has_attention else 1}.{rest}"
        inner = 0 if part == "resnets" else 1
        rest = _rename_first(rest, _RESNET) if part == "resnets" else rest
        return f"output_blocks.{b * per + j}.{inner}.{rest}"
    m = _MID.match(key)
    if m:
        part, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if part == "resnets":
            return f"middle_block.{2 * j}.{_rename_first(rest, _RESNET)}"
        return f"middle_block.1.{rest}"
    raise _unmapped("unet", key)


def _layers_per_block(config: Any) -> int:
    lpb = config.layers_per_block
    if not isinstance(lpb, int):
        raise error(
            "export-checkpoint-layout",
            "the UNet has a different number of layers per block, which the original layout "
            "cannot name",
            help="export a diffusers folder with `--diffusers DIR` instead",
        )
    return lpb


def vae_key(key: str, config: Any) -> str:
    """A diffusers AutoencoderKL key -> its LDM name (without ``first_stage_model.``)."""
    blocks = len(config.block_out_channels)
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    rest = _rename_first(rest, _VAE_DIRECT)
    m = _BLOCK.match(rest)
    if m:
        kind, i, part, j, tail = (
            m.group(1),
            int(m.group(2)),
            m.group(3),
            int(m.group(4)),
            m.group(5),
        )
        level = i if kind == "down_blocks" else blocks - 1 - i
        base = f"{'down' if kind == 'down_blocks' else 'up'}.{level}"
        if part == "resnets":
            return (
                f"{side}.{base}.block.{j}.{_rename_first(tail, {'conv_shortcut': 'nin_shortcut'})}"
            )
        sample = "downsample" if part == "downsamplers" else "upsample"
        return f"{side}.{base}.{sample}.{tail}"
    m = _MID.match(rest)
    if m:
        part, j, tail = m.group(1), int(m.group(2)), m.group(3)
        if part == "resnets":
            return (
                f"{side}.mid.block_{j + 1}.{_rename_first(tail, {'conv_shortcut': 'nin_shortcut'})}"
            )
        return f"{side}.mid.attn_1.{_rename_first(tail, _VAE_ATTENTION)}"
    return f"{side}.{rest}"


def clip_key(key: str) -> str:
    """A transformers CLIPTextModel key -> its LDM name (without the prefix): always under
    ``text_model.`` (transformers 5 dropped that wrapper from the module names)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _convert(
    state: Mapping[str, torch.Tensor], rename: Callable[[str], str], prefix: str
) -> dict[str, torch.Tensor]:
    return {prefix + rename(k): v for k, v in state.items()}


def _vae_tensor(ldm: str, value: torch.Tensor) -> torch.Tensor:
    """The LDM VAE's attention projections are 1×1 convs: (c, c) -> (c, c, 1, 1)."""
    if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.dim() == 2:
        return value[:, :, None, None]
    return value


def fused_state(
    module: torch.nn.Module, component: str, deltas: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``module``'s state dict with W0 + ΔW* for every module of ``component`` the merge
    changed (the pipeline itself is not modified)."""
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    for path, delta in deltas.items():
        comp, _, rel = path.partition(".")
        if comp != component:
            continue
        key = f"{rel}.weight"
        if key not in state:
            key = f"{rel}.base_layer.weight"
        w = state[key]
        state[key] = (w.float() + delta.float().reshape(w.shape)).to(w.dtype)
    return state


def ldm_checkpoint(
    pipe: Any,
    deltas: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float16,
    vocab: int | None = None,
) -> dict[str, torch.Tensor]:
    """The fused pipeline as one LDM-named state dict (SD 1.x/2.x with a CLIP text encoder).

    ``vocab``: the base tokenizer's size; rows past it (tokens the merge engine added to this
    process's pipeline) are dropped, as the file's tokenizer is the base's."""
    if getattr(pipe, "transformer", None) is not None:
        raise error(
            "export-checkpoint-family",
            "`--checkpoint` writes SD 1.x/2.x single files; this base is FLUX (a transformer)",
            notes=(
                "a FLUX single file (Black Forest Labs' names) is not written yet: diffusers' "
                "`from_single_file` converter assumes FLUX.1's full widths, so it could not be "
                "checked on a small model",
            ),
            help="use `--lora` (load it on the FLUX base: LoraLoaderModelOnly in ComfyUI) or "
            "`--diffusers DIR` for a fused FLUX pipeline folder",
        )
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "unet", None) is None:
        raise error(
            "export-checkpoint-family",
            "`--checkpoint` writes SD 1.x/2.x single files; this base is SDXL (or has no UNet)",
            help="use `--diffusers DIR` for a fused SDXL pipeline, or `--lora` with the base",
        )
    unet, vae = pipe.unet, pipe.vae
    out: dict[str, torch.Tensor] = {}
    out.update(
        _convert(fused_state(unet, "unet", deltas), lambda k: unet_key(k, unet.config), UNET_PREFIX)
    )
    for k, v in _convert(vae.state_dict(), lambda k: vae_key(k, vae.config), VAE_PREFIX).items():
        out[k] = _vae_tensor(k, v.detach().cpu())
    text = fused_state(pipe.text_encoder, "text_encoder", deltas)
    if vocab is not None:
        for key in [k for k in text if k.endswith("token_embedding.weight")]:
            text[key] = text[key][:vocab]
    out.update(_convert(text, clip_key, CLIP_PREFIX))
    return {k: v.to(dtype).contiguous() if v.is_floating_point() else v for k, v in out.items()}
