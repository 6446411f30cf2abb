"""Regionally controlled sampling: each subject's prompt inside its box, in one UNet pass.

Mix-of-Show's regionally controllable sampling (the inference the LoRACLR reference uses),
written as a diffusers attention processor for the UNet's cross-attention layers (``attn2``):

    o_g = softmax(q k_gᵀ / √d) v_g                 global prompt (setting, interactions, ...)
    o_r = softmax(q k_rᵀ / √d) v_r                 region r's prompt, r = 1..R
    W   = Σ_r m_r                                   m_r: box coverage of each image token
    o   = Σ_r m_r o_r / max(W, 1) + (1 - min(W, 1)) o_g

so a token fully inside one box takes that region's attention, a token outside every box keeps
the global one, overlapping boxes average, and a token on a box edge blends by how much of it
the box covers (the only soft edge: exact area coverage, no blur). Each attention is computed
only for the image tokens whose weight in the sum is not zero (gathered per level, scattered
back), so side-by-side regions that tile the canvas cost one attention over it, not 1 + R.
Self-attention is untouched.

Classifier-free guidance: the pipeline's batch is ``[uncond × B, cond × B]``; region r's
embeddings are ``[negative_r × B, prompt_r × B]`` where negative_r is the region's own negative
prompt, or the job's negative prompt when it has none. Region prompts are encoded once per
pipeline call (``render/encode.py``: the pipeline's own encoding, SD 1.x/2.x and SDXL).
``regional(pipe, tasks)`` installs the processors for one call and puts back
the ones it found (a copy: ``set_attn_processor`` pops from the dict it is given).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from scenecraft.plan import RenderJob
from scenecraft.render.encode import encode_prompts
from scenecraft.render.masks import Box, masks_for, token_grid
from scenecraft.sdparts import cross_attention_kv, cross_attention_modules


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
    adapters: list[list[str | None]] | None = None  # confined adapters: one per region slot
    kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _masks: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict)
    _plans: dict[tuple[int, int, Any, Any], list[Gather | None]] = field(default_factory=dict)
    _adapter_masks: dict[tuple[int, int, bool], dict[str, torch.Tensor]] = field(
        default_factory=dict
    )

    @classmethod
    def image_major(
        cls,
        pos: torch.Tensor,
        neg: torch.Tensor,
        boxes: list[list[Box | None]],
        latent_hw: tuple[int, int],
        adapters: list[list[str | None]] | None = None,
    ) -> RegionalState:
        """From region encodings in image-major order, (B·R, T, D) each: image 0's R slots,
        then image 1's, ... (R = the slots per image in ``boxes``)."""
        B, R = len(boxes), len(boxes[0])
        return cls(
            embeds=pos.view(B, R, *pos.shape[1:]).transpose(0, 1).contiguous(),
            negative=neg.view(B, R, *neg.shape[1:]).transpose(0, 1).contiguous(),
            boxes=boxes,
            latent_hw=latent_hw,
            adapters=adapters,
        )

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

    def mixing(self, tokens: int, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(m, 1/max(W, 1), 1 - min(W, 1)) at one level: W = Σ_r m_r (`plan` caches what it
        derives from them)."""
        m = self.masks(tokens, batch, like)  # (R, batch, 1, N, 1)
        cover = m.sum(0)
        return m, 1 / cover.clamp(min=1), 1 - cover.clamp(max=1)

    def plan(self, tokens: int, batch: int, like: torch.Tensor) -> list[Gather | None]:
        """[global, region 1..R]: which image tokens each attention is needed for, and their
        weights in the mix (`mixing`); None where no token needs it. Cached per level."""
        key = (tokens, batch, like.dtype, like.device)
        if key not in self._plans:
            m, inv, rest = self.mixing(tokens, batch, like)
            weights = [rest, *(m_r * inv for m_r in m)]  # each (batch, 1, N, 1)
            self._plans[key] = [Gather.of(w[:, 0, :, 0]) for w in weights]
        return self._plans[key]

    def adapter_masks(self, hw: tuple[int, int], batch: int) -> dict[str, torch.Tensor]:
        """adapter -> (batch, h·w) coverage of the union of its regions, for confined adapters."""
        cfg = batch == 2 * len(self.boxes)
        key = (*hw, cfg)
        if key not in self._adapter_masks:
            assert self.adapters is not None
            m = masks_for(self.boxes, *hw)  # (B, R, N)
            out: dict[str, torch.Tensor] = {}
            for name in {a for image in self.adapters for a in image if a is not None}:
                pick = torch.tensor(
                    [[a == name for a in image] for image in self.adapters], dtype=m.dtype
                )  # (B, R)
                union = (m * pick[:, :, None]).sum(1).clamp(max=1)  # (B, N)
                out[name] = torch.cat([union, union]) if cfg else union
            self._adapter_masks[key] = out
        return self._adapter_masks[key]


@dataclass(frozen=True)
class Gather:
    """The image tokens one attention is computed for, per image, and their mixing weights."""

    index: torch.Tensor | None  # (batch, n) token indices, weighted ones first; None: all N
    weight: torch.Tensor  # (batch, 1, n, 1) weights (0 on the padding of shorter rows)

    @staticmethod
    def of(weight: torch.Tensor) -> Gather | None:
        """From (batch, N) weights: None when every weight is 0."""
        needed = weight > 0
        n = int(needed.sum(1).max())
        if n == 0:
            return None
        if n == weight.shape[1]:
            return Gather(None, weight[:, None, :, None])
        index = torch.argsort((~needed).to(torch.int8), dim=1, stable=True)[:, :n]  # (batch, n)
        return Gather(index, weight.gather(1, index)[:, None, :, None])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(batch, h, N, d) queries -> weight · attention at this gather's tokens, (batch, h, n,
        d)."""
        if self.index is not None:
            q = q.gather(2, self.expand(q))
        return F.scaled_dot_product_attention(q, k, v) * self.weight

    def expand(self, q: torch.Tensor) -> torch.Tensor:
        assert self.index is not None
        return self.index[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3])


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
        """diffusers' ``AttnProcessor2_0`` step by step, with the regional sum in the middle:
        one function, so that it reads line by line against diffusers' own."""
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

        query = attn.to_q(hidden_states)  # (batch, N, C)
        key = attn.to_k(encoder_hidden_states)  # (batch, T, C)
        value = attn.to_v(encoder_hidden_states)
        k_r, v_r = self.region_kv(attn, batch, encoder_hidden_states)  # (R, batch, T, C) each
        heads = attn.heads
        head_dim = key.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:  # (..., L, C) -> (..., h, L, d)
            return x.unflatten(-1, (heads, head_dim)).transpose(-3, -2)

        q = split(query)  # (batch, h, N, d): the same queries for every prompt
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        keys = [split(key), *split(k_r)]  # [global, region 1..R], each (batch, h, T, d)
        values = [split(value), *split(v_r)]
        if attn.norm_k is not None:
            keys = [attn.norm_k(k) for k in keys]
        mixed = torch.zeros_like(q)  # Σ weight · attention, token by token
        for part, k, v in zip(self.state.plan(tokens, batch, q), keys, values, strict=True):
            if part is None:
                continue
            o = part.attend(q, k, v)
            if part.index is None:
                mixed = mixed + o
            else:
                mixed = mixed.scatter_add(2, part.expand(q), o)

        hidden_states = mixed.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def region_kv(
        self, attn: Any, batch: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of every region prompt at this layer, (R, batch, T, C) each:
        computed once per layer and call (the prompts do not change between steps)."""
        key = (id(attn), batch)
        if key not in self.state.kv:
            regions = self.state.context(batch).to(like)  # (R, batch, T, D)
            if attn.norm_cross:
                regions = attn.norm_encoder_hidden_states(regions.flatten(0, 1)).view_as(regions)
            k, v = attn.to_k(regions), attn.to_v(regions)
            if self.state.adapters is not None:  # region r's keys and values: its adapter only
                R = regions.shape[0]
                context = torch.cat([regions[:1], regions]).flatten(0, 1)  # (row 0: unused)
                k = k + self.confined_text_delta(attn.to_k, context, batch, R)[batch:].view_as(k)
                v = v + self.confined_text_delta(attn.to_v, context, batch, R)[batch:].view_as(v)
            self.state.kv[key] = (k, v)
        return self.state.kv[key]

    def confined_text_delta(
        self, layer: Any, context: torch.Tensor, batch: int, R: int
    ) -> torch.Tensor:
        """((1+R)·batch, T, C): each region row's own adapter's LoRA output, zero elsewhere."""
        assert self.state.adapters is not None
        names = lora_names(layer)
        delta = torch.zeros(
            (*context.shape[:2], getattr(layer, "base_layer", layer).out_features),
            dtype=context.dtype,
            device=context.device,
        )
        if not names:
            return delta
        images = len(self.state.boxes)
        for r in range(R):
            for row in range(batch):
                name = self.state.adapters[row % images][r]
                if name in names:
                    i = (1 + r) * batch + row
                    delta[i] = lora_delta(layer, name, context[i])
        return delta


# ------------------------------------------------------------------ region-confined adapters


def lora_names(layer: Any) -> set[str]:
    """Adapter names a PEFT LoRA layer holds (none for a plain layer)."""
    return set(getattr(layer, "lora_A", {}) or {})


def lora_delta(layer: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    """One adapter's LoRA output of a PEFT layer: s · B(A(x)) (what PEFT adds to the base)."""
    a, b = layer.lora_A[name], layer.lora_B[name]
    return b(a(layer.lora_dropout[name](x.to(a.weight.dtype)))) * layer.scaling[name]


def _spatial_hook(state: RegionalState, name_set: set[str]) -> Any:
    """A forward hook adding each adapter's LoRA output inside its regions only."""

    def hook(layer: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if x.ndim == 4:  # (B, C, H, W): a convolution
            hw = (x.shape[2], x.shape[3])
            for name, m in state.adapter_masks(hw, x.shape[0]).items():
                if name in name_set:
                    mask = m.view(x.shape[0], 1, *hw).to(output)
                    output = output + mask * lora_delta(layer, name, x)
            return output
        tokens = x.shape[1]  # (B, N, C): image tokens of a transformer block
        hw = token_grid(state.latent_hw, tokens)
        for name, m in state.adapter_masks(hw, x.shape[0]).items():
            if name in name_set:
                output = output + m[:, :, None].to(output) * lora_delta(layer, name, x)
        return output

    return hook


@contextmanager
def confined_adapters(unet: Any, state: RegionalState) -> Iterator[None]:
    """The UNet's own LoRA forward off; each adapter's output added inside its regions only
    (image-side layers by hooks, text-side K/V by the regional processor)."""
    hooks = []
    text_side = cross_attention_kv(unet)  # inputs are prompt tokens: confined per region row
    for name, module in unet.named_modules():
        names = lora_names(module)
        if names and name not in text_side:
            hooks.append(module.register_forward_hook(_spatial_hook(state, names)))
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------------- installing them


def cross_attention_names(unet: Any) -> list[str]:
    """Processor names of the UNet's cross-attention layers (``...attn2.processor``, and
    ``attn1`` where a block attends only to the prompt)."""
    return [f"{name}.processor" for name in cross_attention_modules(unet)]


@contextmanager
def installed(unet: Any, state: RegionalState) -> Iterator[None]:
    """Regional processors on every cross-attention layer for the ``with`` body; the
    processors found before are put back afterwards, also on error."""
    saved = dict(unet.attn_processors)
    processor = RegionalAttnProcessor(state)
    cross = set(cross_attention_names(unet))  # one walk of the UNet, not one per layer
    unet.set_attn_processor({name: processor if name in cross else p for name, p in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))


def encode(pipe: Any, prompts: list[str], negatives: list[str | None]) -> tuple[torch.Tensor, ...]:
    """(prompt embeds, negative embeds), each (n, T, D), as the pipeline conditions on them;
    a None negative is the pipeline's own "no negative prompt" (zeros on SDXL)."""
    return encode_prompts(pipe, prompts).embeds, encode_prompts(pipe, negatives).embeds


def pipeline_embeds(pipe: Any, prompts: list[str], negative: str) -> dict[str, Any]:
    """The call arguments that replace ``prompt=`` / ``negative_prompt=`` (SDXL: pooled too)."""
    pos = encode_prompts(pipe, prompts)
    neg = encode_prompts(pipe, [negative or None] * len(prompts))
    out: dict[str, Any] = {"prompt_embeds": pos.embeds, "negative_prompt_embeds": neg.embeds}
    if pos.pooled is not None:
        out |= {"pooled_prompt_embeds": pos.pooled, "negative_pooled_prompt_embeds": neg.pooled}
    return out


@dataclass(frozen=True)
class Adapters:
    """Runtime adapters to confine to their regions: subject -> (adapter name, weight w_c)."""

    of: dict[str, tuple[str, float]]

    def activate(self, pipe: Any, name: str | None) -> None:
        """Only adapter ``name`` active (in the text encoder too); None: no adapter at all."""
        if name is None:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        weight = next(w for n, w in self.of.values() if n == name)
        pipe.set_adapters([name], adapter_weights=[weight])

    def restore(self, pipe: Any) -> None:
        """Every adapter active with its weight again (what ``load_adapters`` left)."""
        pipe.enable_lora()
        names = list(dict.fromkeys(n for n, _ in self.of.values()))
        weights = [next(w for n2, w in self.of.values() if n2 == n) for n in names]
        pipe.set_adapters(names, adapter_weights=weights)


def regional_state(
    pipe: Any, jobs: Sequence[RenderJob], adapters: Adapters | None = None
) -> RegionalState:
    """Encode every region prompt of a batch once; pad images with fewer regions. With
    ``adapters``, each region's prompt is encoded with only its subject's adapter active."""
    R = max(len(j.regions) for j in jobs)
    prompts: list[str] = []
    negatives: list[str | None] = []
    owners: list[str | None] = []
    boxes: list[list[Box | None]] = []
    for job in jobs:
        slots = list(job.regions) + [None] * (R - len(job.regions))
        for region in slots:
            prompts.append(region.prompt if region else job.prompt)
            negative = region.negative_prompt if region else None
            negatives.append((job.negative_prompt or None) if negative is None else negative)
            owner = adapters.of.get(region.subject) if adapters and region else None
            owners.append(owner[0] if owner else None)
        boxes.append([r.box if r else None for r in slots])
    if adapters is None:
        pos, neg = encode(pipe, prompts, negatives)  # (B·R, T, D), image-major
    else:
        pos, neg = _encode_per_adapter(pipe, prompts, negatives, owners, adapters)
    scale = pipe.vae_scale_factor
    return RegionalState.image_major(
        pos,
        neg,
        boxes,
        (jobs[0].height // scale, jobs[0].width // scale),
        [owners[i * R : (i + 1) * R] for i in range(len(jobs))] if adapters else None,
    )


def _encode_per_adapter(
    pipe: Any,
    prompts: list[str],
    negatives: list[str | None],
    owners: list[str | None],
    adapters: Adapters,
) -> tuple[torch.Tensor, torch.Tensor]:
    pos: list[torch.Tensor | None] = [None] * len(prompts)
    neg: list[torch.Tensor | None] = [None] * len(prompts)
    try:
        for owner in dict.fromkeys(owners):
            idx = [i for i, o in enumerate(owners) if o == owner]
            adapters.activate(pipe, owner)
            p, n = encode(pipe, [prompts[i] for i in idx], [negatives[i] for i in idx])
            for k, i in enumerate(idx):
                pos[i], neg[i] = p[k], n[k]
    finally:
        adapters.restore(pipe)
    return torch.stack(pos), torch.stack(neg)  # type: ignore[arg-type]


@contextmanager
def regional(
    pipe: Any, jobs: Sequence[RenderJob], adapters: Adapters | None = None
) -> Iterator[dict[str, Any]]:
    """Regional sampling for one pipeline call over ``jobs`` (a no-op when none has regions).

    Yields extra pipeline arguments: with confined ``adapters`` the global prompt is encoded
    with no adapter active, and each adapter acts only inside its subject's regions.
    """
    if not any(j.regions for j in jobs):
        yield {}
        return
    extra: dict[str, Any] = {}
    with torch.no_grad():
        state = regional_state(pipe, jobs, adapters)
        if adapters is not None:
            adapters.activate(pipe, None)
            try:
                extra = pipeline_embeds(pipe, [j.prompt for j in jobs], jobs[0].negative_prompt)
            finally:
                adapters.restore(pipe)
    if adapters is None:
        with installed(pipe.unet, state):
            yield extra
        return
    with installed(pipe.unet, state), confined_adapters(pipe.unet, state):
        yield extra
