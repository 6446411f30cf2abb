"""Rendering with ED-LoRA layer-wise tokens: each cross-attention layer reads its own prompt.

Mix-of-Show's sampling (``pipeline_edlora.py``, see `scenecraft.merge.edlora`): a prompt naming a
layer-wise token ``<V>`` is written once per cross-attention layer, layer i's copy naming
``<V>[i]``; the copies are encoded together and layer i attends to copy i's states. Here:

    1. the distinct layer variants (`edlora.variant_of`: layers with equal rows share one) of
       every prompt and negative prompt of the call are encoded in one batch;
    2. the pipeline is called with the variant of layer 0 (SDXL: its pooled state too);
    3. each cross-attention layer gets an `edlora.LayerContextProcessor` holding its variant's
       states, around the layer's own processor — or, for a job with regions, around a
       regional processor (`scenecraft.render.regions`) whose region prompts are that
       variant's: every region's prompt is encoded per layer too.

The processors are installed for one call and the ones found are put back after it. A call
whose prompts name no layer-wise token goes through `regions.regional` untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from scenecraft.merge import edlora
from scenecraft.plan import RenderJob
from scenecraft.render.encode import encode_prompts
from scenecraft.render.regions import (
    Adapters,
    RegionalAttnProcessor,
    confined_adapters,
    cross_attention_names,
    regional,
    regional_state,
)


def job_texts(job: RenderJob) -> list[str | None]:
    """Every text of a job the text encoder reads: prompt, negative, region prompts."""
    texts: list[str | None] = [job.prompt, job.negative_prompt]
    for r in job.regions:
        texts += [r.prompt, r.negative_prompt]
    return texts


def layer_job(job: RenderJob, tokens: dict[str, int], layer: int) -> RenderJob:
    """``job`` with every text as cross-attention layer ``layer`` reads it."""

    def show(text: str) -> str:
        return edlora.layer_prompt(text, tokens, layer)

    regions = tuple(
        r.model_copy(
            update={
                "prompt": show(r.prompt),
                "negative_prompt": show(r.negative_prompt) if r.negative_prompt else None,
            }
        )
        for r in job.regions
    )
    return job.model_copy(
        update={
            "prompt": show(job.prompt),
            "negative_prompt": show(job.negative_prompt),
            "regions": regions,
        }
    )


@torch.no_grad()
def encode_variants(
    pipe: Any, jobs: Sequence[RenderJob], variants: Sequence[int], tokens: dict[str, int]
) -> dict[int, tuple[Any, Any]]:
    """variant -> (prompt `PromptEmbeds`, negative `PromptEmbeds`) of the jobs, (B, T, D) each;
    every variant's prompts in one batch, their negatives in another (an empty negative is the
    pipeline's own "no negative prompt")."""
    B = len(jobs)
    pos = encode_prompts(
        pipe, [edlora.layer_prompt(j.prompt, tokens, v) for v in variants for j in jobs]
    )
    neg = encode_prompts(
        pipe,
        [
            edlora.layer_prompt(j.negative_prompt, tokens, v) if j.negative_prompt else None
            for v in variants
            for j in jobs
        ],
    )

    def part(e: Any, k: int) -> Any:
        pooled = None if e.pooled is None else e.pooled[k * B : (k + 1) * B]
        return type(e)(e.embeds[k * B : (k + 1) * B], pooled)

    return {v: (part(pos, k), part(neg, k)) for k, v in enumerate(variants)}


def _processors(
    unet: Any,
    layers: list[str],
    variant: list[int],
    encoded: dict[int, tuple[Any, Any]],
    states: dict[int, Any],
) -> dict[str, Any]:
    """Processor name -> processor: layer i's own context around its processor (with regions:
    a regional processor over its variant's region prompts). Cross-attention layers Mix-of-Show
    does not number (``attn1`` of blocks built with ``only_cross_attention``) read layer 0's
    copy, as the pipeline's own states are."""
    saved = unet.attn_processors
    replace: dict[str, Any] = {}
    if states:
        replace = {
            n: RegionalAttnProcessor(states[variant[0]]) for n in cross_attention_names(unet)
        }
    for layer, name in enumerate(layers):
        pos, neg = encoded[variant[layer]]
        key = f"{name}.processor"
        inner = RegionalAttnProcessor(states[variant[layer]]) if states else saved[key]
        replace[key] = edlora.LayerContextProcessor(inner, pos.embeds, neg.embeds)
    return replace


@contextmanager
def conditioned(
    pipe: Any, jobs: Sequence[RenderJob], adapters: Adapters | None = None
) -> Iterator[dict[str, Any]]:
    """The conditioning of one pipeline call over ``jobs``: `regions.regional` when no text names
    a layer-wise token, else the layer-wise processors (module docstring). Yields extra
    pipeline arguments (empty: the caller passes its prompts)."""
    tokens = edlora.pipe_layer_tokens(pipe)
    if not edlora.mentions((t for j in jobs for t in job_texts(j)), tokens):
        with regional(pipe, jobs, adapters) as plain:
            yield plain
        return
    layers = edlora.unet_layers(pipe.unet)
    variant = edlora.variant_of(pipe, tokens)[: len(layers)]
    variants = sorted(set(variant))
    with torch.no_grad():
        if adapters is not None and any(j.regions for j in jobs):
            adapters.activate(pipe, None)  # the global prompt: no adapter (as `regional`)
        try:
            encoded = encode_variants(pipe, jobs, variants, tokens)
        finally:
            if adapters is not None and any(j.regions for j in jobs):
                adapters.restore(pipe)
        states = (
            {
                v: regional_state(pipe, [layer_job(j, tokens, v) for j in jobs], adapters)
                for v in variants
            }
            if any(j.regions for j in jobs)
            else {}
        )
    replace = _processors(pipe.unet, layers, variant, encoded, states)
    pos, neg = encoded[variant[0]]
    extra: dict[str, Any] = {"prompt_embeds": pos.embeds, "negative_prompt_embeds": neg.embeds}
    if pos.pooled is not None:
        extra |= {"pooled_prompt_embeds": pos.pooled, "negative_pooled_prompt_embeds": neg.pooled}
    with edlora.installed(pipe.unet, replace):
        if states and adapters is not None:
            with confined_adapters(pipe.unet, states[variants[0]]):
                yield extra
        else:
            yield extra
