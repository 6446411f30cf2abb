"""Mix-of-Show ED-LoRA files and their layer-wise token embeddings.

Mix-of-Show (Gu et al., NeurIPS 2023; github.com/TencentARC/Mix-of-Show) trains each concept
token ``<V>`` as one embedding PER UNet cross-attention layer (P+ style):

- the file (``trainer_edlora.py`` ``delta_state_dict``) is ``{"params": {"new_concept_embedding":
  {"<V>": (16, dim)}, "text_encoder": {…lora_down/up…}, "unet": {…}}}``; row i of a token is
  cross-attention layer i's embedding (16 = the attn2 layers of SD 1.x);
- layers are numbered by ``revise_edlora_unet_attention_forward`` (``mixofshow/models/edlora.py``):
  a depth-first walk of ``unet.down_blocks``, then ``unet.mid_block``, then ``unet.up_blocks``,
  counting modules named ``attn2`` — NOT ``named_modules()`` order, which registers
  ``up_blocks`` before ``mid_block``;
- at sampling (``pipeline_edlora.py`` ``bind_concept_prompt``) each prompt is written 16 times,
  copy i with ``<V>`` replaced by layer i's token, all copies go through the text encoder, and
  ``EDLoRA_AttnProcessor`` gives layer i the states of copy i (``encoder_hidden_states[:, i]``);
  the negative prompt has no concept token and is the same for every layer.

Here a layer-wise token ``<V>`` becomes the vocabulary words ``<V>[0]`` … ``<V>[L-1]``
(`layer_word`), one row each, and a prompt's layer-i variant (`layer_prompt`) names ``<V>[i]``.
Layers whose rows are equal for every token share one variant (`variant_of`), so a prompt is
encoded once per distinct layer-token set. The merge reads each to_k / to_v layer's inputs from
its own variant (`scenecraft.merge.features.kv_token_states`); rendering installs
`LayerContextProcessor` on each cross-attention layer for one pipeline call
(`scenecraft.render.layerwise`). Files whose rows are all equal load as one plain token, and
files whose row count is not the base's number of layers as a multi-vector embedding
(``tok tok_1 …``) as before. docs/merge.md, "ED-LoRA layer-wise tokens".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from scenecraft.diagnostics import error
from scenecraft.merge.formats_index import ModuleIndex, make_layer
from scenecraft.merge.types import LoRALayer

_DOWN, _UP = ".lora_down.weight", ".lora_up.weight"
_WORD = re.compile(r"^(?P<token>.+)\[(?P<layer>\d+)\]$")
# Mix-of-Show's walk order of the UNet's parts (`revise_edlora_unet_attention_forward`).
_PARTS: tuple[str, ...] = ("down_blocks.", "mid_block.", "up_blocks.")


# ----------------------------------------------------------------------------- layer order


def layer_order(attention_modules: Iterable[str]) -> list[str]:
    """Cross-attention (``attn2``) module names in Mix-of-Show's layer order: down, mid, up, each
    part in the (depth-first) order given. ``attention_modules`` are UNet-relative names in
    ``named_modules()`` order (``down_blocks.1.attentions.0.transformer_blocks.0.attn2``)."""
    names = [n for n in attention_modules if n.rsplit(".", 1)[-1] == "attn2"]
    return [n for part in _PARTS for n in names if n.startswith(part)]


def index_layers(index: ModuleIndex) -> list[str]:
    """`layer_order` of a base model's module index (its ``unet.….attn2.to_k`` entries)."""
    return layer_order(
        p.removeprefix("unet.").removesuffix(".to_k")
        for p in index.shapes
        if p.startswith("unet.") and p.endswith(".attn2.to_k")
    )


def unet_layers(unet: Any) -> list[str]:
    """`layer_order` of a loaded UNet."""
    return layer_order(name for name, _ in unet.named_modules())


# ------------------------------------------------------------------------------ file keys


def split_params(
    params: Mapping[str, Any],
) -> tuple[dict[str, LoRALayer], dict[str, torch.Tensor], list[str]]:
    """An ED-LoRA ``params`` dict as (layers by component-prefixed module, token -> (n, dim) rows,
    keys that are not LoRA weights). Mix-of-Show stores no alpha (alpha = r)."""
    layers: dict[str, LoRALayer] = {}
    stray: list[str] = []
    for component in ("text_encoder", "unet"):
        weights = params.get(component) or {}
        for key, down in weights.items():
            if key.endswith(_DOWN):
                stem = key.removesuffix(_DOWN)
                up = weights.get(f"{stem}{_UP}")
                if up is None:
                    stray.append(f"{component}.{key}")
                    continue
                layers[f"{component}.{stem}"] = make_layer(f"{component}.{stem}", down, up, None)
            elif not key.endswith(_UP):
                stray.append(f"{component}.{key}")
    new = params.get("new_concept_embedding") or {}
    rows = {tok: t.detach().float().reshape(-1, t.shape[-1]) for tok, t in new.items()}
    return layers, rows, stray


def layer_word(token: str, layer: int) -> str:
    """The vocabulary word of ``token``'s row for cross-attention layer ``layer``: ``<V>[3]``."""
    return f"{token}[{layer}]"


def bind_rows(rows: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A file's token rows as embeddings: token or layer word -> (n, dim) rows.

    n == ``layers`` > 1 with distinct rows: one word per layer (`layer_word`), one row each —
    the words are the one record that a token is layer-wise (`layer_tokens`); all rows equal:
    the token with that one row (every layer reads the same embedding, so this IS the plain
    path); any other n: the n rows under the token (multi-vector)."""
    out: dict[str, torch.Tensor] = {}
    for token, value in rows.items():
        if value.shape[0] > 1 and bool((value == value[:1]).all()):
            out[token] = value[:1].clone()
        elif value.shape[0] == layers > 1:
            out.update({layer_word(token, i): value[i : i + 1].clone() for i in range(layers)})
        else:
            out[token] = value
    return out


def check_tokens(
    rows: Mapping[str, torch.Tensor],
    tokens: tuple[str, ...],
    index: ModuleIndex,
    *,
    concept: str,
    source: str,
) -> None:
    """The scene's tokens are the file's, and its rows as wide as the base's embeddings."""
    if tokens and rows and not set(tokens) & set(rows):
        raise error(
            "edlora-token-mismatch",
            f"concept `{concept}`: `{source}` was trained for token(s) "
            + ", ".join(f"`{t}`" for t in rows),
            notes=(f"the scene gives {', '.join(f'`{t}`' for t in tokens)}",),
            help="use the tokens the ED-LoRA was trained with",
        )
    dim = index.embedding_dims.get("text_encoder")
    for token, value in rows.items():
        if value.shape[1] != dim:
            raise error(
                "embedding-shape-mismatch",
                f"concept `{concept}`: the embedding of `{token}` in `{source}` is "
                f"{value.shape[1]}-wide but the base model's tokens are {dim}-wide",
                help="use an ED-LoRA trained for this base model",
            )


# -------------------------------------------------------------------------------- prompts


def layer_tokens(words: Iterable[str]) -> dict[str, int]:
    """Layer-wise tokens among vocabulary ``words``: token -> number of layers (only complete
    sets ``<V>[0]`` … ``<V>[n-1]`` count)."""
    seen: dict[str, set[int]] = {}
    for word in words:
        m = _WORD.match(word)
        if m:
            seen.setdefault(m["token"], set()).add(int(m["layer"]))
    return {t: len(ls) for t, ls in seen.items() if ls == set(range(len(ls)))}


def pipe_layer_tokens(pipe: Any) -> dict[str, int]:
    """`layer_tokens` of the words added to ``pipe``'s (first) tokenizer."""
    tokenizer = getattr(pipe, "tokenizer", None)
    return layer_tokens(tokenizer.get_added_vocab()) if tokenizer is not None else {}


def _pattern(tokens: Iterable[str]) -> re.Pattern[str] | None:
    names = sorted(tokens, key=len, reverse=True)  # longest first: `<ab>` before `<a>`
    if not names:
        return None
    return re.compile("(" + "|".join(re.escape(t) for t in names) + r")(?!\[\d+\])")


def mentions(texts: Iterable[str | None], tokens: Mapping[str, int]) -> bool:
    """True when any of ``texts`` names one of the layer-wise ``tokens``."""
    pattern = _pattern(tokens)
    return pattern is not None and any(t and pattern.search(t) for t in texts)


def layer_prompt(prompt: str, tokens: Iterable[str], layer: int) -> str:
    """``prompt`` as cross-attention layer ``layer`` reads it: every layer-wise token replaced
    by its layer word (Mix-of-Show's ``bind_concept_prompt``, copy ``layer``)."""
    pattern = _pattern(tokens)
    if pattern is None:
        return prompt
    return pattern.sub(lambda m: layer_word(m[1], layer), prompt)


def variant_of(pipe: Any, tokens: Mapping[str, int]) -> list[int]:
    """For each cross-attention layer, the first layer whose rows equal its rows for every
    layer-wise token: layers mapped to one variant read the same text states."""
    tokenizer, table = pipe.tokenizer, pipe.text_encoder.get_input_embeddings().weight
    count = max(tokens.values(), default=0)
    keys: dict[tuple[bytes, ...], int] = {}
    out = []
    for layer in range(count):
        ids = [
            tokenizer.convert_tokens_to_ids(layer_word(t, min(layer, n - 1)))
            for t, n in sorted(tokens.items())
        ]
        key = tuple(table[i].detach().cpu().numpy().tobytes() for i in ids)
        out.append(keys.setdefault(key, layer))
    return out


def all_variants(pipe: Any, prompts: Sequence[str]) -> list[str]:
    """Each prompt as every distinct layer variant reads it (what the text encoder sees when
    the prompt is rendered); prompts without layer-wise tokens unchanged."""
    tokens = pipe_layer_tokens(pipe)
    if not mentions(prompts, tokens):
        return list(prompts)
    variants = sorted(set(variant_of(pipe, tokens)))
    out: list[str] = []
    for p in prompts:
        out += list(dict.fromkeys(layer_prompt(p, tokens, v) for v in variants))
    return out


# ------------------------------------------------------------------------------ processor


class LayerContextProcessor:
    """Cross-attention that reads its own layer's text states (Mix-of-Show's
    ``EDLoRA_AttnProcessor``): the pipeline's ``encoder_hidden_states`` are replaced by
    ``context`` and ``inner`` (the layer's processor: diffusers' own, or the regional one)
    does the attention. Built for one pipeline call and removed after it: nothing is kept
    between calls."""

    def __init__(self, inner: Any, positive: torch.Tensor, negative: torch.Tensor) -> None:
        self.inner = inner
        self.positive = positive  # (B, T, D) this layer's prompt states
        self.negative = negative  # (B, T, D) this layer's negative-prompt states

    def context(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """(batch, T, D): with classifier-free guidance (batch = 2B) ``[negative; positive]``,
        the order diffusers' pipelines concatenate them in."""
        if batch == 2 * self.positive.shape[0]:
            return torch.cat([self.negative, self.positive]).to(like)
        if batch != self.positive.shape[0]:
            raise ValueError(f"layer context holds {self.positive.shape[0]} prompts, not {batch}")
        return self.positive.to(like)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("a layer context belongs on cross-attention layers only")
        own = self.context(encoder_hidden_states.shape[0], encoder_hidden_states)
        return self.inner(attn, hidden_states, own, *args, **kwargs)


@contextmanager
def installed(unet: Any, replace: Mapping[str, Any]) -> Iterator[None]:
    """``replace`` (processor name -> processor) on the UNet for the ``with`` body; the
    processors found before come back afterwards, also on error."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: replace.get(name, p) for name, p in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))


@contextmanager
@torch.no_grad()
def layerwise_call(pipe: Any, prompt: str) -> Iterator[dict[str, Any]]:
    """Pipeline arguments for one prompt (no negative prompt), with each cross-attention layer
    reading its own variant for the ``with`` body — the merge's sampling run (stage 3). A
    prompt without layer-wise tokens: ``{"prompt": prompt}`` and nothing installed.
    (Rendering does the same with negatives and regions: `scenecraft.render.layerwise`.)"""
    tokens = pipe_layer_tokens(pipe)
    if not mentions([prompt], tokens):
        yield {"prompt": prompt}
        return
    layers = unet_layers(pipe.unet)
    variant = variant_of(pipe, tokens)[: len(layers)]
    variants = sorted(set(variant))
    texts = [layer_prompt(prompt, tokens, v) for v in variants]
    device = pipe._execution_device
    extra: dict[str, Any] = {}
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: pooled from layer 0's copy
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(
            texts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
        k = variants.index(variant[0])
        extra = {
            "pooled_prompt_embeds": pooled[k : k + 1],
            "negative_pooled_prompt_embeds": neg_pooled[k : k + 1],
        }
    else:
        pos, neg = pipe.encode_prompt(texts, device, 1, True)
    saved = pipe.unet.attn_processors
    replace = {}
    for layer, name in enumerate(layers):
        k = variants.index(variant[layer])
        inner = saved[f"{name}.processor"]
        replace[f"{name}.processor"] = LayerContextProcessor(inner, pos[k : k + 1], neg[k : k + 1])
    k = variants.index(variant[0])
    extra |= {"prompt_embeds": pos[k : k + 1], "negative_prompt_embeds": neg[k : k + 1]}
    with installed(pipe.unet, replace):
        yield extra
