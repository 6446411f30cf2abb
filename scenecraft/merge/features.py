"""Feature collection for the merge (docs/loraclr.md, "Pipeline": the feature stages).

X_c at a layer = rows of the layer's input activations that concept c's OWN model produces on
prompts containing its token(s). Concept models are made by patching weights in place
(W0 + ΔW_c, restored afterwards) — exact, and no adapter machinery. Forward hooks record
inputs in fp32; rows are capped per concept and layer by a seeded subsample.

- `text_rows`:  text encoder Linear inputs, every real token position (BOS … EOS) of the prompts;
- `token_states`: final hidden states of the (merged) text encoder at the concept-token
  positions plus the end token — the inputs of every UNet cross-attention to_k / to_v;
- `spatial_rows`: inputs of UNet Linear / 1×1 conv layers during a short sampling run.

SDXL (a pipeline with ``text_encoder_2``): stage 1 runs each encoder on its own tokenizer's ids
(``text_encoder_2.text_projection`` sees one pooled row per prompt); the UNet's context is what
``StableDiffusionXLPipeline.encode_prompt`` builds — both encoders' penultimate hidden states
concatenated position by position (768 + 1280 = 2048 wide); new tokens go into both
tokenizers. Stage 3 calls the pipeline itself, which fills in SDXL's added conditioning
(pooled text, time ids).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from scenecraft.diagnostics import did_you_mean, error
from scenecraft.merge import edlora
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


# --------------------------------------------------------------------------------- modules


def resolve_modules(pipe: Any, paths: list[str]) -> dict[str, nn.Module]:
    """Component-prefixed module paths ("unet.…attn2.to_k") -> modules; unknown paths fail loudly."""
    found: dict[str, nn.Module] = {}
    named: dict[str, dict[str, nn.Module]] = {}
    for path in paths:
        component, _, sub = path.partition(".")
        root = getattr(pipe, component, None)
        if not isinstance(root, nn.Module):
            raise error(
                "lora-unknown-module",
                f"LoRA layer `{path}` names no pipeline component `{component}`",
                help="the LoRA was made for a different model family",
            )
        if component not in named:
            named[component] = dict(root.named_modules())
        module = named[component].get(sub)
        if module is None or not hasattr(module, "weight"):
            hint = did_you_mean(sub, named[component])
            raise error(
                "lora-unknown-module",
                f"LoRA layer `{path}` names no weighted module of the base model",
                help=hint or "the LoRA was made for a different base model",
            )
        found[path] = module
    return found


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as a (out, in) view (conv kernels flattened)."""
    w = module.weight
    assert isinstance(w, torch.Tensor)
    return w.view(w.shape[0], -1)


def has_rows(module: nn.Module) -> bool:
    """True for layers whose input rows we can record: Linear and 1×1 Conv2d."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


@contextmanager
def patched(modules: dict[str, nn.Module], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily set module weights (path -> (out, in)); the originals come back on exit."""
    saved = {p: weight_matrix(modules[p]).detach().clone() for p in weights}
    try:
        with torch.no_grad():
            for p, w in weights.items():
                target = weight_matrix(modules[p])
                target.copy_(w.to(target.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, w in saved.items():
                weight_matrix(modules[p]).copy_(w)


def own_weights(
    concept: ConceptLoRA, modules: dict[str, nn.Module], prefix: str | tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """W0 + ΔW_c for every layer of ``concept`` under component ``prefix``(es) (fp32)."""
    return {
        p: weight_matrix(modules[p]).detach().float()
        + concept.delta(p).to(weight_matrix(modules[p]).device)
        for p in concept.layers
        if p.startswith(prefix)
    }


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


def _encode(
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


def _token_mask(
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


# ------------------------------------------------------------------------------- recording


class RowRecorder:
    """Forward hooks that keep (capped) input rows of some modules, fp32, on their device."""

    def __init__(self, modules: dict[str, nn.Module], per_call: int | None, seed: int):
        self.rows: dict[str, list[torch.Tensor]] = {p: [] for p in modules}
        self.mask: torch.Tensor | None = None  # (B, T) rows to keep for sequence inputs
        self.per_call = per_call
        self.gen = torch.Generator().manual_seed(seed)
        self.handles = [m.register_forward_hook(self._hook(p)) for p, m in modules.items()]

    def _hook(self, path: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = args[0].detach()
            if x.dim() == 4:  # conv input (B, C, H, W) -> (B·H·W, C)
                x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            elif self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape:
                x = x[self.mask]  # (n, in): real / selected token positions
            else:
                x = x.reshape(-1, x.shape[-1])
            if self.per_call is not None and x.shape[0] > self.per_call:
                keep = torch.randperm(x.shape[0], generator=self.gen)[: self.per_call]
                x = x[keep.to(x.device)]
            self.rows[path].append(x.float())

        return hook

    def take(self, cap: int) -> dict[str, torch.Tensor]:
        """Rows per module (n ≤ cap, seeded subsample); clears the buffers."""
        out = {}
        for p, chunks in self.rows.items():
            x = torch.cat(chunks) if chunks else torch.empty(0)
            if x.shape[0] > cap:
                keep = torch.randperm(x.shape[0], generator=self.gen)[:cap].sort().values
                x = x[keep.to(x.device)]
            out[p] = x
            chunks.clear()
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------------------------- stages


@torch.no_grad()
def text_rows(
    pipe: Any, modules: dict[str, nn.Module], prompts: list[str], cap: int, seed: int
) -> dict[str, torch.Tensor]:
    """Stage 1: inputs of text-encoder ``modules`` at every real token of ``prompts``. (n, in).

    Each encoder reads its own tokenizer's ids; SDXL's ``text_projection`` sees one pooled row
    per prompt."""
    out: dict[str, torch.Tensor] = {}
    prompts = edlora.all_variants(pipe, prompts)  # ED-LoRA: every layer's copy of a prompt
    for name, tokenizer in TEXT_ENCODERS:
        group = {p: m for p, m in modules.items() if p.startswith(f"{name}.")}
        if not group:
            continue
        ids, real = _encode(pipe, prompts, tokenizer)
        rec = RowRecorder(group, None, seed)
        rec.mask = real
        try:
            getattr(pipe, name)(ids)
        finally:
            rec.close()
        out.update(rec.take(cap))
    return out


@torch.no_grad()
def input_waves(pipe: Any, modules: dict[str, nn.Module], prompt: str) -> list[list[str]]:
    """Text-encoder ``modules`` in forward order, grouped into waves of modules called one after
    the other on the same input tensor (q / k / v of one attention): a module's input depends
    only on the waves before its own. Modules the forward never calls come last, one each.

    Inputs are compared by identity and kept alive until the end, so a freed tensor's memory
    reused by the next input cannot make two inputs look the same."""
    calls: list[tuple[str, torch.Tensor]] = []  # (path, its input) in call order

    def hook(path: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            calls.append((path, args[0]))

        return record

    handles = [m.register_forward_hook(hook(p)) for p, m in modules.items()]
    try:
        for name, tokenizer in TEXT_ENCODERS:
            if any(p.startswith(f"{name}.") for p in modules):
                ids, _ = _encode(pipe, [prompt], tokenizer)
                getattr(pipe, name)(ids)
    finally:
        for h in handles:
            h.remove()
    waves: list[list[str]] = []
    seen: set[str] = set()
    last: torch.Tensor | None = None
    for path, x in calls:
        if path not in seen:
            seen.add(path)
            if waves and x is last:
                waves[-1].append(path)
            else:
                waves.append([path])
        last = x
    return waves + [[p] for p in modules if p not in seen]


@torch.no_grad()
def context_states(
    pipe: Any, prompts: list[str], words: Sequence[str] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the UNet's cross-attention reads for ``prompts`` — (B, T, dim) fp32 — and the
    (B, T) mask of the positions from the ``words``' first token on (`_token_mask`).

    SD 1.x / 2.x: the text encoder's final hidden states. SDXL: as
    ``StableDiffusionXLPipeline.encode_prompt`` builds them (no clip skip), both encoders'
    penultimate hidden states concatenated; both tokenizers pad to one length, the mask is
    the union of the positions either tokenizer gives (they agree unless a token is known
    to one tokenizer only).
    """
    if not is_sdxl(pipe):
        ids, _ = _encode(pipe, prompts)
        hidden = pipe.text_encoder(ids)[0]  # (B, T, dim)
        return hidden.float(), _token_mask(pipe, ids, list(words))
    length = max(
        len(ids)
        for _, tok in TEXT_ENCODERS
        for ids in getattr(pipe, tok)(prompts, truncation=True).input_ids
    )
    states, mask = [], None
    for name, tokenizer in TEXT_ENCODERS:
        ids, _ = _encode(pipe, prompts, tokenizer, length)
        out = getattr(pipe, name)(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2].float())
        found = _token_mask(pipe, ids, list(words), tokenizer)
        mask = found if mask is None else mask | found
    assert mask is not None
    return torch.cat(states, dim=-1), mask


@torch.no_grad()
def token_states(pipe: Any, prompts: list[str], words: list[str]) -> torch.Tensor:
    """Stage 2: the context from the concept's first token to the end of each prompt, (n, dim)
    fp32 — the rows every UNet cross-attention to_k / to_v reads (see `_token_mask`)."""
    hidden, mask = context_states(pipe, prompts, words)
    return hidden[mask]


@torch.no_grad()
def kv_token_states(
    pipe: Any, prompts: list[str], words: list[str], paths: Sequence[str], cap: int
) -> dict[str, torch.Tensor]:
    """Stage 2 per to_k / to_v path: `token_states` (first ``cap`` rows). Without ED-LoRA
    layer-wise tokens every path reads the same tensor; with them each cross-attention layer
    reads the states of its own prompt variant, layer words in place of the tokens
    (`scenecraft.merge.edlora`); a path outside the numbered layers reads layer 0's."""
    tokens = edlora.pipe_layer_tokens(pipe)
    if not edlora.mentions(prompts, tokens):
        x = token_states(pipe, prompts, words)[:cap]
        return {p: x for p in paths}
    variant = edlora.variant_of(pipe, tokens)
    states: dict[int, torch.Tensor] = {}
    for v in sorted(set(variant)):
        shown = [edlora.layer_prompt(p, tokens, v) for p in prompts]
        found = [edlora.layer_prompt(w, tokens, v) for w in words]
        states[v] = token_states(pipe, shown, found)[:cap]
    layer = {f"unet.{n}": i for i, n in enumerate(edlora.unet_layers(pipe.unet))}
    return {p: states[variant[layer.get(p.rsplit(".", 1)[0], 0)]] for p in paths}


@torch.no_grad()
def spatial_rows(
    pipe: Any,
    modules: dict[str, nn.Module],
    prompt: str,
    steps: int,
    size: int,
    guidance: float,
    cap: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Stage 3: inputs of UNet ``modules`` during one ``steps``-step sampling run. (n ≤ cap, in)."""
    rec = RowRecorder(modules, per_call=max(1, math.ceil(cap / max(steps, 1))), seed=seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    try:
        with edlora.layerwise_call(pipe, prompt) as conditioning:  # ED-LoRA: per-layer prompts
            pipe(
                **conditioning,
                num_inference_steps=steps,
                height=size,
                width=size,
                guidance_scale=guidance,
                generator=gen,
                output_type="latent",
            )
    finally:
        rec.close()
    return rec.take(cap)
