"""The merge engine: C concept LoRAs -> one dense W* per changed module (docs/loraclr.md).

    outcome = run_merge(pipe, concepts, Loraclr(iterations=80))   # MergeOutcome(weights, embeddings, figures)

Stages (each uses the merged result of the one before):
  1. text-encoder    Linear layers of every text encoder (SDXL: both), in forward order
                     (``sequential``, default): X_c from the text encoder merged so far (the
                     layers before the module already merged; without ``sequential``: each
                     concept's OWN encoder, base + its LoRA), the concept's token embeddings, on
                     "photo of a {token}", "{token}" (+ class noun), and with ``co_subjects``
                     (default) region-shaped prompts: "{token} {class}, {class} and {other}"
                     for each other merged concept's class noun, both orders; with
                     ``continuations`` N (opt-in) "{token} {class}, {phrase}" for N seeded
                     phrases of 1–4 of the tokenizer's common whole words;
  2. cross-attention UNet to_k / to_v (attn2; attn1 too where it attends to the prompt); X_c = the context the MERGED text encoder(s) give
                     (SDXL: both encoders' penultimate states concatenated, 2048 wide) from
                     the concept's first token to the end token; with region-shaped rows
                     (``co_subjects``) or ``scene_prompts`` each concept's update is first
                     aimed at its OWN encoder's context
                     (`retarget_kv`), so the text-encoder merge's error is not passed on;
  3. spatial         (optional, ``spatial``) other UNet Linear / 1×1 conv layers;
                     X_c from a short sampling run of concept c's own UNet.
A layer no concept touches is left alone; a layer one concept touches gets W0 + ΔW_c; a layer
several touch is solved by the method, batched over layers of equal shape. Multi-concept layers
that no stage covers (3×3 convs, spatial layers with stage 3 off, …) use the ``fallback`` method
(the mean of the updates by default: what least squares gives when the layer's inputs cannot
tell the concepts apart).
The pipeline's weights are patched only temporarily and come back unchanged.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from scenecraft.diagnostics import error
from scenecraft.events import Reporter
from scenecraft.merge import features as F
from scenecraft.merge.config import ENGINE_REVISION, Loraclr, MethodParams, Stages, parse
from scenecraft.merge.engine_stages import (
    FALLBACK,
    KV,
    SPATIAL,
    TEXT,
    Run,
    kv_stage,
    other_nouns,
    own_contexts,
    retarget_kv,
    spatial_stage,
    text_stage,
    text_stage_sequential,
)
from scenecraft.merge.types import ConceptLoRA, MergeConfig
from scenecraft.sdparts import cross_attention_kv

__all__ = ["ENGINE_REVISION", "MergeConfig", "MergeOutcome", "refine_ridge_for", "run_merge"]


@dataclass
class MergeOutcome:
    weights: dict[str, torch.Tensor]  # module path -> merged W* (out, in), changed modules only
    embeddings: dict[str, dict[str, torch.Tensor]]  # component -> token -> (n, dim) rows
    figures: dict[str, Any] = field(default_factory=dict)  # JSON-able quality figures


def stage_of(path: str, module: nn.Module, spatial: bool, kv: set[str]) -> str:
    """Which feature stage covers a module (or FALLBACK); ``kv``: the UNet's cross-attention
    to_k / to_v paths (`sdparts.cross_attention_kv`), whose inputs are prompt tokens."""
    if not F.has_rows(module):
        return FALLBACK
    if path.startswith(F.TEXT_PREFIXES):
        return TEXT
    if path in kv:
        return KV
    if path.startswith("unet.") and spatial:
        return SPATIAL
    return FALLBACK


# ------------------------------------------------------------------------------- 1. checks


def _check(pipe: Any, concepts: list[ConceptLoRA], params: MethodParams) -> dict[str, nn.Module]:
    if not concepts:
        raise error(
            "merge-no-concepts",
            "nothing to merge: no concepts given",
            help="list the concepts' LoRAs in the merge block",
        )
    reason = F.unsupported_reason(pipe)
    if params.feature_based and reason is not None:
        raise error(
            "merge-unsupported-family",
            f"`{params.method}` cannot collect features from this `{type(pipe).__name__}`: {reason}",
            notes=(
                "feature-based merges support SD 1.x, SD 2.x and SDXL (CLIP text encoders and "
                "a cross-attention UNet); not supported: " + "; ".join(F.UNSUPPORTED_FAMILIES),
            ),
            help="use a data-free method (linear, average, ties, dare) for this pipeline",
        )
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise error(
            "merge-duplicate-concept",
            f"concept names repeat: {names}",
            help="give every concept its own name",
        )
    seen: dict[str, str] = {}
    for c in concepts:
        for rows in c.embeddings.values():
            for token in rows:
                if token in seen and seen[token] != c.name:
                    raise error(
                        "merge-duplicate-token",
                        f"token `{token}` is bound by `{seen[token]}` and `{c.name}`",
                        help="give each concept its own trigger token",
                    )
                seen[token] = c.name
    paths = sorted({p for c in concepts for p in c.layers})
    modules = F.resolve_modules(pipe, paths)
    for c in concepts:
        for p, layer in c.layers.items():
            shape = tuple(F.weight_matrix(modules[p]).shape)
            got = (layer.up.shape[0], layer.down.shape[1])
            if got != shape or layer.up.shape[1] != layer.down.shape[0]:
                raise error(
                    "lora-shape-mismatch",
                    f"LoRA of `{c.name}` at `{p}` is {got} (rank {layer.down.shape[0]}), "
                    f"the base layer {shape}",
                    help="the LoRA was trained for a different base model",
                )
    return modules


def refine_ridge_for(concepts: list[ConceptLoRA], recipe: str) -> bool:
    """loraclr's ``refine_ridge`` where the merge block leaves it unset: on (the optimiser steps
    keep their start's ridge) when every concept has a class noun and no two share one. There
    the start already tells the concepts apart, and steps that undo the ridge only extrapolate
    into input directions the feature prompts barely excite, where a scene's own words land.
    Concepts of one class (or without one) need what the unridged steps do: push apart outputs
    the start leaves close. The reference recipe has no ridged start. Measured on the toy world
    in docs/loraclr.md ("The ridge in the steps")."""
    nouns = [c.class_noun.strip().lower() if c.class_noun else None for c in concepts]
    distinct = all(nouns) and len(set(nouns)) == len(nouns)
    return recipe == "ours" and distinct


def run_merge(
    pipe: Any,
    concepts: list[ConceptLoRA],
    params: MethodParams,
    reporter: Reporter | None = None,
    config: MergeConfig | None = None,
) -> MergeOutcome:
    """Merge ``concepts`` into ``pipe``'s base weights with the method ``params`` is the model of
    (module docstring), taken as is: the checker (scene files) or the model itself (Python
    callers) validated it. ``config``: the engine's own knobs.
    """
    cfg = config or MergeConfig()
    start = time.perf_counter()
    # 1. check inputs, sort modules into stages
    modules = _check(pipe, concepts, params)
    if isinstance(params, Loraclr) and params.refine_ridge is None:
        params = params.model_copy(
            update={"refine_ridge": refine_ridge_for(concepts, params.recipe)}
        )
    settings = params if isinstance(params, Stages) else cfg.figure_stages
    run = Run(pipe, concepts, params, settings, cfg, modules, reporter)
    single, stages = _sort_modules(run)
    # data-free methods on a pipeline whose features cannot be read merge without figures
    features = params.feature_based or (cfg.figures and F.unsupported_reason(pipe) is None)
    fallback = parse(settings.fallback) if params.feature_based else params
    emb: dict[str, dict[str, torch.Tensor]] = {}
    for concept in concepts:
        for component, rows in concept.embeddings.items():
            emb.setdefault(component, {}).update(rows)
    _solve_stages(run, stages, features, fallback)  # 2. - 5.
    weights = {
        p: w.detach().to("cpu", F.weight_matrix(modules[p]).dtype).clone()
        for p, w in run.weights.items()
    }
    figures = _figures(run, single, stages, fallback, weights, start)
    return MergeOutcome(weights, emb, figures)


def _sort_modules(run: Run) -> tuple[list[str], dict[str, list[str]]]:
    """Layers one concept touches (given W0 + ΔW_c at once, unless ``solve_single``) and the
    others sorted into stages (`stage_of`)."""
    concepts, modules, settings = run.concepts, run.modules, run.stages
    touched = {p: [c for c in concepts if p in c.layers] for p in modules}
    single = [p for p, cs in touched.items() if len(cs) == 1 and not run.cfg.solve_single]
    stages: dict[str, list[str]] = defaultdict(list)
    kv = cross_attention_kv(run.pipe.unet, "unet.")
    for p in sorted(set(modules) - set(single)):
        stages[stage_of(p, modules[p], settings.spatial, kv)].append(p)
    for p in single:
        run.weights[p] = run.base(p) + touched[p][0].delta(p).to(run.base(p).device)
    return single, stages


def _solve_stages(
    run: Run, stages: dict[str, list[str]], features: bool, fallback: MethodParams
) -> None:
    """Steps 2. - 5. of `run_merge`, in order, each on the result of the one before."""
    pipe, concepts, params, settings = run.pipe, run.concepts, run.params, run.stages
    cfg, modules = run.cfg, run.modules
    needs_text = features and any(stages[s] for s in (TEXT, KV, SPATIAL))
    with F.token_embeddings(pipe, concepts) if needs_text else nullcontext() as texts:
        others = [other_nouns(concepts, c) if settings.co_subjects else () for c in concepts]
        phrases = (
            F.continuations(F.common_words(pipe.tokenizer), settings.continuations, settings.seed)
            if needs_text and settings.continuations
            else []
        )
        prompts = [
            F.concept_prompts(c, texts or {}, cfg.templates, settings.scene_prompts, o, phrases)
            for c, o in zip(concepts, others, strict=True)
        ]
        # 2. text encoder
        if settings.sequential and params.feature_based and stages[TEXT]:
            text_stage_sequential(run, stages[TEXT], prompts, params)
        else:
            X = text_stage(run, stages[TEXT], prompts) if features and stages[TEXT] else None
            run.solve(TEXT, stages[TEXT], X, params if X is not None else fallback)
        # the K/V map needs rows shaped like the rendered prompts: scene or region-shaped ones
        shaped = settings.scene_prompts or any(
            o and c.class_noun for c, o in zip(concepts, others, strict=True)
        )
        retarget = shaped and params.feature_based and bool(stages[KV])
        own = own_contexts(run, stages[KV], prompts, texts or {}) if retarget else None
        merged_te = {p: w for p, w in run.weights.items() if p.startswith(F.TEXT_PREFIXES)}
        with F.patched(modules, merged_te):
            # 3. cross-attention K/V from the merged text encoder
            X = kv_stage(run, stages[KV], prompts, texts or {}) if features and stages[KV] else None
            if X is not None and own is not None:
                retarget_kv(run, stages[KV], X, own)
            run.solve(KV, stages[KV], X, params if X is not None else fallback)
            # 4. spatial layers from each concept's own sampling run
            X = (
                spatial_stage(run, stages[SPATIAL], prompts)
                if features and stages[SPATIAL]
                else None
            )
            run.solve(SPATIAL, stages[SPATIAL], X, params if X is not None else fallback)
        # 5. layers no stage covers
        run.solve(FALLBACK, stages[FALLBACK], None, fallback)


def _figures(
    run: Run,
    single: list[str],
    stages: dict[str, list[str]],
    fallback: MethodParams,
    weights: dict[str, torch.Tensor],
    start: float,
) -> dict[str, Any]:
    """The merge's JSON-able figures: what was merged, how, how well and how fast."""
    params, cfg, concepts = run.params, run.cfg, run.concepts
    return {
        "method": params.method,
        "params": params.values(),
        "config": {**asdict(cfg), "figure_stages": cfg.figure_stages.values()},
        "concepts": [c.name for c in concepts],
        "modules": {
            "changed": len(weights),
            "single": len(single),
            **{stage: len(stages[stage]) for stage in (TEXT, KV, SPATIAL, FALLBACK)},
        },
        "fallback_method": fallback.method,
        "feature_rows": {k: dict(v) for k, v in run.rows.items()},
        "stages": run.log.summary(),
        "layers": run.layer_stats,
        "seconds": {
            **{k: round(v, 3) for k, v in run.seconds.items()},
            "total": round(time.perf_counter() - start, 3),
        },
    }
