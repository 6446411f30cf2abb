"""Applying a cached merge to a loaded base pipeline, in place.

For every module of the entry, W ← W0 + ΔW* (in the module's own dtype and device); every new
token is added to its tokenizer and its rows written into the (resized) text encoder embedding.
An n-row embedding becomes the tokens ``tok, tok_1, … tok_{n-1}`` that diffusers' pipelines
expand in prompts (``maybe_convert_prompt``, the textual-inversion convention). Tokens the merge
engine already added in this process are reused; a word of the base vocabulary is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from scenecraft.diagnostics import error
from scenecraft.merge.cache import load_entry
from scenecraft.merge.formats_index import TOKENIZER_OF

APPLIED_ATTR = "_scenecraft_merge_key"  # set on the pipeline once a merge is applied


def _module(pipe: Any, path: str) -> torch.nn.Module | None:
    component, _, rel = path.partition(".")
    root = getattr(pipe, component, None)
    if not isinstance(root, torch.nn.Module):
        return None
    try:
        module = root.get_submodule(rel)
    except AttributeError:
        return None
    return getattr(module, "base_layer", module)  # a peft-wrapped layer keeps W0 in base_layer


def _check_modules(
    pipe: Any, deltas: dict[str, torch.Tensor], entry: Path
) -> dict[str, torch.Tensor]:
    """The weight tensor of every module the entry changes, checked for size."""
    weights: dict[str, torch.Tensor] = {}
    for path, delta in deltas.items():
        module = _module(pipe, path)
        weight = getattr(module, "weight", None)
        if (
            module is None
            or not isinstance(weight, torch.Tensor)
            or weight.numel() != delta.numel()
        ):
            have = "no such module" if weight is None else f"weight {tuple(weight.shape)}"
            raise error(
                "merge-base-mismatch",
                f"merge `{entry.name}` does not fit this pipeline at `{path}`",
                notes=(
                    f"the merge changes a {tuple(delta.shape)} weight; the pipeline has {have}",
                ),
                help="apply a merge to the base model it was built from",
            )
        weights[path] = weight
    return weights


def _check_tokens(pipe: Any, embeddings: dict[str, dict[str, torch.Tensor]], entry: Path) -> None:
    for component, rows in embeddings.items():
        tokenizer = getattr(pipe, TOKENIZER_OF.get(component, ""), None)
        encoder = getattr(pipe, component, None)
        if tokenizer is None or encoder is None:
            raise error(
                "merge-base-mismatch",
                f"merge `{entry.name}` adds tokens to `{component}`, which this pipeline lacks",
                help="apply a merge to the base model it was built from",
            )
        for token, value in rows.items():
            taken = [w for w in token_words(token, value.shape[0]) if _is_base_word(tokenizer, w)]
            if taken:
                raise error(
                    "merge-token-exists",
                    f"token `{taken[0]}` of merge `{entry.name}` is a word of the base "
                    f"`{component}` vocabulary",
                    help="give the concept a new token such as `<name>`",
                )


def _is_base_word(tokenizer: Any, word: str) -> bool:
    """True when ``word`` is one token of the base vocabulary (``man`` -> ``man</w>``): adding it
    would hijack that word in every prompt. Tokens added earlier are not base words."""
    if word in tokenizer.added_tokens_encoder:
        return False
    return word in tokenizer.get_vocab() or len(tokenizer.tokenize(word)) == 1


def apply_merge(pipe: Any, entry_dir_or_result: Any) -> dict[str, list[str]]:
    """Patch ``pipe`` with a merge entry (a folder or a `MergeResult`); returns tokens added.

    Raises `merge-entry-invalid`, `merge-base-mismatch`, `merge-token-exists`,
    `merge-already-applied`. Nothing is changed when it raises.
    """
    path = getattr(entry_dir_or_result, "path", entry_dir_or_result)
    if path is None:  # method "none": nothing to apply
        return {}
    entry = Path(path)
    deltas, embeddings, manifest = load_entry(entry)
    # 1. check everything before touching the pipeline
    applied = getattr(pipe, APPLIED_ATTR, None)
    if applied is not None:
        raise error(
            "merge-already-applied",
            f"this pipeline already carries merge `{applied}`",
            help="load a fresh base pipeline for each merge",
        )
    weights = _check_modules(pipe, deltas, entry)
    _check_tokens(pipe, embeddings, entry)
    # 2. W ← W0 + ΔW*
    with torch.no_grad():
        for path_, weight in weights.items():
            weight.add_(deltas[path_].reshape(weight.shape).to(weight.device, weight.dtype))
    # 3. new tokens: add the missing ones, then write every row
    installed = {
        component: _install_tokens(pipe, component, rows) for component, rows in embeddings.items()
    }
    setattr(pipe, APPLIED_ATTR, manifest.get("key", entry.name))
    return installed


def token_words(token: str, rows: int) -> list[str]:
    """Vocabulary entries of an n-row embedding (diffusers' multi-vector convention)."""
    return [token] + [f"{token}_{i}" for i in range(1, rows)]


def _install_tokens(pipe: Any, component: str, rows: dict[str, torch.Tensor]) -> list[str]:
    """Add ``tok, tok_1, …`` to the tokenizer (unless already added, e.g. by the merge engine
    in this process), resize the encoder's embedding table and write the rows."""
    tokenizer, encoder = getattr(pipe, TOKENIZER_OF[component]), getattr(pipe, component)
    table = {
        w: r for t, v in rows.items() for w, r in zip(token_words(t, v.shape[0]), v, strict=True)
    }
    missing = [w for w in table if w not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
        encoder.resize_token_embeddings(len(tokenizer))
    weight = encoder.get_input_embeddings().weight  # (vocab, dim)
    with torch.no_grad():
        for word, row in table.items():
            weight[tokenizer.convert_tokens_to_ids(word)] = row.to(weight.device, weight.dtype)
    return list(table)


def module_weight(pipe: Any, path: str) -> torch.Tensor:
    """The current weight of a module path (for tests and checks)."""
    module = _module(pipe, path)
    if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise KeyError(path)
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def changed_deltas(
    pipe: Any, weights: dict[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """ΔW* = W* − W0 for each merged module, in the module's weight shape, stored as ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    for path, merged in weights.items():
        w0 = module_weight(pipe, path)
        if merged.numel() != w0.numel():
            raise ValueError(
                f"merged weight for {path} has {merged.numel()} elements, expected {w0.numel()}"
            )
        delta = merged.detach().float().cpu().reshape(w0.shape) - w0.detach().float().cpu()
        if not math.isfinite(float(delta.abs().max())):
            raise error(
                "merge-non-finite",
                f"the merge produced NaN or infinite weights at `{path}`",
                help="try another method (e.g. `gradient-fusion`) or smaller step sizes in `params`",
            )
        out[path] = delta.to(dtype).contiguous()
    return out
