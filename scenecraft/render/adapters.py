"""Preparing the model's weights: the merged model in place, or LoRAs as runtime adapters.

Merged: ``scenecraft.merge.api.merge`` builds (or fetches from its cache) W* for every layer
and ``scenecraft.merge.apply.apply_merge`` writes it into the pipeline in place: the renderer
then pays exactly the base model's cost per step. Adapters: each concept's LoRA is loaded with
``load_lora_weights(path, adapter_name=...)``; each picture is drawn with the adapters of the
concepts it holds active (`activate`: W0 + Σ_{c in the picture} w_c ΔW_c at run time, what a
user of runtime LoRAs writes per prompt), or in a regional scene each confined to its box
(``scenecraft.render.regions``), for side-by-side comparison with the merge.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import error
from scenecraft.events import Notice, Reporter, emit
from scenecraft.plan import ConceptSpec, MergeSpec, RenderJob


def adapter_name(concept: ConceptSpec) -> str:
    """A PEFT-safe adapter name (no dots: PEFT uses them as module separators)."""
    return re.sub(r"\W+", "_", concept.name) or "concept"


def load_adapters(
    pipe: Any, concepts: Sequence[ConceptSpec], reporter: Reporter | None
) -> list[str]:
    """Load every concept's LoRA as a named adapter and activate all with their weights w_c.

    All or nothing: when one file fails, the adapters loaded before it are removed again.
    """
    try:
        return _load_all(pipe, concepts, reporter)
    except BaseException:
        unload_adapters(pipe)
        raise


def _load_all(pipe: Any, concepts: Sequence[ConceptSpec], reporter: Reporter | None) -> list[str]:
    names: list[str] = []
    weights: list[float] = []
    for concept in concepts:
        if concept.embedding is not None:
            load_embedding(pipe, concept)
        if concept.lora is None:
            continue
        path = Path(concept.lora)
        if concept.placeholder or not path.is_file():
            raise error(
                "lora-not-found",
                f"LoRA file `{concept.lora}` of concept `{concept.name}` does not exist",
                help="train or download it first, or drop --adapters",
            )
        name = adapter_name(concept)
        try:
            with warnings.catch_warnings():  # peft warns on every adapter after the first
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise error(
                "adapter-load-failed",
                f"cannot load `{concept.lora}` as a runtime adapter: {first}",
                help="--adapters takes diffusers/PEFT or kohya LoRA files made for this base model",
            ) from None
        names.append(name)
        weights.append(concept.weight)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)
        emit(reporter, Notice("info", f"runtime adapters: {', '.join(names)}"))
    return names


def active_adapters(concepts: Sequence[ConceptSpec], job: RenderJob) -> tuple[str, ...]:
    """The adapters a picture is drawn with: those of the concepts it holds, in merge order."""
    held = set(job.concepts)
    return tuple(adapter_name(c) for c in concepts if c.lora is not None and c.name in held)


def activate(pipe: Any, concepts: Sequence[ConceptSpec], names: Sequence[str]) -> None:
    """Only the adapters ``names`` active, each with its concept's weight; none: LoRAs off."""
    if not names:
        pipe.disable_lora()
        return
    pipe.enable_lora()
    weight = {adapter_name(c): c.weight for c in concepts}
    pipe.set_adapters(list(names), adapter_weights=[weight[n] for n in names])


def load_embedding(pipe: Any, concept: ConceptSpec) -> None:
    """Bind a textual-inversion file to the concept's token(s) with diffusers' own loader."""
    path = Path(str(concept.embedding))
    if not path.is_file():
        raise error(
            "embedding-not-found",
            f"embedding `{concept.embedding}` of concept `{concept.name}` does not exist",
            help="fix the path, or drop the `embedding` line",
        )
    token = concept.tokens[0] if len(concept.tokens) == 1 else None
    try:
        pair = _sdxl_pair(pipe, path)
        if pair is not None:  # SDXL: clip_l into text_encoder, clip_g into text_encoder_2
            for rows, encoder, tokenizer in pair:
                pipe.load_textual_inversion(
                    rows, token=token, text_encoder=encoder, tokenizer=tokenizer
                )
        else:
            pipe.load_textual_inversion(str(path), token=token)
        pipe._scenecraft_ti = True
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise error(
            "adapter-load-failed",
            f"cannot load `{concept.embedding}` as a textual-inversion embedding: {first}",
            help="--adapters takes diffusers or A1111 textual-inversion files",
        ) from None


def _sdxl_pair(pipe: Any, path: Path) -> list[tuple[Any, Any, Any]] | None:
    """An SDXL embedding file ({"clip_l", "clip_g"}) as (rows, encoder, tokenizer) per encoder,
    which diffusers loads one encoder at a time; None for any other file or pipeline."""
    if getattr(pipe, "text_encoder_2", None) is None:
        return None
    from scenecraft.merge.formats import load_state

    state, _ = load_state(path, concept=path.stem, kind="embedding")
    if set(state) != {"clip_l", "clip_g"}:
        return None
    return [
        (state["clip_l"], pipe.text_encoder, pipe.tokenizer),
        (state["clip_g"], pipe.text_encoder_2, pipe.tokenizer_2),
    ]


def unload_adapters(pipe: Any) -> None:
    """Remove the runtime adapters (and embeddings) again, so the pipeline can render the merge."""
    unload = getattr(pipe, "unload_lora_weights", None)
    if unload is not None:
        unload()
    unload_ti = getattr(pipe, "unload_textual_inversion", None)
    if unload_ti is not None and getattr(pipe, "_scenecraft_ti", False):
        unload_ti()
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: the second encoder too
            unload_ti(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2)
        pipe._scenecraft_ti = False


def build_merge(spec: MergeSpec, pipe: Any, cache_dir: Any, reporter: Reporter | None) -> Any:
    """Build the merged deltas for ``pipe`` (or fetch them from the merge cache): the merge
    engine's `MergeResult` (its ``key``, and ``path``: the cache entry's folder)."""
    try:  # imported on use: a missing merge engine is a diagnostic here, not a crash at import
        from scenecraft.merge.api import merge
    except ImportError as exc:
        raise _merge_unavailable(exc) from None
    return merge(spec, pipe, cache_dir=cache_dir, force=False, reporter=reporter)


def apply_built_merge(pipe: Any, entry: Any) -> None:
    """Write a built merge (a `MergeResult`, or its entry's folder) into ``pipe`` in place."""
    try:
        from scenecraft.merge.apply import apply_merge
    except ImportError as exc:
        raise _merge_unavailable(exc) from None
    apply_merge(pipe, entry)


def build_and_apply_merge(
    pipe: Any, spec: MergeSpec, cache_dir: Any, reporter: Reporter | None
) -> str:
    """Build the merged deltas (or reuse the cached ones) and apply them to ``pipe``; returns
    the merge engine's key of the cache entry."""
    result = build_merge(spec, pipe, cache_dir, reporter)
    apply_built_merge(pipe, result)
    return str(getattr(result, "key", ""))


def _merge_unavailable(exc: ImportError) -> Exception:
    return error(
        "merge-unavailable",
        f"the merge engine cannot be imported: {exc}",
        help="render the base with `merge none`, or the LoRAs with --adapters",
    )
