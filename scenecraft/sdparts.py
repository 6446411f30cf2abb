"""Stable Diffusion pipelines from their parts: a CLIP vocabulary built from words, SD's DDIM
schedule, and a pipeline assembled without a safety checker.

Runtime code: the embedded toy world loads its shipped model through these, and the tests'
tiny random models (scenecraft.testing) are built from them too.
"""

from __future__ import annotations

from typing import Any

# GPT-2's byte <-> unicode map, as CLIP's tokenizer uses it.


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def tiny_vocab(words: tuple[str, ...] = ()) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A minimal CLIP vocab: 256 byte chars, the same with ``</w>``, merges building ``words``."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    for word in words:
        # merge left to right: w o r d</w> -> wo r d</w> -> wor d</w> -> word</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in seen:
                seen.add(merged)
                tokens.append(merged)
            pieces = [merged] + pieces[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def sd_scheduler(**overrides: Any) -> Any:
    """Stable Diffusion's DDIM schedule (scaled-linear betas 0.00085..0.012), with overrides."""
    from diffusers import DDIMScheduler

    config: dict[str, Any] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    return DDIMScheduler(**{**config, **overrides})


def assemble_pipeline(components: dict[str, Any]) -> Any:
    """A StableDiffusionPipeline from its parts, no safety checker, progress bars off."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cross_attention_modules(unet: Any) -> list[str]:
    """Names of the UNet's attention modules that attend to the prompt: ``attn2`` in every SD
    block, and ``attn1`` too in blocks built with ``only_cross_attention`` (the toy world's
    16x16 blocks). diffusers marks them: ``Attention.is_cross_attention``."""
    return [
        name
        for name, module in unet.named_modules()
        if getattr(module, "is_cross_attention", False) and hasattr(module, "to_k")
    ]


def cross_attention_kv(unet: Any, prefix: str = "") -> set[str]:
    """Paths of the projections that read prompt tokens (each cross-attention's to_k / to_v)."""
    return {f"{prefix}{m}.{p}" for m in cross_attention_modules(unet) for p in ("to_k", "to_v")}
