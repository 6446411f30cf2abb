"""Prompt encoding for samplers that build their own conditioning (regional sampling).

    enc = encode_prompts(pipe, ["a castle", "<ZIGGY> man"])    # SD 1.x/2.x or SDXL pipeline
    enc.embeds   # (n, 77, dim): 768 (SD 1.x), 1024 (SD 2.x), 2048 (SDXL: 768 + 1280)
    enc.pooled   # (n, 1280) for SDXL (text_encoder_2's projected EOS state), None otherwise

The pipeline's own ``encode_prompt`` does the work, so the result is exactly what
``pipe(prompt=...)`` conditions on: textual-inversion tokens expanded (``tok tok_1 …``) in each
tokenizer, padding to the tokenizer's 77 positions, SDXL's penultimate hidden states of both
encoders concatenated position by position, no classifier-free-guidance half.

``None`` in ``prompts`` means "no prompt", as a missing negative prompt: SDXL pipelines whose
config says ``force_zeros_for_empty_prompt`` (the SDXL base does) condition on zeros there — what
``pipe(negative_prompt=None)`` does — every other pipeline encodes the empty string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PromptEmbeds:
    embeds: torch.Tensor  # (n, T, dim) on the pipeline's execution device
    pooled: torch.Tensor | None  # (n, pooled dim) for SDXL, None for SD 1.x / 2.x

    def __len__(self) -> int:
        return int(self.embeds.shape[0])


def is_sdxl_pipeline(pipe: Any) -> bool:
    """True for pipelines with two text encoders whose states are concatenated (SDXL)."""
    return getattr(pipe, "text_encoder_2", None) is not None and hasattr(pipe, "tokenizer_2")


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: Sequence[str | None]) -> PromptEmbeds:
    """Encode ``prompts`` the way ``pipe`` does for its positive prompt (module docstring)."""
    if not prompts:
        raise ValueError("encode_prompts needs at least one prompt")
    device = pipe._execution_device
    texts = [p if p is not None else "" for p in prompts]
    if not is_sdxl_pipeline(pipe):
        embeds, _ = pipe.encode_prompt(
            texts, device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return PromptEmbeds(embeds, None)
    embeds, _, pooled, _ = pipe.encode_prompt(
        texts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        none = torch.tensor([p is None for p in prompts], device=embeds.device)
        embeds = torch.where(none[:, None, None], torch.zeros_like(embeds), embeds)
        pooled = torch.where(none[:, None], torch.zeros_like(pooled), pooled)
    return PromptEmbeds(embeds, pooled)
