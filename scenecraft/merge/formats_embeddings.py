"""Textual-inversion embeddings bound to a concept's token.

Forms read (the same ones diffusers' ``load_textual_inversion`` accepts, plus SDXL's pair):
- diffusers ``learned_embeds.bin`` / ``.safetensors``: ``{token: tensor (n, dim) or (dim,)}``;
- A1111 ``.pt``: ``{"string_to_param": {"*": tensor}, "name": ...}``, or ``{"emb_params": tensor}``
  in safetensors;
- SDXL: ``{"clip_l": tensor, "clip_g": tensor}`` for text_encoder / text_encoder_2.

The rows become ``embeddings[component][token]`` of a `ConceptLoRA` (shape (n, dim), fp32); an
n-vector embedding is later added as tokens ``tok, tok_1, … tok_{n-1}`` (diffusers' convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from scenecraft.diagnostics import error
from scenecraft.merge.formats_index import ModuleIndex

_SDXL_KEYS: dict[str, str] = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}


def is_embedding_dict(state: Mapping[str, Any]) -> bool:
    """True for every textual-inversion form listed in the module docstring."""
    if "string_to_param" in state or set(state) == {"emb_params"}:
        return True
    if state and set(state) <= set(_SDXL_KEYS):
        return True
    if len(state) == 1:
        (value,) = state.values()
        return isinstance(value, torch.Tensor) and value.dim() in (1, 2)
    return False


def _vectors(state: Mapping[str, Any]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(token named in the file or None, component -> (n, dim) rows)."""
    if "string_to_param" in state:
        params = state["string_to_param"]
        name = state.get("name")
        return (name if isinstance(name, str) else None), {"text_encoder": params["*"]}
    if "emb_params" in state:
        return None, {"text_encoder": state["emb_params"]}
    if set(state) <= set(_SDXL_KEYS):
        return None, {_SDXL_KEYS[k]: v for k, v in state.items()}
    ((token, value),) = state.items()
    return token, {"text_encoder": value}


def _bind_token(file_token: str | None, tokens: tuple[str, ...], concept: str, source: str) -> str:
    """The token the embedding is bound to: the concept's single token, else the file's."""
    if len(tokens) == 1:
        return tokens[0]
    if file_token is not None and (not tokens or file_token in tokens):
        return file_token
    raise error(
        "embedding-token-ambiguous",
        f"concept `{concept}`: cannot tell which token the embedding in `{source}` belongs to",
        notes=(f"the concept has tokens {', '.join(f'`{t}`' for t in tokens) or 'none'}",),
        help="give the concept exactly one token for an embedding file",
    )


def embeddings_from_state(
    state: Mapping[str, Any],
    *,
    tokens: tuple[str, ...],
    index: ModuleIndex,
    concept: str,
    source: str,
) -> dict[str, dict[str, torch.Tensor]]:
    """Bind a textual-inversion state dict to a concept token and check its width."""
    file_token, vectors = _vectors(state)
    token = _bind_token(file_token, tokens, concept, source)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for component, value in vectors.items():
        if not isinstance(value, torch.Tensor):
            raise error(
                "embedding-unreadable",
                f"concept `{concept}`: `{source}` is not a textual-inversion embedding",
                help="pass a diffusers `learned_embeds` file or an A1111 embedding",
            )
        rows = value.detach().float().reshape(-1, value.shape[-1])  # (n, dim)
        dim = index.embedding_dims.get(component)
        if dim != rows.shape[1]:
            have = f"{dim}-wide" if dim is not None else "no"
            raise error(
                "embedding-shape-mismatch",
                f"concept `{concept}`: the embedding in `{source}` is {rows.shape[1]}-wide but "
                f"the base model has {have} `{component}` token embeddings",
                help="use an embedding trained for this base model",
            )
        if not torch.isfinite(rows).all():
            raise error(
                "lora-non-finite",
                f"concept `{concept}`: the embedding in `{source}` holds NaN or infinite values",
                help="the embedding was saved from a diverged training run; use an earlier one",
            )
        out[component] = {token: rows}
    _check_pair(out, token, index, concept=concept, source=source)
    return out


def _check_pair(
    out: dict[str, dict[str, torch.Tensor]],
    token: str,
    index: ModuleIndex,
    *,
    concept: str,
    source: str,
) -> None:
    """A base with two text encoders (SDXL) needs rows for both, the same number in each: the
    token must read as the same sequence in both tokenizers, or the two encoders' states,
    concatenated position by position, would not line up."""
    encoders = sorted(c for c in index.embedding_dims if c in _SDXL_KEYS.values())
    if len(encoders) < 2:
        return
    if sorted(out) != encoders:
        have = ", ".join(f"`{c}`" for c in sorted(out))
        raise error(
            "embedding-shape-mismatch",
            f"concept `{concept}`: the embedding in `{source}` has rows for {have} only, but "
            "the base model has two text encoders (SDXL)",
            notes=("SDXL embeddings hold `clip_l` (text_encoder) and `clip_g` (text_encoder_2)",),
            help="use an SDXL embedding with both `clip_l` and `clip_g`",
        )
    counts = {c: int(rows[token].shape[0]) for c, rows in out.items()}
    if len(set(counts.values())) > 1:
        raise error(
            "embedding-shape-mismatch",
            f"concept `{concept}`: the embedding in `{source}` has "
            + " and ".join(f"{n} vector(s) for `{c}`" for c, n in sorted(counts.items())),
            help="use an embedding with as many `clip_l` as `clip_g` vectors",
        )
