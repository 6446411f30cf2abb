"""Regionally controlled sampling: each subject's prompt inside its box, in one UNet pass.

Mix-of-Show's regionally controllable sampling (the inference the LoRACLR reference uses),
written as a diffusers attention processor for the UNet's cross-attention layers (``attn2``):

    o_g = softmax(q k_gᵀ / √d) v_g                 global prompt (setting, interactions, ...)
    o_r = softmax(q k_rᵀ / √d) v_r                 region r's prompt, r = 1..R
    W   = Σ_r m_r                                   m_r: box coverage of each image token
    o   = Σ_r m_r o_r / max(W, 1) + (1 - min(W, 1)) o_g

so a token fully inside one box takes that region's attention, a token outside every box keeps
the global one, overlapping boxes average, and a token on a box edge blends by how much of it
the box covers (the only soft edge: exact area coverage, no blur). The global and region
attentions share one ``scaled_dot_product_attention`` call; self-attention is untouched.

Classifier-free guidance: the pipeline's batch is ``[uncond × B, cond × B]``; region r's
embeddings are ``[negative_r × B, prompt_r × B]`` where negative_r is the region's own negative
prompt, or the job's negative prompt when it has none. Region prompts are encoded once per
pipeline call. ``regional(pipe, tasks)`` installs the processors for one call and puts back
the ones it found (a copy: ``set_attn_processor`` pops from the dict it is given).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from scenecraft.plan import RenderJob

Box = tuple[float, float, float, float]


# ------------------------------------------------------------------------------------ masks


def token_grid(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(h, w) of a UNet level with ``tokens`` image tokens: the latent downsampled by 2^k
    (ceil, as stride-2 convolutions with padding do)."""
    height, width = latent_hw
    for k in range(8):
        h, w = math.ceil(height / 2**k), math.ceil(width / 2**k)
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} tokens match no downsampling of a {height}x{width} latent")


def coverage(box: Box, h: int, w: int) -> torch.Tensor:
    """(h, w): the share of each token cell that ``box`` covers, in [0, 1]."""
    x0, y0, x1, y1 = box

    def axis(lo: float, hi: float, n: int) -> torch.Tensor:
        edges = torch.arange(n + 1, dtype=torch.float64) / n
        inside = torch.minimum(edges[1:], torch.tensor(hi)) - torch.maximum(
            edges[:-1], torch.tensor(lo)
        )
        return (inside.clamp(min=0) * n).float()  # (n,)

    return axis(y0, y1, h)[:, None] * axis(x0, x1, w)[None, :]


def masks_for(boxes: Sequence[Sequence[Box | None]], h: int, w: int) -> torch.Tensor:
    """(B, R, h*w) coverage masks; a missing region (None) is all zero."""
    out = torch.zeros(len(boxes), max((len(b) for b in boxes), default=0), h * w)
    for i, image in enumerate(boxes):
        for r, box in enumerate(image):
            if box is not None:
                out[i, r] = coverage(box, h, w).flatten()
    return out


def regions_text(job: RenderJob) -> str:
    """The regions of a job on one line, for A1111's ``parameters`` (``Regions:`` key):
    ``ziggy [0,0,0.5,1] <ZIGGY> circle, at sea | blip [0.5,0,1,1] ...``."""
    return " | ".join(
        f"{r.subject} [{','.join(f'{v:g}' for v in r.box)}] {r.prompt}"
        + (f" (negative: {r.negative_prompt})" if r.negative_prompt else "")
        for r in job.regions
    )


# -------------------------------------------------------------------------------- the state


@dataclass
class RegionalState:
    """What the processors read during one regional pipeline call."""

    embeds: torch.Tensor  # (R, B, T, D) region prompt embeddings
    negative: torch.Tensor  # (R, B, T, D) region negative embeddings (the uncond half)
    boxes: list[list[Box | None]]  # per image, per region slot (None: padding)
    latent_hw: tuple[int, int]  # latent height, width
    _masks: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict)

    def context(self, batch: int) -> torch.Tensor:
        """(R, batch, T, D): with CFG (batch = 2B) ``[negative; prompt]``, else the prompts."""
        if batch == 2 * self.embeds.shape[1]:
            return torch.cat([self.negative, self.embeds], dim=1)
        return self.embeds

    def masks(self, tokens: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(R, batch, 1, N, 1) masks at a level with ``tokens`` tokens, cached per level."""
        cfg = batch == 2 * len(self.boxes)
        key = (tokens, cfg)
        if key not in self._masks:
            h, w = token_grid(self.latent_hw, tokens)
            m = masks_for(self.boxes, h, w)  # (B, R, N)
            if cfg:
                m = torch.cat([m, m])  # (2B, R, N): uncond and cond halves see the same boxes
            self._masks[key] = m.transpose(0, 1)[:, :, None, :, None]
        return self._masks[key].to(device=like.device, dtype=like.dtype)


# ---------------------------------------------------------------------------- the processor


class RegionalAttnProcessor:
    """Cross-attention with regional prompts (module docstring); SDPA like AttnProcessor2_0."""

    def __init__(self, state: RegionalState) -> None:
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError("the regional processor belongs on cross-attention layers only")
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        regions = self.state.context(batch).to(encoder_hidden_states)  # (R, batch, T, D)
        R = regions.shape[0]
        context = torch.cat([encoder_hidden_states[None], regions])  # (1+R, batch, T, D)
        context = context.flatten(0, 1)  # ((1+R)·batch, T, D)

        query = attn.to_q(hidden_states)  # (batch, N, C)
        key = attn.to_k(context)  # ((1+R)·batch, T, C)
        value = attn.to_v(context)
        heads = attn.heads
        head_dim = key.shape[-1] // heads
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (batch, h, N, d)
        k = key.view((1 + R) * batch, -1, heads, head_dim).transpose(1, 2)  # (.., h, T, d)
        v = value.view((1 + R) * batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q = q.repeat(1 + R, 1, 1, 1)  # ((1+R)·batch, h, N, d)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        o = o.view(1 + R, batch, heads, tokens, head_dim)  # [global, region 1..R]

        m = self.state.masks(tokens, batch, o)  # (R, batch, 1, N, 1)
        cover = m.sum(0)  # (batch, 1, N, 1)
        mixed = (m * o[1:]).sum(0) / cover.clamp(min=1) + (1 - cover.clamp(max=1)) * o[0]

        hidden_states = mixed.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# ------------------------------------------------------------------------- installing them


def cross_attention_names(unet: Any) -> list[str]:
    """Processor names of the UNet's cross-attention layers (``...attn2.processor``)."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


@contextmanager
def installed(unet: Any, state: RegionalState) -> Iterator[None]:
    """Regional processors on every cross-attention layer for the ``with`` body; the
    processors found before are put back afterwards, also on error."""
    saved = dict(unet.attn_processors)
    processor = RegionalAttnProcessor(state)
    unet.set_attn_processor(
        {name: processor if name in cross_attention_names(unet) else p for name, p in saved.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))


def encode(pipe: Any, prompts: list[str], negatives: list[str]) -> tuple[torch.Tensor, ...]:
    """(prompt embeds, negative embeds), each (n, T, D), with the pipeline's own encoder."""
    pos, neg = pipe.encode_prompt(
        prompts, pipe._execution_device, 1, True, negative_prompt=negatives
    )
    return pos, neg


def regional_state(pipe: Any, jobs: Sequence[RenderJob]) -> RegionalState:
    """Encode every region prompt of a batch once; pad images with fewer regions."""
    R = max(len(j.regions) for j in jobs)
    prompts: list[str] = []
    negatives: list[str] = []
    boxes: list[list[Box | None]] = []
    for job in jobs:
        slots = list(job.regions) + [None] * (R - len(job.regions))
        for region in slots:
            prompts.append(region.prompt if region else job.prompt)
            negative = region.negative_prompt if region else None
            negatives.append(job.negative_prompt if negative is None else negative)
        boxes.append([r.box if r else None for r in slots])
    pos, neg = encode(pipe, prompts, negatives)  # (B·R, T, D), image-major
    B = len(jobs)
    scale = pipe.vae_scale_factor
    return RegionalState(
        embeds=pos.view(B, R, *pos.shape[1:]).transpose(0, 1).contiguous(),
        negative=neg.view(B, R, *neg.shape[1:]).transpose(0, 1).contiguous(),
        boxes=boxes,
        latent_hw=(jobs[0].height // scale, jobs[0].width // scale),
    )


@contextmanager
def regional(pipe: Any, jobs: Sequence[RenderJob]) -> Iterator[None]:
    """Regional sampling for one pipeline call over ``jobs`` (a no-op when none has regions)."""
    if not any(j.regions for j in jobs):
        yield
        return
    with torch.no_grad():
        state = regional_state(pipe, jobs)
    with installed(pipe.unet, state):
        yield
