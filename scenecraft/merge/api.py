"""``merge(spec, pipe)``: read the concepts' LoRAs, serve the cache or run the merge, save it.

    result = merge(plan.merge, pipe)          # MergeResult(key, path, cached, figures, manifest)
    apply_merge(pipe, result)                 # patch the pipeline in place

The cache key covers everything that determines the output (see `merge_identity`), so a
repeated merge is a cache hit and any changed input (LoRA bytes, weight, tokens, method,
params, base model, dtype, scenecraft version) is a miss.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

import scenecraft
from scenecraft.diagnostics import Collector, DiagnosticError, error
from scenecraft.events import MergeFinished, MergeStage, MergeStarted, Notice, Reporter, emit
from scenecraft.files import sha256_file
from scenecraft.merge import cache
from scenecraft.merge.apply import APPLIED_ATTR, changed_deltas
from scenecraft.merge.cache import (
    ENTRY_FORMAT,
    base_identity,
    cache_key,
    entries,
    lookup,
    mark_used,
    prune,
    quarantine,
    read_manifest,
    resolve_cache_dir,
    verify_entry,
    write_entry,
)
from scenecraft.merge.config import MethodParams
from scenecraft.merge.engine import ENGINE_REVISION, run_merge
from scenecraft.merge.formats import read_concept_lora, read_embedding
from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.merge.types import ConceptLoRA
from scenecraft.plan import ConceptSpec, MergeSpec, merge_key


class Outcome(Protocol):
    """What a run function returns (`scenecraft.merge.engine.MergeOutcome`)."""

    weights: dict[str, torch.Tensor]  # module path -> merged W*, only modules changed
    embeddings: dict[str, dict[str, torch.Tensor]]  # component -> token -> (n, dim)
    figures: dict[str, Any]  # JSON-able quality figures


# run_merge(pipe, concepts, the method's parameter model, reporter)
RunMerge = Callable[[Any, list[ConceptLoRA], MethodParams, Reporter | None], Outcome]


@dataclass
class MergeResult:
    key: str  # content hash; "" when nothing was merged
    path: Path | None  # the cache entry; None when nothing was merged (method "none")
    cached: bool  # served from the cache
    figures: dict[str, Any] = field(default_factory=dict)  # quality figures of the merge
    manifest: dict[str, Any] = field(default_factory=dict)  # the entry's manifest.json

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path) if self.path else None,
            "cached": self.cached,
            "figures": self.figures,
        }


@dataclass
class _NoMerge:
    """The outcome when no concept has LoRA layers: only embeddings to carry."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def _default_run() -> RunMerge:
    return run_merge


class _WithoutUNet:
    """A transformer pipeline (FLUX) as the merge engine reads it: the engine sorts layers into
    stages by ``pipe.unet``'s cross-attention K/V, which an MM-DiT has none of; here that is an
    empty module (every transformer layer goes to the data-free stage), all else the pipeline's.
    """

    unet = torch.nn.Module()

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


# ------------------------------------------------------------------------------ 1. reading


def _read_concept(spec: ConceptSpec, index: ModuleIndex) -> ConceptLoRA | None:
    """A concept's LoRA and/or embedding; None for a token-only concept (nothing to merge)."""
    if spec.lora is None and spec.embedding is None:
        return None
    if spec.lora is not None:
        concept = read_concept_lora(
            spec.lora,
            name=spec.name,
            tokens=spec.tokens,
            weight=spec.weight,
            pipe_or_module_index=index,
        )
    else:
        concept = ConceptLoRA(spec.name, spec.tokens, {}, spec.weight)
    concept.class_noun = spec.class_noun
    concept.prompts = spec.prompts
    if spec.embedding is not None:
        rows = read_embedding(
            spec.embedding, name=spec.name, tokens=spec.tokens, pipe_or_module_index=index
        )
        for component, tokens in rows.items():
            concept.embeddings.setdefault(component, {}).update(tokens)
        concept.metadata["embedding"] = spec.embedding
        concept.metadata["embedding_sha256"] = sha256_file(spec.embedding)
    return concept


def read_concepts(
    spec: MergeSpec, pipe: Any, reporter: Reporter | None = None
) -> list[ConceptLoRA]:
    """Read and check every concept against ``pipe``; all errors are raised together."""
    index = ModuleIndex.from_pipe(pipe)
    if index.family is None and spec.base.family:  # the scene file declares what the weights hide
        index = replace(index, family=spec.base.family)
    collector = Collector()
    concepts: list[ConceptLoRA] = []
    for i, concept_spec in enumerate(spec.concepts):
        with collector.guard():
            concept = _read_concept(concept_spec, index)
            if concept is not None:
                concepts.append(concept)
        emit(reporter, MergeStage("load", i + 1, len(spec.concepts), concept_spec.name))
    collector.check()
    return concepts


# ------------------------------------------------------------------------------- 2. the key


def _pipe_dtype(pipe: Any) -> torch.dtype:
    for name in ("unet", "transformer", "text_encoder"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return next(module.parameters()).dtype
    return torch.float32


def merge_identity(
    spec: MergeSpec, concepts: list[ConceptLoRA], base: dict[str, Any], dtype: torch.dtype
) -> dict[str, Any]:
    """The merge's one identity is the plan's key (`MergeSpec.key`: method, resolved params,
    concepts, LoRA digests at compile time); the cache entry adds what the plan cannot know:
    the base weights' identity, the dtype, the scenecraft version, the engine revision
    (`engine.ENGINE_REVISION`) and the entry format, and the files' digests as read now (a LoRA
    changed since the plan was compiled is a new entry)."""
    read = {c.name: (c.sha256 or None, c.metadata.get("embedding_sha256")) for c in concepts}
    files = [read.get(c.name, (None, None)) for c in spec.concepts]
    return {
        "plan_key": spec.key or merge_key(spec, files),
        "entry_format": ENTRY_FORMAT,
        "engine_revision": ENGINE_REVISION,
        "scenecraft_version": scenecraft.__version__,
        "base": base,
        "dtype": str(dtype),
        "method": spec.method,
        "params": spec.params.values(),
        "files": files,
    }


def merge_lineage(spec: MergeSpec, identity: dict[str, Any]) -> str:
    """The entry name the merge would have without its concepts' `scene_prompts` prompts:
    entries that differ only in those prompts share it, so editing a prompt supersedes the
    entry merged for the old one (`cache.prune` keeps the most recently used few)."""
    if not any(c.prompts for c in spec.concepts):
        return cache_key(identity)
    bare = spec.model_copy(
        update={
            "concepts": tuple(c.model_copy(update={"prompts": ()}) for c in spec.concepts),
            "key": "",
        }
    )
    return cache_key({**identity, "plan_key": merge_key(bare, identity["files"])})


def _manifest(
    key: str,
    identity: dict[str, Any],
    concepts: list[ConceptLoRA],
    outcome: Outcome,
    deltas: dict[str, torch.Tensor],
    embeddings: dict[str, dict[str, torch.Tensor]],
    seconds: float,
    lineage: str,
) -> dict[str, Any]:
    return {
        "key": key,
        "plan_key": identity["plan_key"],  # the plan's merge key (`compile` prints it)
        "lineage": lineage,
        "scenecraft_version": identity["scenecraft_version"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "base": identity["base"],
        "dtype": identity["dtype"],
        "method": identity["method"],
        "params": identity["params"],
        "stored": "delta",  # weights.safetensors holds ΔW* = W* − W0
        "weights_dtype": str(next(iter(deltas.values())).dtype) if deltas else None,
        "modules": sorted(deltas),
        "tokens": {component: sorted(rows) for component, rows in embeddings.items()},
        "concepts": [
            {
                "name": c.name,
                "tokens": list(c.tokens),
                "weight": c.weight,
                "lora": c.source or None,
                "lora_sha256": c.sha256 or None,
                "format": c.metadata.get("format"),
                "family": c.family,
                "layers": len(c.layers),
                "embedding": c.metadata.get("embedding"),
                "embedding_sha256": c.metadata.get("embedding_sha256"),
                "class_noun": c.class_noun,
            }
            for c in concepts
        ],
        "figures": outcome.figures,
    }


# -------------------------------------------------------------------------------- 3. merge


def merge(
    spec: MergeSpec,
    pipe: Any,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    run: RunMerge | None = None,
) -> MergeResult:
    """Merge ``spec``'s concepts into ``pipe``'s base, through the cache.

    ``pipe`` must hold the unmodified base model (ΔW* is taken against its weights); it is not
    changed here — see `scenecraft.merge.apply.apply_merge`. ``run`` defaults to
    `scenecraft.merge.engine.run_merge`.
    """
    if spec.method == "none":
        return MergeResult("", None, False)
    start = time.perf_counter()
    root = resolve_cache_dir(cache_dir)
    applied = getattr(pipe, APPLIED_ATTR, None)
    if applied is not None:
        raise error(
            "merge-already-applied",
            f"cannot merge into a pipeline that already carries merge `{applied}`",
            help="pass the unmodified base pipeline to `merge`, then apply the result",
        )
    # 1. read and check every concept's files against the base
    concepts = read_concepts(spec, pipe, reporter)
    if not concepts:
        return MergeResult("", None, False)
    # 2. the key
    dtype = _pipe_dtype(pipe)
    identity = merge_identity(spec, concepts, base_identity(spec.base, root), dtype)
    key = cache_key(identity)
    emit(reporter, MergeStarted(spec.method, tuple(c.name for c in concepts), key))
    # 3. serve the cache
    entry = None if force else lookup(root, key)
    manifest: dict[str, Any] | None = None
    if entry is not None:
        try:
            manifest = verify_entry(entry)  # checksums and finite values: never apply damage
        except DiagnosticError as exc:
            aside = quarantine(entry)
            emit(
                reporter,
                Notice(
                    "warning",
                    f"{exc.diagnostics[0].message}; "
                    + (f"moved aside to `{aside}`" if aside else "removed")
                    + ", rebuilding the merge",
                ),
            )
            entry = None
    if entry is not None and manifest is not None:
        mark_used(entry)  # `cache.prune` never removes what was used in the last minutes
        figures = manifest.get("figures", {})
        seconds = time.perf_counter() - start
        emit(reporter, MergeFinished(key, True, seconds, str(entry), figures))
        return MergeResult(key, entry, True, figures, manifest)
    # 4. merge
    if any(c.layers for c in concepts):
        target = pipe if getattr(pipe, "unet", None) is not None else _WithoutUNet(pipe)
        outcome = (run or _default_run())(target, concepts, spec.params, reporter)
    else:
        outcome = _NoMerge()
    # 5. save ΔW* (fp16 when the base runs in half precision) and the new tokens, atomically
    emit(reporter, MergeStage("save", 0, 1))
    store = torch.float32 if dtype == torch.float32 else torch.float16
    deltas = changed_deltas(pipe, outcome.weights, store)
    embeddings = {comp: dict(rows) for comp, rows in _concept_embeddings(concepts).items()}
    for component, rows in outcome.embeddings.items():
        embeddings.setdefault(component, {}).update(rows)
    seconds = time.perf_counter() - start
    lineage = merge_lineage(spec, identity)
    manifest = _manifest(key, identity, concepts, outcome, deltas, embeddings, seconds, lineage)
    path = write_entry(root, key, deltas, embeddings, manifest)  # merge-cache-unwritable
    mark_used(path)
    emit(reporter, MergeStage("save", 1, 1))
    if lineage != key:  # a prompt edit: drop the entries merged for older prompts
        _prune_superseded(root, lineage, reporter)
    _size_hint(root, reporter)
    emit(
        reporter, MergeFinished(key, False, time.perf_counter() - start, str(path), outcome.figures)
    )
    return MergeResult(key, path, False, outcome.figures, read_manifest(path))


def _prune_superseded(root: Path, lineage: str, reporter: Reporter | None) -> None:
    try:
        removed = prune(root, lineage=lineage)
    except OSError:
        return  # pruning only saves space; the merge itself is done
    if removed:
        mb = sum(e.bytes for e in removed) / 2**20
        emit(
            reporter,
            Notice(
                "info",
                f"removed {len(removed)} cached merge(s) of these concepts for earlier scene "
                f"prompts ({mb:.1f} MB); `scenecraft cache list` shows the cache",
            ),
        )


def _size_hint(root: Path, reporter: Reporter | None) -> None:
    """An info notice when the cache has grown past `cache.HINT_BYTES` (it removes nothing)."""
    listed = entries(root)
    total = sum(e.bytes for e in listed)
    if total > cache.HINT_BYTES:
        emit(
            reporter,
            Notice(
                "info",
                f"the merge cache holds {total / 2**30:.1f} GB in {len(listed)} merges ({root}); "
                "`scenecraft cache prune --older-than 30d` or `--max-size 10G` frees space",
            ),
        )


def _concept_embeddings(concepts: list[ConceptLoRA]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for concept in concepts:
        for component, rows in concept.embeddings.items():
            out.setdefault(component, {}).update(rows)
    return out
