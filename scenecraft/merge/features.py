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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from scenecraft.diagnostics import did_you_mean, error
from scenecraft.merge import edlora
from scenecraft.merge.text_encoders import (
    COMMON_WORDS,
    TEXT_ENCODERS,
    TEXT_PREFIXES,
    UNSUPPORTED_FAMILIES,
    common_words,
    concept_prompts,
    continuations,
    encode,
    is_sdxl,
    text_components,
    token_embeddings,
    token_mask,
    token_words,
    unsupported_reason,
)
from scenecraft.merge.types import ConceptLoRA

__all__ = [  # with the text side (text_encoders.py) re-exported: callers read both here
    "COMMON_WORDS",
    "RowRecorder",
    "TEXT_ENCODERS",
    "TEXT_PREFIXES",
    "UNSUPPORTED_FAMILIES",
    "common_words",
    "concept_prompts",
    "context_states",
    "continuations",
    "encode",
    "has_rows",
    "input_waves",
    "is_sdxl",
    "kv_token_states",
    "own_weights",
    "patched",
    "resolve_modules",
    "spatial_rows",
    "text_components",
    "text_rows",
    "token_embeddings",
    "token_mask",
    "token_states",
    "token_words",
    "unsupported_reason",
    "weight_matrix",
]

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
        ids, real = encode(pipe, prompts, tokenizer)
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
                ids, _ = encode(pipe, [prompt], tokenizer)
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
    (B, T) mask of the positions from the ``words``' first token on (`token_mask`).

    SD 1.x / 2.x: the text encoder's final hidden states. SDXL: as
    ``StableDiffusionXLPipeline.encode_prompt`` builds them (no clip skip), both encoders'
    penultimate hidden states concatenated; both tokenizers pad to one length, the mask is
    the union of the positions either tokenizer gives (they agree unless a token is known
    to one tokenizer only).
    """
    if not is_sdxl(pipe):
        ids, _ = encode(pipe, prompts)
        hidden = pipe.text_encoder(ids)[0]  # (B, T, dim)
        return hidden.float(), token_mask(pipe, ids, list(words))
    length = max(
        len(ids)
        for _, tok in TEXT_ENCODERS
        for ids in getattr(pipe, tok)(prompts, truncation=True).input_ids
    )
    states, mask = [], None
    for name, tokenizer in TEXT_ENCODERS:
        ids, _ = encode(pipe, prompts, tokenizer, length)
        out = getattr(pipe, name)(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2].float())
        found = token_mask(pipe, ids, list(words), tokenizer)
        mask = found if mask is None else mask | found
    assert mask is not None
    return torch.cat(states, dim=-1), mask


@torch.no_grad()
def token_states(pipe: Any, prompts: list[str], words: list[str]) -> torch.Tensor:
    """Stage 2: the context from the concept's first token to the end of each prompt, (n, dim)
    fp32 — the rows every UNet cross-attention to_k / to_v reads (see `token_mask`)."""
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
