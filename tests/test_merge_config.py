"""The methods' parameter models: checker, engine, docs and the plan read them alone."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from scenecraft.api import load
from scenecraft.diagnostics import DiagnosticError, render_all
from scenecraft.language import schema
from scenecraft.merge.config import (
    DEFAULT_RIDGE,
    METHODS,
    REFERENCE_PRESET,
    Dare,
    GradientFusion,
    Loraclr,
    Stages,
    parse,
)
from scenecraft.merge.fusion import gradient_fusion
from scenecraft.plan import RenderPlan

ROOT = Path(__file__).parent.parent
ScenePath = Callable[..., Path]
MODEL = 'model "example-org/sd15-base"\nconcept a {\n  token "<A>"\n}\n'


def test_the_checker_reads_the_models() -> None:
    assert list(schema.MERGE_KEYS) == list(METHODS)
    for method, model in METHODS.items():
        keys = schema.MERGE_KEYS[method]
        assert set(keys) == set(model.model_fields) - {"method"}
        for name, field in model.model_fields.items():
            if name != "method":
                assert keys[name].doc == field.description, (method, name)
    margin = schema.MERGE_KEYS["loraclr"]["margin"]
    assert (margin.kind, margin.lo, margin.hi, margin.lo_open) == ("float", 0, 10, True)
    init = schema.MERGE_KEYS["loraclr"]["init"]
    assert (init.kind, init.choices) == ("word", ("gradient-fusion", "fusion", "zero"))
    assert schema.MERGE_KEYS["loraclr"]["max_rows"].kind == "int"  # `int | None`


def test_one_name_per_parameter_and_the_ridge_default_in_one_home() -> None:
    ridge = inspect.signature(gradient_fusion).parameters["ridge"].default
    assert ridge == DEFAULT_RIDGE == GradientFusion().ridge == Loraclr().ridge
    assert "max_iters" not in Loraclr.model_fields and "eps_rel" not in Loraclr.model_fields
    # every feature-based method takes the stage settings, and only those do
    for model in METHODS.values():
        assert model.feature_based == issubclass(model, Stages)
        stage_fields = set(Stages.model_fields) - {"method"}
        assert issubclass(model, Stages) == (stage_fields <= set(model.model_fields))


def test_the_reference_preset_and_what_the_block_sets() -> None:
    ref = Loraclr.reference()
    assert {k: getattr(ref, k) for k in REFERENCE_PRESET} == REFERENCE_PRESET
    mine = Loraclr(recipe="reference", margin=0.3)
    assert (mine.margin, mine.lr, mine.init) == (0.3, 1e-4, "zero")
    assert Loraclr().init == "gradient-fusion" and Loraclr().iterations == 50


def test_a_rule_between_parameters_is_the_models() -> None:
    with pytest.raises(ValidationError):
        Loraclr(recipe="reference", refine_ridge=True)
    with pytest.raises(DiagnosticError) as info:
        parse("loraclr", {"recipe": "reference", "refine_ridge": True})
    assert info.value.diagnostics[0].code == "merge-bad-param"
    assert Loraclr(recipe="reference", refine_ridge=False).refine_ridge is False


def test_a_rule_is_a_check_error_at_the_parameters_span(scene_file: ScenePath) -> None:
    """`recipe reference` with `refine_ridge true` once passed check and compile and failed
    after the model had loaded; now `check` points at the parameter."""
    path = scene_file(
        MODEL + "merge loraclr {\n  recipe reference\n  refine_ridge true\n}\nscene s {\n  a\n}\n"
    )
    with pytest.raises(DiagnosticError) as info:
        load(path)
    [diag] = [d for d in info.value.diagnostics if d.is_error]
    assert diag.code == "conflicting-merge-params"
    assert diag.span is not None
    assert (diag.span.line, diag.span.col) == (7, 3)  # the `refine_ridge true` line
    text = render_all([diag])
    assert f"--> {path}:7:3" in text and "refine_ridge true" in text and "recipe ours" in text
    ok = scene_file(MODEL + "merge loraclr {\n  recipe reference\n}\nscene s {\n  a\n}\n")
    assert load(ok).plan.merge.params == Loraclr.reference()


def test_linear_takes_no_seed(scene_file: ScenePath) -> None:
    path = scene_file(MODEL + "merge linear {\n  seed 1\n}\nscene s {\n  a\n}\n")
    with pytest.raises(DiagnosticError) as info:
        load(path)
    [diag] = [d for d in info.value.diagnostics if d.is_error]
    assert (diag.code, diag.span.line if diag.span else 0) == ("unknown-setting", 6)
    assert "seed" in diag.message and "merge `linear`" in diag.message
    with pytest.raises(DiagnosticError) as err:
        parse("linear", {"seed": 1})
    assert err.value.diagnostics[0].code == "merge-bad-param"


def test_the_plan_holds_the_typed_model(scene_file: ScenePath) -> None:
    plan = load(scene_file(MODEL + "merge dare {\n  seed 7\n}\nscene s {\n  a\n}\n")).plan
    assert plan.merge.params == Dare(seed=7) and plan.merge.method == "dare"
    text = "merge loraclr {\n  iterations 9\n  init fusion\n}\nscene s {\n  a\n}\n"
    plan = load(scene_file(MODEL + text)).plan
    assert isinstance(plan.merge.params, Loraclr)
    assert (plan.merge.params.iterations, plan.merge.params.init) == (9, "fusion")
    # the JSON names the method inside `params` and reads back to the same typed plan
    data = plan.model_dump(mode="json")
    assert data["version"] == 2 and "stages" not in data["merge"]
    assert data["merge"]["params"]["method"] == "loraclr"
    assert data["merge"]["params"]["iterations"] == 9 and data["merge"]["params"]["margin"] == 1.0
    assert RenderPlan.model_validate_json(plan.to_json()) == plan


def test_one_key_per_merge(scene_file: ScenePath) -> None:
    def key(body: str, name: str = "a") -> str:
        text = f'model "example-org/sd15-base"\nconcept {name} {{\n  token "<A>"\n}}\n{body}'
        return load(scene_file(text + f"scene s {{\n  {name}\n}}\n")).plan.merge.key

    plain = key("merge loraclr\n")
    assert key("merge loraclr\n", name="renamed") == plain  # names are not part of a merge
    assert key("merge loraclr {\n  margin 0.5\n}\n") != plain
    assert key("merge gradient-fusion\n") != plain
    assert len(plain) == 24


def test_docs_list_every_parameter() -> None:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    section = text.split("### 3.4 Merge methods")[1].split("### 3.5")[0]
    for method, keys in schema.MERGE_KEYS.items():
        assert f"| `{method}` |" in section
        for name in keys:
            assert f"| `{name}` |" in section, (method, name)


def test_scene_prompts_hand_each_concept_its_region_prompts(scene_file: ScenePath) -> None:
    def plan(merge: str, setting: str = "at sea") -> Any:
        text = (
            'model "example-org/sd15-base"\n'
            'concept a {\n  token "<A>"\n  class "man"\n}\n'
            'concept b {\n  token "<B>"\n  class "dog"\n}\n'
            f"{merge}"
            f'scene duo {{\n  setting "{setting}"\n  a left of b\n}}\n'
            "scene solo {\n  a\n}\n"
        )
        return load(scene_file(text)).plan

    default = plan("merge loraclr\n")
    assert all(c.prompts == () for c in default.merge.concepts)
    on = plan("merge loraclr {\n  scene_prompts true\n}\n")
    regions = {r.subject: r.prompt for j in on.jobs for r in j.regions}
    solo = next(j.prompt for j in on.jobs if j.scene == "solo")
    assert {c.name: c.prompts for c in on.merge.concepts} == {
        "a": (regions["a"], solo),  # its region prompt, and the prompt it is drawn alone with
        "b": (regions["b"],),
    }
    assert (regions["a"], solo) == ("<A> man, man left of dog, at sea", "<A> man")
    assert isinstance(on.merge.params, Loraclr) and on.merge.params.scene_prompts
    # the prompts are part of the merge: another setting is another merge, but only with them
    assert plan("merge loraclr {\n  scene_prompts true\n}\n", "in a park").merge.key != on.merge.key
    assert plan("merge loraclr\n", "in a park").merge.key == default.merge.key


def test_co_subjects_add_region_shaped_feature_prompts() -> None:
    """Each other merged concept's class noun gives the two prompts a region prompt of a scene
    holding both starts like (scenecraft.prompts.region_prompt), once per noun; a concept
    without a class noun gets none (nothing to say it by)."""
    from scenecraft.merge.features import concept_prompts
    from scenecraft.merge.types import ConceptLoRA

    c = ConceptLoRA("a", ("<A>",), {}, class_noun="man")
    got = concept_prompts(c, {}, ("{token}",), others=("dog", "woman", "dog"))
    assert got == [
        "<A>",
        "<A> man",
        "<A> man, man and dog",
        "<A> man, dog and man",
        "<A> man, man and woman",
        "<A> man, woman and man",
    ]
    same = concept_prompts(c, {}, ("{token}",), others=("man",))
    assert same == ["<A>", "<A> man", "<A> man, man and man"]
    bare = ConceptLoRA("b", ("<B>",), {})
    assert concept_prompts(bare, {}, ("{token}",), others=("dog",)) == ["<B>"]


def test_continuations_follow_each_concept_with_common_word_phrases() -> None:
    """`continuations`: seeded phrases of 1-4 of the vocabulary's whole words (ASCII letters,
    two or more, in id order, capped), each after the concept and its class noun."""
    from types import SimpleNamespace

    from scenecraft.merge.features import common_words, concept_prompts, continuations
    from scenecraft.merge.types import ConceptLoRA

    vocab = {"a</w>": 1, "sea</w>": 4, "grass</w>": 5, "gr": 3, "<A>": 9, "x1</w>": 7}
    vocab |= {"été</w>": 8, "hat</w>": 10}
    tok = SimpleNamespace(get_vocab=lambda: vocab)
    assert common_words(tok) == ["sea", "grass", "hat"]  # id order
    assert common_words(tok, limit=2) == ["sea", "grass"]
    words = ["sea", "grass", "hat"]
    got = continuations(words, 40, seed=3)
    assert len(got) == 40 and got == continuations(words, 40, seed=3)
    assert got != continuations(words, 40, seed=4)
    lengths = {len(p.split()) for p in got}
    assert lengths == {1, 2, 3, 4}
    assert {w for p in got for w in p.split()} <= set(words)
    assert continuations([], 5, seed=0) == [] and continuations(words, 0, seed=0) == []
    c = ConceptLoRA("a", ("<A>",), {}, class_noun="man")
    assert concept_prompts(c, {}, ("{token}",), phrases=("sea hat",))[-1] == "<A> man, sea hat"
    bare = ConceptLoRA("b", ("<B>",), {})
    assert concept_prompts(bare, {}, ("{token}",), phrases=("sea",)) == ["<B>", "<B>, sea"]


def test_scene_prompts_become_feature_prompts_with_tokens_expanded() -> None:
    from scenecraft.merge.features import concept_prompts
    from scenecraft.merge.types import ConceptLoRA

    c = ConceptLoRA("a", ("<A>",), {}, class_noun="man", prompts=("<A> man left of dog",))
    texts = {"<A>": "<A> <A>_1"}  # a two-vector embedding
    assert concept_prompts(c, texts, ("{token}",)) == ["<A> <A>_1", "<A> <A>_1 man"]
    assert concept_prompts(c, texts, ("{token}",), scene_prompts=True)[-1] == (
        "<A> <A>_1 man left of dog"
    )
