"""The merge engine's working parts: the state of one merge (`Run`, which solves batches of
layers) and the feature stages that read each concept's rows (text encoder, cross-attention
K/V, spatial). `scenecraft.merge.engine.run_merge` drives them in order.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from scenecraft.events import MergeStage, Reporter, emit
from scenecraft.merge import features as F
from scenecraft.merge.config import MethodParams, Stages
from scenecraft.merge.fusion import ridge_solve
from scenecraft.merge.methods import merge_batch
from scenecraft.merge.quality import QualityLog, batch_quality
from scenecraft.merge.types import ConceptLoRA, MergeConfig

TEXT, KV, SPATIAL, FALLBACK = "text-encoder", "cross-attention", "spatial", "fallback"


# ----------------------------------------------------------------------------- solving


class Run:
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
        # encoder's context (`retarget_kv`, with co_subjects or scene_prompts)
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


# ---------------------------------------------------------------------------------- stages


def _text_rows(
    run: Run, c: int, watched: dict[str, nn.Module], prompts: list[str], step: str = ""
) -> dict[str, torch.Tensor]:
    """Concept c's stage-1 rows of ``watched`` under the text encoder as currently weighted;
    counts its rows (the most any layer got) for the figures."""
    concept = run.concepts[c]
    emit(run.reporter, MergeStage(TEXT, c, len(run.concepts), f"features{step}: {concept.name}"))
    X = F.text_rows(run.pipe, watched, prompts, run.text_max_rows, run.stages.seed + c)
    n = max(int(x.shape[0]) for x in X.values())
    run.rows[TEXT][concept.name] = max(run.rows[TEXT].get(concept.name, 0), n)
    return X


def text_stage(
    run: Run, paths: list[str], prompts: list[list[str]]
) -> list[dict[str, torch.Tensor]]:
    """X_c for text-encoder ``paths`` from each concept's own text encoder."""
    watched = {p: run.modules[p] for p in paths}
    out = []
    for c, concept in enumerate(run.concepts):
        with F.patched(run.modules, F.own_weights(concept, run.modules, F.TEXT_PREFIXES)):
            out.append(_text_rows(run, c, watched, prompts[c]))
    return out


def text_stage_sequential(
    run: Run, paths: list[str], prompts: list[list[str]], method: MethodParams
) -> None:
    """Stage 1 in forward order (``sequential``, the default): wave by wave
    (`features.input_waves`), X_c is read from the text encoder merged so far, so each layer is
    fitted on the inputs it will get in the merged model, not on its own encoder's inputs;
    targets stay Y_c = X_c (W0 + ΔW_c)ᵀ on those inputs. Aiming each update at its own
    encoder's output instead (a ridge map, as `retarget_kv`) lost identity on the toy world
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


def kv_stage(
    run: Run, paths: list[str], prompts: list[list[str]], texts: dict[str, str]
) -> list[dict[str, torch.Tensor]]:
    """X_c for to_k / to_v ``paths``: merged text encoder states at the concept's tokens."""
    out = []
    for c, concept in enumerate(run.concepts):
        xs = _token_context(run, concept, prompts[c], texts, paths)
        run.rows[KV][concept.name] = max(int(x.shape[0]) for x in xs.values())
        out.append(xs)
    return out


def _token_context(
    run: Run, concept: ConceptLoRA, prompts: list[str], texts: dict[str, str], paths: list[str]
) -> dict[str, torch.Tensor]:
    """path -> (n, dim): the context the pipeline's text encoder(s), as currently weighted, give
    on ``prompts`` at the rows stage 2 reads (from the concept's first token on, capped); one
    tensor for every path, or per cross-attention layer with ED-LoRA layer-wise tokens."""
    words = [texts.get(t, t) for t in concept.tokens]
    return F.kv_token_states(run.pipe, prompts, words, paths, run.text_max_rows)


def own_contexts(
    run: Run, paths: list[str], prompts: list[list[str]], texts: dict[str, str]
) -> list[dict[str, torch.Tensor]]:
    """X_c^own (n_c, dim) per path: the context each concept's OWN text encoder gives at the
    rows stage 2 reads (`_token_context`, as `kv_stage`: row i of both is the same token)."""
    out = []
    for concept, ps in zip(run.concepts, prompts, strict=True):
        with F.patched(run.modules, F.own_weights(concept, run.modules, F.TEXT_PREFIXES)):
            out.append(_token_context(run, concept, ps, texts, paths))
    return out


def retarget_kv(
    run: Run,
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


def other_nouns(concepts: list[ConceptLoRA], concept: ConceptLoRA) -> tuple[str, ...]:
    """The class nouns of the concepts merged with ``concept`` (co_subjects' feature prompts;
    `features.concept_prompts` drops repeats)."""
    return tuple(c.class_noun for c in concepts if c is not concept and c.class_noun)


def spatial_stage(
    run: Run, paths: list[str], prompts: list[list[str]]
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
