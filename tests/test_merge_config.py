"""The one table of merge parameters: checker, engine defaults, docs and the plan agree."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from scenecraft.api import load
from scenecraft.language import schema
from scenecraft.merge.config import DEFAULT_RIDGE, METHODS, PARAMS, default, resolve
from scenecraft.merge.fusion import gradient_fusion
from scenecraft.merge.loraclr import LoraclrConfig
from scenecraft.merge.methods import allowed_params
from scenecraft.merge.types import MergeConfig

ROOT = Path(__file__).parent.parent
ScenePath = Callable[..., Path]


def test_the_checker_reads_the_table() -> None:
    assert set(schema.MERGE_KEYS) == set(PARAMS) == set(METHODS)
    for method, params in PARAMS.items():
        assert set(schema.MERGE_KEYS[method]) == set(params)
        for name, p in params.items():
            key = schema.MERGE_KEYS[method][name]
            assert (key.kind, key.lo, key.hi, key.choices, key.lo_open) == (
                p.kind, p.lo, p.hi, p.choices, p.lo_open,
            )  # fmt: skip


def test_engine_defaults_come_from_the_table() -> None:
    cfg = LoraclrConfig()
    for name, p in PARAMS["loraclr"].items():
        if p.stage:
            continue
        assert getattr(cfg, p.engine_name(name)) == p.engine_value(p.default), name
    ridge = inspect.signature(gradient_fusion).parameters["eps_rel"].default
    assert ridge == DEFAULT_RIDGE == default("gradient-fusion", "eps_rel")
    assert default("ties", "density") == 0.5
    # every engine name the table produces is one the engine accepts
    for method, params in PARAMS.items():
        if method == "none":
            continue
        for name, p in params.items():
            if not p.stage or p.method_too:
                assert p.engine_name(name) in allowed_params(method), (method, name)
            if p.stage:
                assert set(p.stage) <= {f.name for f in fields(MergeConfig)}


def test_resolve_maps_names_values_and_stages() -> None:
    params, stages = resolve(
        "loraclr",
        {
            "iterations": 80,
            "ridge": 0.1,
            "init": "gradient-fusion",
            "max_rows": 512,
            "spatial": True,
        },
    )
    assert params == {"max_iters": 80, "eps_rel": 0.1, "init": "fusion-normalised"}
    assert stages == {"text_max_rows": 512, "spatial_max_rows": 512, "spatial": True}
    assert resolve("linear", {}) == ({}, {})
    # the merge seed reaches the method (DARE's masks, the reference recipe's row cut) and the
    # engine (feature-row subsampling, `continuations`' phrases)
    assert resolve("loraclr", {"seed": 3}) == ({"seed": 3}, {"seed": 3})


def test_the_plan_holds_resolved_params_and_merge_seed_is_not_an_alias(
    scene_file: ScenePath,
) -> None:
    text = 'model "example-org/sd15-base"\nconcept a {\n  token "<A>"\n}\n'
    plan = load(scene_file(text + "merge dare {\n  seed 7\n}\nscene s {\n  a\n}\n")).plan
    assert plan.merge.params == {"seed": 7}  # was `seeds`, which the engine refused
    plan = load(scene_file(text + "merge loraclr {\n  iterations 9\n}\nscene s {\n  a\n}\n")).plan
    assert (plan.merge.params, plan.merge.stages) == ({"max_iters": 9}, {})


def test_one_key_per_merge(scene_file: ScenePath) -> None:
    def key(body: str, name: str = "a") -> str:
        text = f'model "example-org/sd15-base"\nconcept {name} {{\n  token "<A>"\n}}\n{body}'
        return load(scene_file(text + f"scene s {{\n  {name}\n}}\n")).plan.merge.key

    plain = key("merge loraclr\n")
    assert key("merge loraclr\n", name="renamed") == plain  # names are not part of a merge
    assert key("merge loraclr {\n  margin 0.5\n}\n") != plain
    assert key("merge gradient-fusion\n") != plain
    assert len(plain) == 24


@pytest.mark.parametrize("method", [m for m in METHODS if PARAMS[m]])
def test_docs_list_every_parameter(method: str) -> None:
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    section = text.split("### 3.4 Merge methods")[1].split("### 3.5")[0]
    for name in PARAMS[method]:
        assert re.search(rf"`{name}`", section), (method, name)


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
    assert on.merge.stages == {"scene_prompts": True}
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
