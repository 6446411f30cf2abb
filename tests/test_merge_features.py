"""Feature collection and run_merge on the tiny pipeline with random concept LoRAs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch

from scenecraft.diagnostics import DiagnosticError
from scenecraft.events import Event, MergeStage
from scenecraft.merge import features as F
from scenecraft.merge.config import GradientFusion, Loraclr, Stages, Ties, parse
from scenecraft.merge.engine import MergeConfig, MergeOutcome, run_merge
from scenecraft.merge.types import ConceptLoRA, LoRALayer
from tests._fixtures_merge_engine import (  # noqa: F401  (fixtures)
    engine_concepts_fixture,
    engine_pipe_fixture,
    linear_paths,
    one_thread_fixture,
    random_concept,
)


def _snapshot(pipe: Any) -> dict[str, torch.Tensor]:
    return {
        f"{comp}.{k}": v.clone()
        for comp in ("unet", "text_encoder")
        for k, v in getattr(pipe, comp).state_dict().items()
    }


@pytest.fixture(scope="module")
def loraclr_run(engine_pipe: Any, engine_concepts: list[ConceptLoRA]) -> tuple[Any, ...]:
    before = _snapshot(engine_pipe)
    events: list[Event] = []
    outcome = run_merge(engine_pipe, engine_concepts, Loraclr(), reporter=events.append)
    return outcome, events, before


# ------------------------------------------------------------------------------ run_merge


def test_run_merge_changes_only_lora_modules(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA], loraclr_run: tuple[Any, ...]
) -> None:
    outcome, events, before = loraclr_run
    assert isinstance(outcome, MergeOutcome)
    assert set(outcome.weights) == {p for c in engine_concepts for p in c.layers}
    modules = F.resolve_modules(engine_pipe, list(outcome.weights))
    for path, w in outcome.weights.items():
        assert w.shape == F.weight_matrix(modules[path]).shape
        assert torch.isfinite(w).all()
        assert not torch.equal(w, F.weight_matrix(modules[path])), path
    after = _snapshot(engine_pipe)
    # the pipe is left as it was, except for the new tokens' rows appended to the vocabulary
    assert all(torch.equal(before[k], after[k][: len(before[k])]) for k in before)
    emb = "text_encoder.embeddings.token_embedding.weight"
    assert after[emb].shape[0] == before[emb].shape[0] + 3
    assert any(isinstance(e, MergeStage) and e.stage == "cross-attention" for e in events)


def test_single_concept_layer_gets_its_own_update(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA], loraclr_run: tuple[Any, ...]
) -> None:
    outcome = loraclr_run[0]
    solo = engine_concepts[2]
    (path,) = solo.layers
    base = F.weight_matrix(F.resolve_modules(engine_pipe, [path])[path]).float()
    torch.testing.assert_close(outcome.weights[path], base + solo.delta(path))
    assert outcome.figures["modules"]["single"] == 1


def test_run_merge_figures(
    loraclr_run: tuple[Any, ...], engine_concepts: list[ConceptLoRA]
) -> None:
    figures = json.loads(json.dumps(loraclr_run[0].figures))  # JSON-able
    stages = figures["stages"]
    assert set(stages) >= {"text-encoder", "cross-attention"}
    for name in ("text-encoder", "cross-attention"):
        assert stages[name]["solved"] > 0
        assert 0 <= stages[name]["fidelity"]["mean"] <= stages[name]["fidelity"]["worst"]
        assert 0 <= stages[name]["repel_active"] <= 1
        assert set(stages[name]["per_concept"]) == {c.name for c in engine_concepts}
    rows = figures["feature_rows"]
    assert all(n > 0 for n in rows["text-encoder"].values())
    # spatial layers (attn1.to_q) with stage 3 off fall back to the mean of the updates
    spatial = [p for p in engine_concepts[0].layers if ".attn1." in p]
    assert figures["modules"]["fallback"] == len(spatial) > 0
    assert figures["fallback_method"] == "average"
    for p in spatial:
        expected = sum(c.delta(p) for c in engine_concepts[:2]) / 2
        torch.testing.assert_close(
            loraclr_run[0].weights[p] - loraclr_run[2][p + ".weight"], expected
        )


def test_fallback_linear_sums_the_updates(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    params = GradientFusion(fallback="linear")
    outcome = run_merge(engine_pipe, engine_concepts[:2], params)
    assert outcome.figures["fallback_method"] == "linear"
    spatial = [p for p in engine_concepts[0].layers if ".attn1." in p]
    modules = F.resolve_modules(engine_pipe, spatial)
    for p in spatial:
        W0 = F.weight_matrix(modules[p]).detach()
        expected = sum(c.delta(p) for c in engine_concepts[:2])
        torch.testing.assert_close(outcome.weights[p] - W0, expected)


def test_embeddings_pass_through(loraclr_run: tuple[Any, ...]) -> None:
    emb = loraclr_run[0].embeddings["text_encoder"]
    assert set(emb) == {"<ziggy>", "<rex>", "<solo>"}


def test_gradient_fusion_is_exact_on_cross_attention_with_few_rows(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    """With one template, 3 concepts × a few rows (from the token to the end of "<tok>" and
    "<tok> man") < 32 input dims: stage 2 can match every concept exactly — which also checks
    that its features come from the merged text encoder consistently (no region-shaped rows:
    `co_subjects` off, and so no K/V map)."""
    cfg = MergeConfig(templates=("{token}",))
    params = GradientFusion(ridge=1e-10, co_subjects=False)
    outcome = run_merge(engine_pipe, engine_concepts, params, config=cfg)
    rows = outcome.figures["feature_rows"]["cross-attention"]
    assert sum(rows.values()) < 32, rows
    kv = outcome.figures["stages"]["cross-attention"]
    assert kv["fidelity"]["worst"] < 1e-3
    assert outcome.figures["stages"]["text-encoder"]["fidelity"]["worst"] > 1e-3


def test_scene_prompts_add_feature_rows_only_when_asked(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    from dataclasses import replace

    concepts = [
        replace(c, prompts=(f"{c.tokens[0]} man waves at a dog in a library",))
        for c in engine_concepts[:2]
    ]
    rows = {}
    for on in (False, True):
        cfg = MergeConfig(templates=("{token}",))
        outcome = run_merge(engine_pipe, concepts, GradientFusion(scene_prompts=on), config=cfg)
        rows[on] = outcome.figures["feature_rows"]["text-encoder"]
    assert all(rows[True][k] > rows[False][k] for k in rows[False]), rows


def test_scene_prompts_aim_kv_at_each_concepts_own_text_encoder(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA], monkeypatch: pytest.MonkeyPatch
) -> None:
    # end to end, on the prompt it is rendered with: the merged K/V on the MERGED text
    # encoder's context should give what the concept's own K/V give on its OWN encoder's
    from dataclasses import replace

    from scenecraft.merge import engine as E
    from scenecraft.sdparts import cross_attention_kv

    concepts = [
        replace(c, prompts=(f"{c.tokens[0]} man waves at a dog in a library",))
        for c in engine_concepts[:2]
    ]
    cfg, params = MergeConfig(templates=("{token}",)), GradientFusion(scene_prompts=True)

    def kv_error(outcome: MergeOutcome) -> float:
        modules = F.resolve_modules(engine_pipe, list(outcome.weights))
        kv = sorted(cross_attention_kv(engine_pipe.unet, "unet.") & set(outcome.weights))
        te = {p: w for p, w in outcome.weights.items() if p.startswith(F.TEXT_PREFIXES)}
        assert kv and te
        err = 0.0
        with F.token_embeddings(engine_pipe, concepts) as texts:
            for c in concepts:
                words = [texts.get(t, t) for t in c.tokens]
                with F.patched(modules, F.own_weights(c, modules, F.TEXT_PREFIXES)):
                    own = F.token_states(engine_pipe, list(c.prompts), words)
                with F.patched(modules, te):
                    merged = F.token_states(engine_pipe, list(c.prompts), words)
                for p in kv:
                    W0 = F.weight_matrix(modules[p]).detach().float()
                    want = own @ (W0 + c.delta(p)).T
                    got = merged @ outcome.weights[p].float().T
                    err += float((got - want).norm() / want.norm())
        return err

    aimed = run_merge(engine_pipe, concepts, params, config=cfg)
    monkeypatch.setattr(E, "_retarget_kv", lambda *args: None)
    plain = run_merge(engine_pipe, concepts, params, config=cfg)
    assert kv_error(aimed) < 0.5 * kv_error(plain), (kv_error(aimed), kv_error(plain))


def test_co_subjects_add_rows_and_aim_kv_without_scene_text(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`co_subjects` (the default) reads region-shaped prompts built from the class nouns and
    aims K/V with them; off, or without class nouns, the K/V map is not used (it would be
    fitted on the templates alone)."""
    from dataclasses import replace

    from scenecraft.merge import engine as E

    nouns = [
        replace(c, class_noun=n) for c, n in zip(engine_concepts[:2], ("man", "dog"), strict=True)
    ]
    calls: list[int] = []
    real = E._retarget_kv
    monkeypatch.setattr(E, "_retarget_kv", lambda *a: calls.append(1) or real(*a))
    rows, weights = {}, {}
    for on in (False, True):
        cfg = MergeConfig(templates=("{token}",))
        outcome = run_merge(engine_pipe, nouns, GradientFusion(co_subjects=on), config=cfg)
        rows[on] = outcome.figures["feature_rows"]["text-encoder"]
        weights[on] = outcome.weights
    assert calls == [1]  # only with co_subjects
    assert all(rows[True][k] > rows[False][k] for k in rows[False]), rows
    changed = [p for p in weights[True] if not torch.equal(weights[True][p], weights[False][p])]
    assert changed
    # no class nouns: nothing region-shaped to read, so neither rows nor the map
    bare = [replace(c, class_noun=None) for c in engine_concepts[:2]]
    run_merge(engine_pipe, bare, GradientFusion(), config=MergeConfig(templates=("{token}",)))
    assert calls == [1]


def test_continuations_add_rows_and_change_the_merge(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    """`continuations` (opt-in) reads each concept followed by phrases of the tiny vocabulary's
    whole words; 0 (the default) reads none; the same seed gives the same merge, another seed
    other phrases and so another merge."""
    rows, weights = {}, {}
    cfg = MergeConfig(templates=("{token}",))
    for n in (0, 6):
        params = GradientFusion(co_subjects=False, continuations=n)
        outcome = run_merge(engine_pipe, engine_concepts[:2], params, config=cfg)
        rows[n] = outcome.figures["feature_rows"]["text-encoder"]
        weights[n] = outcome.weights
    assert all(rows[6][k] > rows[0][k] for k in rows[0]), rows
    assert any(not torch.equal(weights[6][p], weights[0][p]) for p in weights[6])
    again = run_merge(engine_pipe, engine_concepts[:2], params, config=cfg)
    assert all(torch.equal(again.weights[p], weights[6][p]) for p in weights[6])
    other = params.model_copy(update={"seed": 1})
    moved = run_merge(engine_pipe, engine_concepts[:2], other, config=cfg)
    assert any(not torch.equal(moved.weights[p], weights[6][p]) for p in weights[6])
    assert GradientFusion().continuations == 0


def test_input_waves_follow_the_forward_and_group_shared_inputs(engine_pipe: Any) -> None:
    paths = linear_paths(engine_pipe, "text_encoder")
    waves = F.input_waves(engine_pipe, F.resolve_modules(engine_pipe, paths), "a photo")
    layer = "text_encoder.encoder.layers.{}."
    expected = []
    for i in range(len(engine_pipe.text_encoder.encoder.layers)):
        expected += [
            [layer.format(i) + f"self_attn.{x}_proj" for x in "qkv"],
            [layer.format(i) + "self_attn.out_proj"],
            [layer.format(i) + "mlp.fc1"],
            [layer.format(i) + "mlp.fc2"],
        ]
    assert waves == expected


@pytest.mark.slow
def test_a_merge_repeated_on_one_pipeline_gives_the_same_weights(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    """Nothing of one merge leaks into the next (the waves of `sequential` once depended on
    whether a freed input's memory was reused: every merge after the first could differ)."""
    runs = [run_merge(engine_pipe, engine_concepts, Loraclr()) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(other.weights[p], runs[0].weights[p]) for p in runs[0].weights)


def test_sequential_text_stage_fits_each_layer_on_the_merged_layers_before_it(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    """`sequential` (default): wave by wave, X_c is read from the text encoder merged so far.
    With gradient fusion, the last layer's W* is exactly the fusion on those inputs; without
    `sequential` it is fitted on each concept's own encoder's inputs, a different W*; the first
    wave reads the token embeddings either way, so it merges the same."""
    from scenecraft.merge.fusion import gradient_fusion

    cfg = MergeConfig(templates=("{token}", "photo of a {token}"))
    params = GradientFusion(co_subjects=False)
    assert params.sequential and GradientFusion().sequential
    seq = run_merge(engine_pipe, engine_concepts, params, config=cfg)
    old = run_merge(
        engine_pipe,
        engine_concepts,
        params.model_copy(update={"sequential": False}),
        config=cfg,
    )
    first = "text_encoder.encoder.layers.0.self_attn.q_proj"
    last = max(p for p in seq.weights if p.endswith("mlp.fc2"))
    torch.testing.assert_close(seq.weights[first], old.weights[first])
    modules = F.resolve_modules(engine_pipe, list(seq.weights))
    te = {p: w for p, w in seq.weights.items() if p.startswith(F.TEXT_PREFIXES)}
    X = []
    with F.token_embeddings(engine_pipe, engine_concepts) as texts, F.patched(modules, te):
        for c, concept in enumerate(engine_concepts):
            prompts = F.concept_prompts(concept, texts, cfg.templates)
            rows = F.text_rows(engine_pipe, {last: modules[last]}, prompts, 4096, c)
            X.append(rows[last][None])
    W0 = F.weight_matrix(modules[last]).detach().float()[None]
    deltas = [
        (c.delta(last) if last in c.layers else torch.zeros_like(W0[0]))[None]
        for c in engine_concepts
    ]
    want, _ = gradient_fusion(W0, deltas, X)
    torch.testing.assert_close(seq.weights[last], want[0], rtol=1e-4, atol=1e-5)
    assert (old.weights[last] - want[0]).abs().max() > 1e-3


def test_ridge_solve_is_the_regularised_least_squares_in_both_forms() -> None:
    from scenecraft.merge.fusion import ridge_solve

    g = torch.Generator().manual_seed(0)
    for n, d in ((40, 8), (5, 8)):  # primal (rows >= inputs) and dual (fewer rows)
        X = torch.randn(2, n, d, generator=g, dtype=torch.float64)
        T = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
        M, eps = ridge_solve(X, T, 1e-3)
        eye = torch.eye(d, dtype=torch.float64)
        want = torch.linalg.solve(X.mT @ X + eps.view(2, 1, 1) * eye, X.mT @ T)
        assert torch.allclose(M, want, atol=1e-9)
        assert torch.allclose(eps, 1e-3 * X.square().sum((1, 2)) / d)


def test_spatial_stage_and_data_free_figures(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    cfg = MergeConfig(
        figure_stages=Stages(spatial=True), spatial_steps=2, spatial_size=32, spatial_max_rows=64
    )
    outcome = run_merge(engine_pipe, engine_concepts[:2], Ties(density=0.5), config=cfg)
    figures = outcome.figures
    assert figures["modules"]["spatial"] > 0
    assert "spatial" in figures["stages"]  # data-free methods get quality figures too
    assert all(0 < n <= 64 for n in figures["feature_rows"]["spatial"].values())
    linear = run_merge(engine_pipe, engine_concepts[:2], parse("linear"), config=cfg)
    # TIES drops half of each update: on these random LoRAs it keeps less of each concept
    assert figures["stages"]["text-encoder"]["fidelity"]["mean"] != pytest.approx(
        linear.figures["stages"]["text-encoder"]["fidelity"]["mean"]
    )


# ------------------------------------------------------------------------------- features


def test_text_rows_cover_every_real_token(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    path = linear_paths(engine_pipe, "text_encoder", "layers.0.self_attn.q_proj")[0]
    modules = F.resolve_modules(engine_pipe, [path])
    prompts = ["photo of a man", "dog"]
    X = F.text_rows(engine_pipe, modules, prompts, cap=1000, seed=0)[path]
    n_real = sum(len(engine_pipe.tokenizer(p).input_ids) for p in prompts)
    assert X.shape == (n_real, modules[path].in_features) and X.dtype == torch.float32
    assert F.text_rows(engine_pipe, modules, prompts, cap=5, seed=0)[path].shape[0] == 5


def test_concept_model_is_patched_then_restored(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    concept = engine_concepts[0]
    paths = sorted(p for p in concept.layers if p.startswith("text_encoder."))
    modules = F.resolve_modules(engine_pipe, paths)
    watched = {paths[-1]: modules[paths[-1]]}
    base = F.text_rows(engine_pipe, watched, ["photo of a man"], 100, 0)[paths[-1]]
    with F.patched(modules, F.own_weights(concept, modules, "text_encoder.")):
        own = F.text_rows(engine_pipe, watched, ["photo of a man"], 100, 0)[paths[-1]]
    again = F.text_rows(engine_pipe, watched, ["photo of a man"], 100, 0)[paths[-1]]
    assert not torch.allclose(base, own)
    torch.testing.assert_close(base, again, rtol=0, atol=0)


def test_token_states_pick_concept_tokens_and_end(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    with F.token_embeddings(engine_pipe, engine_concepts) as texts:
        prompts = F.concept_prompts(engine_concepts[0], texts, ("photo of a {token}", "{token}"))
        X = F.token_states(engine_pipe, prompts, ["<ziggy>"])
    assert prompts == ["photo of a <ziggy>", "photo of a <ziggy> man", "<ziggy>", "<ziggy> man"]
    # padded to the longest prompt (<bos> photo of a <ziggy> man <eos>: 7 tokens), each keeps
    # the positions from <ziggy> on: 3 + 3 + 6 + 6 rows
    assert X.shape == (18, engine_pipe.text_encoder.config.hidden_size)


# ------------------------------------------------------------------------------ bad input


def test_bad_concepts_fail_loudly(engine_pipe: Any, engine_concepts: list[ConceptLoRA]) -> None:
    path = linear_paths(engine_pipe, "unet", "attn2.to_k")[0]
    wrong = ConceptLoRA(
        "bad", ("<bad>",), {path: LoRALayer(path, torch.ones(3, 2), torch.ones(2, 7))}
    )
    unknown = random_concept(engine_pipe, "typo", "<typo>", [path], seed=9)
    unknown.layers = {path + "x": unknown.layers[path]}
    clash = random_concept(engine_pipe, "clash", "<ziggy>", [path], seed=9)
    cases = [
        ([wrong], "lora-shape-mismatch"),
        ([unknown], "lora-unknown-module"),
        ([engine_concepts[0], clash], "merge-duplicate-token"),
        ([], "merge-no-concepts"),
    ]
    for concepts, code in cases:
        with pytest.raises(DiagnosticError) as info:
            run_merge(engine_pipe, concepts, Loraclr())
        assert info.value.diagnostics[0].code == code
        assert info.value.diagnostics[0].help
    with pytest.raises(DiagnosticError) as info:
        run_merge(engine_pipe, engine_concepts, parse("loraclrr"))
    assert info.value.diagnostics[0].help == "did you mean `loraclr`?"


def test_refine_ridge_defaults_to_on_only_for_distinct_class_nouns(
    engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    """loraclr's `refine_ridge` left unset is decided per merge: on when every concept has a
    class noun and no two share one (case and spaces aside), off for a shared or missing class
    and for the reference recipe; the figures say what was used, and a value the block gives
    is kept. On, the merge is the `refine_ridge true` merge; off, the `refine_ridge false` one."""
    from scenecraft.merge.engine import refine_ridge_for

    two = engine_concepts[:2]
    distinct = [
        dataclasses.replace(c, class_noun=n) for c, n in zip(two, ("man", "dog"), strict=True)
    ]
    shared = [
        dataclasses.replace(c, class_noun=n) for c, n in zip(two, ("man", " Man"), strict=True)
    ]
    missing = [
        dataclasses.replace(c, class_noun=n) for c, n in zip(two, ("man", None), strict=True)
    ]
    assert refine_ridge_for(distinct, "ours")
    assert not refine_ridge_for(shared, "ours")
    assert not refine_ridge_for(missing, "ours")
    assert not refine_ridge_for(distinct, "reference")

    cfg = MergeConfig(templates=("{token}",))

    def merged(concepts: list[ConceptLoRA], params: dict[str, Any]) -> MergeOutcome:
        return run_merge(
            engine_pipe, concepts, parse("loraclr", {"iterations": 5, **params}), config=cfg
        )

    auto_on, forced_on = merged(distinct, {}), merged(distinct, {"refine_ridge": True})
    forced_off = merged(distinct, {"refine_ridge": False})
    assert auto_on.figures["params"]["refine_ridge"] is True
    assert forced_off.figures["params"]["refine_ridge"] is False
    assert all(torch.equal(auto_on.weights[p], forced_on.weights[p]) for p in auto_on.weights)
    assert any(not torch.equal(auto_on.weights[p], forced_off.weights[p]) for p in auto_on.weights)
    auto_off = merged(shared, {})
    assert auto_off.figures["params"]["refine_ridge"] is False
    plain = merged(shared, {"refine_ridge": False})
    assert all(torch.equal(auto_off.weights[p], plain.weights[p]) for p in auto_off.weights)
