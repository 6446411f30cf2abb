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
                     (`_retarget_kv`), so the text-encoder merge's error is not passed on;
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
from scenecraft.events import MergeStage, Reporter, emit
from scenecraft.merge import features as F
from scenecraft.merge.config import ENGINE_REVISION, Loraclr, MethodParams, Stages, parse
from scenecraft.merge.fusion import ridge_solve
from scenecraft.merge.methods import merge_batch
from scenecraft.merge.quality import QualityLog, batch_quality
from scenecraft.merge.types import ConceptLoRA, MergeConfig
from scenecraft.sdparts import cross_attention_kv

TEXT, KV, SPATIAL, FALLBACK = "text-encoder", "cross-attention", "spatial", "fallback"
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


# ----------------------------------------------------------------------------- 2. solving


class _Run:
    """State of one merge: modules, concepts, results, figures."""

    def __init__(
        self,
        pipe: Any,
        concepts: list[ConceptLoRA],
        params: MethodParams,
        stages: Stages,
        cfg: MergeConfig,
        modules: dict[str, nn.Module],
        reporter: Reporter | None,
    ):
        self.pipe, self.concepts, self.params, self.stages = pipe, concepts, params, stages
        self.cfg, self.modules, self.reporter = cfg, modules, reporter
        # rows kept per concept and layer: the block's `max_rows`, else the engine's defaults
        self.text_max_rows = stages.max_rows or cfg.text_max_rows
        self.spatial_max_rows = stages.max_rows or cfg.spatial_max_rows
        self.weights: dict[str, torch.Tensor] = {}  # path -> W* fp32 on the module's device
        self.log = QualityLog([c.name for c in concepts])
        self.layer_stats: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, dict[str, int]] = defaultdict(dict)  # stage -> concept -> rows
        self.seconds: dict[str, float] = defaultdict(float)
        # (concept, to_k / to_v path) -> ΔW'_c: its own update re-aimed at the merged text
        # encoder's context (`_retarget_kv`, with co_subjects or scene_prompts)
        self.retargeted: dict[tuple[int, str], torch.Tensor] = {}

    def base(self, path: str) -> torch.Tensor:
        return F.weight_matrix(self.modules[path]).detach().float()

    def delta(self, c: int, path: str) -> torch.Tensor:
        if (c, path) in self.retargeted:
            return self.retargeted[(c, path)]
        concept = self.concepts[c]
        if path not in concept.layers:
            return torch.zeros_like(self.base(path))
        return concept.delta(path).to(self.base(path).device)

    def members(self, path: str, method: MethodParams) -> tuple[int, ...]:
        """Concepts taking part at a layer: all for feature methods (ΔW_c = 0 where a concept has
        no LoRA: its inputs should keep the base behaviour), only those with the layer otherwise."""
        if method.feature_based:
            return tuple(range(len(self.concepts)))
        return tuple(c for c, concept in enumerate(self.concepts) if path in concept.layers)

    def solve(
        self,
        stage: str,
        paths: list[str],
        X: list[dict[str, torch.Tensor]] | None,
        method: MethodParams,
    ) -> None:
        """Merge ``paths``, batched by (shape, members); X[c][path] (n_c, in), None = data-free."""
        if not paths:
            return
        start = time.perf_counter()
        groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
        for p in paths:
            groups[(tuple(self.base(p).shape), self.members(p, method))].append(p)
        batches = []
        for (shape, members), group in sorted(groups.items()):
            size = max(1, self.cfg.batch_elements // (len(members) * shape[0] * shape[1]))
            batches += [(group[i : i + size], members) for i in range(0, len(group), size)]
        for done, (batch, members) in enumerate(batches):
            detail = f"{len(batch)} × {tuple(self.base(batch[0]).shape)}"
            emit(self.reporter, MergeStage(stage, done, len(batches), detail))
            self._solve_batch(stage, batch, members, X, method)
        emit(self.reporter, MergeStage(stage, len(batches), len(batches)))
        self.seconds[stage] += time.perf_counter() - start

    def _solve_batch(
        self,
        stage: str,
        batch: list[str],
        members: tuple[int, ...],
        X: list[dict[str, torch.Tensor]] | None,
        method: MethodParams,
    ) -> None:
        W0 = torch.stack([self.base(p) for p in batch])  # (L, out, in)
        deltas = [
            torch.stack([self.delta(c, p) for p in batch]) for c in members
        ]  # C × (L, out, in)
        Xs = None if X is None else [_stack_rows([X[c][p] for p in batch]) for c in members]
        W, stats = merge_batch(method, W0, deltas, Xs)  # a fallback: its model's defaults
        for p, w, st in zip(batch, W, stats, strict=True):
            self.weights[p] = w
            self.layer_stats[p] = {"stage": stage, "method": method.method, **st}
        if method is self.params:
            self.log.stage(stage).solved += len(batch)
        if Xs is not None:
            e, s = batch_quality(W, W0, deltas, Xs)
            self.log.add(stage, e, s, stats, list(members))


def _stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """L × (n_l, in) -> (L, max n_l, in), zero-padded (zero rows change no X-based quantity)."""
    n = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), n, rows[0].shape[1])
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
    return out


# ------------------------------------------------------------------------------- 3. stages


def _text_rows(
    run: _Run, c: int, watched: dict[str, nn.Module], prompts: list[str], step: str = ""
) -> dict[str, torch.Tensor]:
    """Concept c's stage-1 rows of ``watched`` under the text encoder as currently weighted;
    counts its rows (the most any layer got) for the figures."""
    concept = run.concepts[c]
    emit(run.reporter, MergeStage(TEXT, c, len(run.concepts), f"features{step}: {concept.name}"))
    X = F.text_rows(run.pipe, watched, prompts, run.text_max_rows, run.stages.seed + c)
    n = max(int(x.shape[0]) for x in X.values())
    run.rows[TEXT][concept.name] = max(run.rows[TEXT].get(concept.name, 0), n)
    return X


def _text_stage(
    run: _Run, paths: list[str], prompts: list[list[str]]
) -> list[dict[str, torch.Tensor]]:
    """X_c for text-encoder ``paths`` from each concept's own text encoder."""
    watched = {p: run.modules[p] for p in paths}
    out = []
    for c, concept in enumerate(run.concepts):
        with F.patched(run.modules, F.own_weights(concept, run.modules, F.TEXT_PREFIXES)):
            out.append(_text_rows(run, c, watched, prompts[c]))
    return out


def _text_stage_sequential(
    run: _Run, paths: list[str], prompts: list[list[str]], method: MethodParams
) -> None:
    """Stage 1 in forward order (``sequential``, the default): wave by wave
    (`features.input_waves`), X_c is read from the text encoder merged so far, so each layer is
    fitted on the inputs it will get in the merged model, not on its own encoder's inputs;
    targets stay Y_c = X_c (W0 + ΔW_c)ᵀ on those inputs. Aiming each update at its own
    encoder's output instead (a ridge map, as `_retarget_kv`) lost identity on the toy world
    (docs/loraclr.md)."""
    waves = F.input_waves(run.pipe, {p: run.modules[p] for p in paths}, prompts[0][0])
    for k, wave in enumerate(waves):
        merged = {p: w for p, w in run.weights.items() if p.startswith(F.TEXT_PREFIXES)}
        watched = {p: run.modules[p] for p in wave}
        with F.patched(run.modules, merged):  # once per wave: shared by every concept
            X = [
                _text_rows(run, c, watched, prompts[c], f" {k + 1}/{len(waves)}")
                for c in range(len(run.concepts))
            ]
        run.solve(TEXT, wave, X, method)


def _kv_stage(
    run: _Run, paths: list[str], prompts: list[list[str]], texts: dict[str, str]
) -> list[dict[str, torch.Tensor]]:
    """X_c for to_k / to_v ``paths``: merged text encoder states at the concept's tokens."""
    out = []
    for c, concept in enumerate(run.concepts):
        xs = _token_context(run, concept, prompts[c], texts, paths)
        run.rows[KV][concept.name] = max(int(x.shape[0]) for x in xs.values())
        out.append(xs)
    return out


def _token_context(
    run: _Run, concept: ConceptLoRA, prompts: list[str], texts: dict[str, str], paths: list[str]
) -> dict[str, torch.Tensor]:
    """path -> (n, dim): the context the pipeline's text encoder(s), as currently weighted, give
    on ``prompts`` at the rows stage 2 reads (from the concept's first token on, capped); one
    tensor for every path, or per cross-attention layer with ED-LoRA layer-wise tokens."""
    words = [texts.get(t, t) for t in concept.tokens]
    return F.kv_token_states(run.pipe, prompts, words, paths, run.text_max_rows)


def _own_contexts(
    run: _Run, paths: list[str], prompts: list[list[str]], texts: dict[str, str]
) -> list[dict[str, torch.Tensor]]:
    """X_c^own (n_c, dim) per path: the context each concept's OWN text encoder gives at the
    rows stage 2 reads (`_token_context`, as `_kv_stage`: row i of both is the same token)."""
    out = []
    for concept, ps in zip(run.concepts, prompts, strict=True):
        with F.patched(run.modules, F.own_weights(concept, run.modules, F.TEXT_PREFIXES)):
            out.append(_token_context(run, concept, ps, texts, paths))
    return out


def _retarget_kv(
    run: _Run,
    paths: list[str],
    X: list[dict[str, torch.Tensor]],
    own: list[dict[str, torch.Tensor]],
) -> None:
    """Aim each concept's to_k / to_v update at what its own LoRA gives end to end.

    Stage 2 fits W* X_c ≈ (W0 + ΔW_c) X_c on the MERGED encoder's context X_c, but the concept's
    own LoRA reads its OWN encoder's context X_c^own: the text-encoder merge's error passes
    straight into the UNet. A ridge map from one context to the other, fitted on the concept's
    rows (ε relative, as in gradient fusion),

        A_c = argmin_A ‖X_c A − X_c^own‖² + ε‖A − I‖²            (dim, dim)
        ΔW'_c = (W0 + ΔW_c) A_cᵀ − W0                             (out, dim)

    makes W0 + ΔW'_c on the merged context give (W0 + ΔW_c) on the own one; the method then
    merges the ΔW'_c. Only with rows shaped like the rendered prompts (``co_subjects``'
    region-shaped prompts, or ``scene_prompts``' own): fitted on the template prompts alone it
    extrapolates to the rendered ones and lost the same-class pair (docs/loraclr.md)."""
    for c in range(len(run.concepts)):
        maps: dict[int, torch.Tensor] = {}  # one A_c per distinct context (ED-LoRA: per layer)
        for p in paths:
            x = X[c][p]  # (n, dim)
            if id(x) not in maps:
                E, _ = ridge_solve(x[None], (own[c][p] - x)[None])  # (1, dim, dim): A_c − I
                maps[id(x)] = torch.eye(x.shape[1], dtype=torch.float64, device=x.device) + E[0]
            A = maps[id(x)]
            W = run.base(p).double() + run.delta(c, p).double()  # (out, dim)
            run.retargeted[(c, p)] = (W @ A.T - run.base(p).double()).float()


def _other_nouns(concepts: list[ConceptLoRA], concept: ConceptLoRA) -> tuple[str, ...]:
    """The class nouns of the concepts merged with ``concept`` (co_subjects' feature prompts;
    `features.concept_prompts` drops repeats)."""
    return tuple(c.class_noun for c in concepts if c is not concept and c.class_noun)


def _spatial_stage(
    run: _Run, paths: list[str], prompts: list[list[str]]
) -> list[dict[str, torch.Tensor]]:
    """X_c for spatial ``paths`` from a short sampling run of concept c's own UNet."""
    cfg, out = run.cfg, []
    for c, concept in enumerate(run.concepts):
        emit(run.reporter, MergeStage(SPATIAL, c, len(run.concepts), f"features: {concept.name}"))
        own = F.own_weights(concept, run.modules, "unet.")
        watched = {p: run.modules[p] for p in paths}
        with F.patched(run.modules, own):
            X = F.spatial_rows(
                run.pipe,
                watched,
                prompts[c][0],
                cfg.spatial_steps,
                cfg.spatial_size,
                cfg.spatial_guidance,
                run.spatial_max_rows,
                run.stages.seed + c,
            )
        run.rows[SPATIAL][concept.name] = max(int(x.shape[0]) for x in X.values())
        out.append(X)
    return out


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
    run = _Run(pipe, concepts, params, settings, cfg, modules, reporter)
    touched = {p: [c for c in concepts if p in c.layers] for p in modules}
    single = [p for p, cs in touched.items() if len(cs) == 1 and not cfg.solve_single]
    stages: dict[str, list[str]] = defaultdict(list)
    kv = cross_attention_kv(pipe.unet, "unet.")
    for p in sorted(set(modules) - set(single)):
        stages[stage_of(p, modules[p], settings.spatial, kv)].append(p)
    for p in single:
        run.weights[p] = run.base(p) + touched[p][0].delta(p).to(run.base(p).device)
    # data-free methods on a pipeline whose features cannot be read merge without figures
    features = params.feature_based or (cfg.figures and F.unsupported_reason(pipe) is None)
    fallback = parse(settings.fallback) if params.feature_based else params
    emb: dict[str, dict[str, torch.Tensor]] = {}
    for concept in concepts:
        for component, rows in concept.embeddings.items():
            emb.setdefault(component, {}).update(rows)
    needs_text = features and any(stages[s] for s in (TEXT, KV, SPATIAL))
    with F.token_embeddings(pipe, concepts) if needs_text else nullcontext() as texts:
        others = [_other_nouns(concepts, c) if settings.co_subjects else () for c in concepts]
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
            _text_stage_sequential(run, stages[TEXT], prompts, params)
        else:
            X = _text_stage(run, stages[TEXT], prompts) if features and stages[TEXT] else None
            run.solve(TEXT, stages[TEXT], X, params if X is not None else fallback)
        # the K/V map needs rows shaped like the rendered prompts: scene or region-shaped ones
        shaped = settings.scene_prompts or any(
            o and c.class_noun for c, o in zip(concepts, others, strict=True)
        )
        retarget = shaped and params.feature_based and bool(stages[KV])
        own = _own_contexts(run, stages[KV], prompts, texts or {}) if retarget else None
        merged_te = {p: w for p, w in run.weights.items() if p.startswith(F.TEXT_PREFIXES)}
        with F.patched(modules, merged_te):
            # 3. cross-attention K/V from the merged text encoder
            X = (
                _kv_stage(run, stages[KV], prompts, texts or {})
                if features and stages[KV]
                else None
            )
            if X is not None and own is not None:
                _retarget_kv(run, stages[KV], X, own)
            run.solve(KV, stages[KV], X, params if X is not None else fallback)
            # 4. spatial layers from each concept's own sampling run
            X = (
                _spatial_stage(run, stages[SPATIAL], prompts)
                if features and stages[SPATIAL]
                else None
            )
            run.solve(SPATIAL, stages[SPATIAL], X, params if X is not None else fallback)
        # 5. layers no stage covers
        run.solve(FALLBACK, stages[FALLBACK], None, fallback)
    weights = {
        p: w.detach().to("cpu", F.weight_matrix(modules[p]).dtype).clone()
        for p, w in run.weights.items()
    }
    figures = {
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
    return MergeOutcome(weights, emb, figures)
