"""The text side of the feature stages: which text encoders a pipeline has (and which families a
feature-based merge cannot read), the concepts' token embeddings installed in them, and the
prompts and token positions the features are read at. `scenecraft.merge.features` re-exports
the public names.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from scenecraft.diagnostics import error
from scenecraft.merge.types import ConceptLoRA

# --------------------------------------------------------------------------------- families

# (text encoder, its tokenizer) in the order their states are concatenated into the context.
TEXT_ENCODERS: tuple[tuple[str, str], ...] = (
    ("text_encoder", "tokenizer"),
    ("text_encoder_2", "tokenizer_2"),
)
TEXT_PREFIXES: tuple[str, ...] = tuple(f"{name}." for name, _ in TEXT_ENCODERS)
_CLIP_TEXT = ("CLIPTextModel", "CLIPTextModelWithProjection")
# What feature-based merges cannot read, for the `merge-unsupported-family` diagnostic.
UNSUPPORTED_FAMILIES = (
    "transformer-based pipelines (SD3, Flux, PixArt, Sana, AuraFlow, …)",
    "SDXL refiner-style pipelines without the first text encoder",
    "pipelines whose text encoder is not CLIP (Kandinsky, DeepFloyd IF, …)",
    "pipelines without a cross-attention UNet",
)


def text_components(pipe: Any) -> list[str]:
    """The pipeline's text encoders that have a tokenizer, in context order."""
    return [
        name
        for name, tok in TEXT_ENCODERS
        if getattr(pipe, name, None) is not None and getattr(pipe, tok, None) is not None
    ]


def is_sdxl(pipe: Any) -> bool:
    """Two text encoders whose states are concatenated (SDXL and SDXL-derived bases)."""
    return len(text_components(pipe)) == 2


def unsupported_reason(pipe: Any) -> str | None:
    """Why feature collection cannot run on ``pipe`` (None: SD 1.x, 2.x or SDXL)."""
    if getattr(pipe, "transformer", None) is not None:
        return f"it has a `transformer` ({type(pipe.transformer).__name__}), not a UNet"
    if getattr(pipe, "text_encoder_3", None) is not None:
        return "it has a third text encoder"
    unet = getattr(pipe, "unet", None)
    if unet is None or not getattr(getattr(unet, "config", None), "cross_attention_dim", None):
        return "it has no cross-attention UNet"
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        return "it has no first text encoder and tokenizer (an SDXL refiner?)"
    for name in text_components(pipe):
        kind = type(getattr(pipe, name)).__name__
        if kind not in _CLIP_TEXT:
            return f"its `{name}` is a {kind}, not a CLIP text model"
    if getattr(pipe, "text_encoder_2", None) is not None and not is_sdxl(pipe):
        return "it has a `text_encoder_2` but no `tokenizer_2`"
    return None


# ---------------------------------------------------------------------------------- tokens


def token_words(token: str, rows: int) -> list[str]:
    """Vocabulary entries of a token with ``rows`` embedding vectors (A1111 multi-vector style)."""
    return [token] + [f"{token}_{i}" for i in range(1, rows)]


@contextmanager
def token_embeddings(pipe: Any, concepts: list[ConceptLoRA]) -> Iterator[dict[str, str]]:
    """Install the concepts' new token embeddings in every text encoder; yields token -> prompt
    text (``tok tok_1 …`` for an n-row embedding).

    Unknown tokens are added to the tokenizers (that stays: the merged model needs them too);
    rows that existed before are restored on exit.
    """
    texts: dict[str, str] = {}
    with ExitStack() as stack:
        for name, tok in TEXT_ENCODERS:
            if name in text_components(pipe):
                texts.update(stack.enter_context(_component_tokens(pipe, name, tok, concepts)))
        yield texts


@contextmanager
def _component_tokens(
    pipe: Any, component: str, tokenizer_name: str, concepts: list[ConceptLoRA]
) -> Iterator[dict[str, str]]:
    tokenizer, encoder = getattr(pipe, tokenizer_name), getattr(pipe, component)
    table: dict[str, torch.Tensor] = {}
    for concept in concepts:
        for token, rows in concept.embeddings.get(component, {}).items():
            words = token_words(token, rows.shape[0])
            for word, row in zip(words, rows, strict=True):
                table[word] = row
    missing = [w for w in table if w not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
        encoder.resize_token_embeddings(len(tokenizer))
    emb = encoder.get_input_embeddings().weight
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in table}
    saved = {w: emb[i].detach().clone() for w, i in ids.items() if w not in missing}
    for word, row in table.items():
        if row.shape[0] != emb.shape[1]:
            raise error(
                "embedding-shape-mismatch",
                f"embedding for `{word}` has width {row.shape[0]}, the `{component}` "
                f"{emb.shape[1]}",
                help="the embedding was trained for a different base model",
            )
    try:
        with torch.no_grad():
            for word, row in table.items():
                emb[ids[word]] = row.to(emb)
        texts = {
            token: " ".join(token_words(token, rows.shape[0]))
            for c in concepts
            for token, rows in c.embeddings.get(component, {}).items()
        }
        yield texts
    finally:
        with torch.no_grad():
            for word, row in saved.items():
                emb[ids[word]] = row


# Whole words `continuations` draws from: the first this many of the vocabulary (CLIP's BPE
# vocabulary is in merge order, so the most frequent words come first).
COMMON_WORDS = 5000


def common_words(tokenizer: Any, limit: int = COMMON_WORDS) -> list[str]:
    """The tokenizer's whole-word entries (CLIP BPE: ``word</w>``; ASCII letters, at least two)
    in id order, the first ``limit`` of them. A vocabulary without such entries gives none."""
    found = []
    for entry, i in tokenizer.get_vocab().items():
        word = entry.removesuffix("</w>")
        if entry.endswith("</w>") and len(word) >= 2 and word.isascii() and word.isalpha():
            found.append((i, word))
    return [w for _, w in sorted(found)[:limit]]


def continuations(words: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` seeded phrases of 1–4 words drawn from ``words`` (`common_words`): what follows a
    concept's token in `concept_prompts` ("<KIKI> triangle, sea hat under"). None without words."""
    if not words:
        return []
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def concept_prompts(
    concept: ConceptLoRA,
    texts: dict[str, str],
    templates: tuple[str, ...],
    scene_prompts: bool = False,
    others: tuple[str, ...] = (),
    phrases: Sequence[str] = (),
) -> list[str]:
    """Prompts "photo of a {token}", "{token}" (+ "… {class}" when the class noun is known);
    with ``others`` (the other merged concepts' class nouns) also region-shaped prompts, the
    shape of every region prompt the compiler writes (`scenecraft.prompts.region_prompt`): the
    concept, then it and one other by class noun, both orders ("<KIKI> triangle, triangle and
    square", "<KIKI> triangle, square and triangle"); with ``phrases`` (`continuations`) the
    concept followed by each ("<KIKI> triangle, sea hat under"): a scene's own words come after
    the token, and CLIP's causal encoder carries the concept into every one of them; with
    ``scene_prompts`` also the prompts the plan renders the concept with (its regions)."""
    noun = concept.class_noun
    prompts = []
    for token in concept.tokens:
        word = texts.get(token, token)
        subject = f"{word} {noun}" if noun else word  # "<KIKI> triangle"
        for template in templates:
            prompts.append(template.format(token=word))
            if noun:
                prompts.append(template.format(token=subject))
        if noun:
            shaped = [
                f"{subject}, {a} and {b}"
                for other in dict.fromkeys(others)
                for a, b in ((noun, other), (other, noun))
            ]
            prompts += list(dict.fromkeys(shaped))
        prompts += [f"{subject}, {phrase}" for phrase in phrases]
    for prompt in concept.prompts if scene_prompts else ():
        for token in concept.tokens:  # multi-vector embeddings: the token's expanded words
            prompt = prompt.replace(token, texts.get(token, token))
        prompts.append(prompt)
    return prompts


def encode(
    pipe: Any, prompts: list[str], tokenizer: str = "tokenizer", length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, T) padded to the longest prompt (or to ``length``), and the mask of real
    tokens (B, T)."""
    tok = getattr(pipe, tokenizer)
    if length is None:
        enc = tok(prompts, padding="longest", truncation=True, return_tensors="pt")
    else:
        enc = tok(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
    encoder = getattr(pipe, dict((t, e) for e, t in TEXT_ENCODERS)[tokenizer])
    return enc.input_ids.to(encoder.device), enc.attention_mask.to(encoder.device).bool()


def token_mask(
    pipe: Any, ids: torch.Tensor, words: list[str], tokenizer: str = "tokenizer"
) -> torch.Tensor:
    """(B, T) mask of the rows stage 2 keeps: every position from the first occurrence of one
    of ``words``' token-id sequences to the end of the (padded) prompt, end token included.

    CLIP's text encoder is causal, so every state after a concept's token carries the concept:
    the UNet's to_k / to_v read all of them when the concept is rendered. Fitting the merged
    K/V on the token and the end token alone left the words after it wrong (a 4-concept toy
    merge: single-concept identity 0.44; with every later position: 1.00, docs/loraclr.md)."""
    tok = getattr(pipe, tokenizer)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    rows = ids.tolist()
    for w in words:
        seq = tok(w, add_special_tokens=False).input_ids
        for b, row in enumerate(rows):
            for t in range(len(row) - len(seq) + 1):
                if seq and row[t : t + len(seq)] == seq:
                    mask[b, t : t + len(seq)] = True
    eos = tok.eos_token_id
    first_eos = (ids == eos).int().argmax(1)  # (B,)
    mask[torch.arange(ids.shape[0], device=ids.device), first_eos] = True
    first = mask.int().argmax(1)  # (B,) the first concept token (else the end token)
    positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
    return positions >= first[:, None]
