"""Compiler: prompts in natural English, structured layout data, seeds, storyboards, determinism."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from scenecraft.api import load
from scenecraft.language.compiler import CLIP_WINDOW, estimate_tokens
from scenecraft.plan import Placement, RenderJob, RenderPlan, generator_seed

ScenePath = Callable[..., Path]
ROOT = Path(__file__).parent.parent

HEAD = """model "example-org/sd15-base"

concept gosling {
  token "<GOSLING>"
  class "man"
}

concept taylor {
  token "<TAYLOR>"
  class "woman"
}

concept messi {
  token "<MESSI>"
  class "man"
}

concept noir {
  token "<NOIR>"
  kind style
}
"""


def plan_of(scene_file: ScenePath, body: str, extra: str = "") -> RenderPlan:
    return load(scene_file(HEAD + extra + f"\nscene s {{\n{body}\n}}\n")).plan


def prompt_of(scene_file: ScenePath, body: str, extra: str = "") -> str:
    return plan_of(scene_file, body, extra).jobs[0].prompt


def test_docs_example_prompt() -> None:
    [job, *_] = load(ROOT / "scenes" / "garden.scene").plan.jobs
    # four concepts: a global prompt without identities, one region prompt per concept
    assert job.prompt.startswith("man waves at man, woman and man, in a blooming summer garden")
    assert [r.subject for r in job.regions] == ["gosling", "lebron", "taylor", "messi"]
    assert job.regions[0].prompt.startswith(
        "<GOSLING> man, man waves at man, woman and man, in a blooming summer garden"
    )
    assert job.regions[2].prompt.startswith(
        "<TAYLOR> woman, man waves at man, woman and man, in a blooming summer garden"
    )


def test_listed_concepts_and_setting(scene_file: ScenePath) -> None:
    prompt = prompt_of(
        scene_file, '  regions off\n  gosling, messi, taylor\n  setting "an ancient library"'
    )
    assert prompt == "<GOSLING> man, <MESSI> man and <TAYLOR> woman, in an ancient library"


def test_attributes_stay_with_their_subject(scene_file: ScenePath) -> None:
    prompt = prompt_of(
        scene_file,
        '  regions off\n  gosling dressed as "a medieval knight" waves at taylor\n'
        '  taylor wears "a crown"',
    )
    assert prompt == (
        "<GOSLING> man dressed as a medieval knight waves at <TAYLOR> woman wearing a crown"
    )


def test_several_attributes_are_joined_with_and(scene_file: ScenePath) -> None:
    prompt = prompt_of(scene_file, '  gosling in "a denim jacket" holding "a basket of apples"')
    assert prompt == "<GOSLING> man in a denim jacket and holding a basket of apples"


def test_free_verb_and_group_activity(scene_file: ScenePath) -> None:
    assert prompt_of(scene_file, '  regions off\n  taylor "high-fives" messi') == (
        "<TAYLOR> woman high-fives <MESSI> man"
    )
    assert prompt_of(
        scene_file, '  regions off\n  gosling, messi\n  together "cooking in a kitchen"'
    ) == ("<GOSLING> man and <MESSI> man cooking in a kitchen")


def test_group_activity_is_never_an_objects(scene_file: ScenePath) -> None:
    # issue 11: "delicious meals on the table having dinner"
    body = '  object meals "delicious meals on the table"\n  gosling, taylor\n  together "having dinner"'
    assert prompt_of(scene_file, "  regions off\n" + body) == (
        "<GOSLING> man and <TAYLOR> woman having dinner, delicious meals on the table"
    )
    # with regions (the default here) the global prompt names the classes, same rule
    assert (
        prompt_of(scene_file, body) == "man and woman having dinner, delicious meals on the table"
    )


def test_objects_and_placements_are_structured(scene_file: ScenePath) -> None:
    plan = plan_of(
        scene_file,
        '  object chair "a wooden chair"\n  object vase\n  vase on top of chair\n'
        "  gosling next to chair",
    )
    job = plan.jobs[0]
    assert job.prompt == "a vase on top of a wooden chair, <GOSLING> man beside a wooden chair"
    assert job.objects == ("chair", "vase")  # in declaration order
    assert job.concepts == ("gosling",)
    assert job.placements == (
        Placement(subject="vase", relation="on-top-of", target="chair"),
        Placement(subject="gosling", relation="beside", target="chair"),
    )


def test_style_concept_and_style_setting(scene_file: ScenePath) -> None:
    plan = plan_of(scene_file, '  gosling\n  noir\n  style "film grain"\n  lighting "at dusk"')
    job = plan.jobs[0]
    assert job.prompt == "<GOSLING> man, at dusk, <NOIR> style, film grain style"
    assert job.concepts == ("gosling", "noir")
    assert [c.name for c in plan.merge.concepts] == ["gosling", "noir"]


def test_style_concept_by_name_in_the_style_setting(scene_file: ScenePath) -> None:
    plan = plan_of(scene_file, "  gosling\n  style noir")
    assert plan.jobs[0].prompt == "<GOSLING> man, <NOIR> style"
    assert plan.jobs[0].concepts == ("gosling", "noir")
    assert [c.name for c in plan.merge.concepts] == ["gosling", "noir"]


def test_prefix_setting_preposition_and_negative(scene_file: ScenePath) -> None:
    job = plan_of(
        scene_file,
        '  gosling\n  prefix "a photo of"\n  setting "on a beach"',
        'defaults {\n  negative "blurry"\n}\n',
    ).jobs[0]
    assert job.prompt == "a photo of <GOSLING> man, on a beach"
    assert job.negative_prompt == "blurry"


def test_seed_lists_ranges_and_images_per_seed(scene_file: ScenePath) -> None:
    plan = plan_of(
        scene_file, "  gosling\n  seeds 3, 10..12, 3", "defaults {\n  images_per_seed 2\n}\n"
    )
    # the repeated 3 is rendered once; each seed gives images 0 and 1
    assert [(j.seed, j.index) for j in plan.jobs] == [
        (s, k) for s in (3, 10, 11, 12) for k in (0, 1)
    ]
    assert plan.images_per_seed == 2
    assert len({j.id for j in plan.jobs}) == 8
    # image n of seed s uses seed s + n (A1111's convention)
    assert [generator_seed(j) for j in plan.jobs[:2]] == [3, 4]


def test_overlapping_seeds_are_reported(scene_file: ScenePath) -> None:
    spaced = load(scene_file(HEAD + "scene s {\n  gosling\n  seeds 1, 3\n  images_per_seed 2\n}\n"))
    assert "overlapping-seeds" not in {w.code for w in spaced.warnings}
    assert {generator_seed(j) for j in spaced.plan.jobs} == {1, 2, 3, 4}
    close = load(scene_file(HEAD + "scene s {\n  gosling\n  seeds 1, 2\n  images_per_seed 2\n}\n"))
    assert "overlapping-seeds" in {w.code for w in close.warnings}


def test_render_settings_reach_the_jobs(scene_file: ScenePath) -> None:
    job = plan_of(
        scene_file,
        "  gosling",
        'defaults {\n  size 768x512\n  steps 12\n  guidance 3.5\n  sampler "Euler a"\n'
        "  batch_size 4\n}\n",
    ).jobs[0]
    assert (job.width, job.height, job.steps, job.guidance, job.sampler) == (
        768,
        512,
        12,
        3.5,
        "Euler a",
    )


def test_only_used_concepts_are_merged(scene_file: ScenePath) -> None:
    plan = plan_of(scene_file, "  taylor hugs messi")
    assert [c.name for c in plan.merge.concepts] == ["taylor", "messi"]
    assert plan.merge.key != ""


def test_storyboard_panels_become_jobs(scene_file: ScenePath) -> None:
    path = scene_file(
        HEAD
        + "scene meet {\n  gosling greets taylor\n}\n"
        + 'storyboard trip {\n  columns 2\n  panel meet "They meet"\n'
        + '  panel "The end" {\n    messi left of taylor\n  }\n}\n'
    )
    plan = load(path).plan
    [board] = plan.storyboards
    assert (board.name, board.columns) == ("trip", 2)
    by_id = {j.id: j for j in plan.jobs}
    first, second = board.panels
    assert (first.index, first.scene, first.caption) == (0, "meet", "They meet")
    assert [by_id[i].prompt for i in first.job_ids] == ["man greets woman"]
    assert [r.prompt for r in by_id[first.job_ids[0]].regions] == [
        "<GOSLING> man, man greets woman",
        "<TAYLOR> woman, man greets woman",
    ]
    assert (second.index, second.scene, second.caption) == (1, "trip-2", "The end")
    [inline] = [by_id[i] for i in second.job_ids]
    assert (inline.storyboard, inline.panel, inline.caption) == ("trip", 1, "The end")
    assert inline.placements == (Placement(subject="messi", relation="left-of", target="taylor"),)


def test_job_spans_point_at_the_scene(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "\nscene s {\n  gosling\n}\n")
    span = load(path).plan.jobs[0].span
    assert span is not None
    assert (span.file, span.line, span.col) == (str(path), 23, 7)


def test_long_prompt_warns(scene_file: ScenePath) -> None:
    long_text = ", ".join(["a very ornate embroidered coat"] * 12)
    path = scene_file(HEAD + f'\nscene s {{\n  gosling wears "{long_text}"\n}}\n')
    loaded = load(path)
    [warning] = [w for w in loaded.warnings if w.code == "prompt-too-long"]
    assert warning.severity == "warning"
    assert loaded.plan.jobs[0].prompt_tokens > CLIP_WINDOW
    short = load(scene_file(HEAD + "\nscene s {\n  gosling\n}\n", "short.scene"))
    assert not [w for w in short.warnings if w.code == "prompt-too-long"]


def test_token_estimate_counts_words_and_punctuation() -> None:
    assert estimate_tokens("") == 2
    assert estimate_tokens("a man") == 4
    assert estimate_tokens("<GOSLING> man, 12") == 2 + 3 + 1 + 1 + 2
    assert estimate_tokens("a " * 100) == 102


def test_plan_json_is_deterministic_and_round_trips(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "\nscene s {\n  gosling left of taylor\n  seeds 1..3\n}\n")
    first = load(path).plan.to_json()
    second = load(path).plan.to_json()
    assert first == second
    assert RenderPlan.model_validate_json(first).to_json() == first


def test_example_files_compile_and_every_job_is_valid() -> None:
    files = [*sorted((ROOT / "scenes").glob("*.scene")), ROOT / "examples" / "storyboard.scene"]
    assert len(files) >= 3
    for f in files:
        plan = load(f).plan
        assert plan.jobs, f
        for job in plan.jobs:
            assert RenderJob.model_validate(job.model_dump()) == job
            assert job.prompt and "  " not in job.prompt and not job.prompt.endswith(","), job


@pytest.mark.parametrize(
    "setting, prompt",
    [
        ("a library", "in a library"),
        ("next to a lake", "next to a lake"),
        ("behind the castle walls", "behind the castle walls"),
        ("Beside the fire", "Beside the fire"),
        ("between two towers", "between two towers"),
        ("indoors", "indoors"),
        ("nextdoor", "in nextdoor"),  # a word that only starts like one
    ],
)
def test_a_setting_reads_as_a_place(scene_file: ScenePath, setting: str, prompt: str) -> None:
    job = plan_of(scene_file, f'  gosling\n  setting "{setting}"').jobs[0]
    assert job.prompt == f"<GOSLING> man, {prompt}"
