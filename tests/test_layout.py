"""Layouts: every placement word, the defaults, explicit areas, cycles; and the layout sketch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from scenecraft import layout
from scenecraft.api import load
from scenecraft.cli import main
from scenecraft.language.parser import parse

ScenePath = Callable[..., Path]

HEAD = """model "example-org/sd15-base"
concept a {
  token "<A>"
  class "man"
}
concept b {
  token "<B>"
  class "woman"
}
concept c {
  token "<C>"
  class "dog"
}
concept d {
  token "<D>"
  class "cat"
}
"""


def boxes(scene_file: ScenePath, body: str) -> dict[str, tuple[float, ...]]:
    plan = load(scene_file(HEAD + f"scene s {{\n{body}\n}}\n")).plan
    return {r.subject: r.box for r in plan.jobs[0].regions}


def cx(box: tuple[float, ...]) -> float:
    return (box[0] + box[2]) / 2


def cy(box: tuple[float, ...]) -> float:
    return (box[1] + box[3]) / 2


@pytest.mark.parametrize(
    ("words", "check"),
    [
        ("left of", lambda a, b: cx(a) < cx(b) and a[1] == b[1] == 0.0),
        ("right of", lambda a, b: cx(a) > cx(b)),
        ("above", lambda a, b: cy(a) < cy(b) and a[0] == b[0]),
        ("on top of", lambda a, b: a[3] == b[1] and a[0] == b[0] and a[2] == b[2]),
        ("below", lambda a, b: cy(a) > cy(b)),
        ("in front of", lambda a, b: cy(a) > cy(b)),  # nearer the viewer: lower
        ("behind", lambda a, b: cy(a) < cy(b)),
        ("beside", lambda a, b: a[3] - a[1] == 1.0 and a[2] <= b[0]),
        ("next to", lambda a, b: a[2] <= b[0]),
        ("back to back with", lambda a, b: a[2] <= b[0]),
    ],
)
def test_every_placement_word(scene_file: ScenePath, words: str, check: Callable) -> None:
    got = boxes(scene_file, f"  a {words} b")
    assert set(got) == {"a", "b"}
    assert check(got["a"], got["b"]), got


def test_defaults_side_by_side_in_order_of_mention(scene_file: ScenePath) -> None:
    got = boxes(scene_file, "  c, a, b")
    assert got == {
        "c": (0.0, 0.0, 0.3333, 1.0),
        "a": (0.3333, 0.0, 0.6667, 1.0),
        "b": (0.6667, 0.0, 1.0, 1.0),
    }


def test_four_subjects_make_a_grid_unless_it_breaks_a_placement(scene_file: ScenePath) -> None:
    got = boxes(scene_file, "  a, b, c, d")
    assert got["a"] == (0.0, 0.0, 0.5, 0.5) and got["d"] == (0.5, 0.5, 1.0, 1.0)
    # a grid of two columns cannot keep a < b < c from left to right: a row is kept
    row = boxes(scene_file, "  a, b, c, d\n  a left of b\n  b left of c")
    assert all(box[1] == 0.0 and box[3] == 1.0 for box in row.values())
    assert cx(row["a"]) < cx(row["b"]) < cx(row["c"])


def test_layout_choice(scene_file: ScenePath) -> None:
    column = boxes(scene_file, "  layout column\n  a, b")
    assert column == {"a": (0.0, 0.0, 1.0, 0.5), "b": (0.0, 0.5, 1.0, 1.0)}
    grid = boxes(scene_file, "  layout grid\n  a, b, c")
    assert grid["c"] == (0.0, 0.5, 0.5, 1.0)


def test_explicit_areas_and_the_rest_in_the_free_space(scene_file: ScenePath) -> None:
    got = boxes(scene_file, "  a at left half\n  b at (0.5, 0.1, 0.75, 0.9)\n  c")
    assert got["a"] == (0.0, 0.0, 0.5, 1.0)
    assert got["b"] == (0.5, 0.1, 0.75, 0.9)
    assert got["c"] == (0.75, 0.0, 1.0, 1.0)


def test_a_stack_and_a_neighbour(scene_file: ScenePath) -> None:
    got = boxes(scene_file, "  a on top of b\n  c right of b")
    assert got["a"][0] == got["b"][0] and cy(got["a"]) < cy(got["b"])
    assert cx(got["c"]) > cx(got["b"])


def test_single_concept_scenes_have_no_regions_unless_an_area_is_given(
    scene_file: ScenePath,
) -> None:
    assert boxes(scene_file, "  a") == {}
    assert boxes(scene_file, "  a at right half") == {"a": (0.5, 0.0, 1.0, 1.0)}
    assert boxes(scene_file, "  regions off\n  a left of b") == {}


def test_regions_alone_and_in_context(scene_file: ScenePath) -> None:
    body = '  setting "a park"\n  a wears "a hat"\n  a waves at b'
    plan = load(scene_file(HEAD + f"scene s {{\n{body}\n}}\n")).plan
    [job] = plan.jobs
    assert job.prompt == "man waves at woman, in a park"
    assert [r.prompt for r in job.regions] == [
        "<A> man wearing a hat, man waves at woman, in a park",
        "<B> woman, man waves at woman, in a park",
    ]
    plan = load(scene_file(HEAD + f"scene s {{\n  regions alone\n{body}\n}}\n")).plan
    assert [r.prompt for r in plan.jobs[0].regions] == [
        "<A> man wearing a hat, in a park",
        "<B> woman, in a park",
    ]


@pytest.mark.parametrize(
    "body",
    [
        "  a left of b\n  c on top of d",
        "  d right of c\n  b below a",
        '  c waves at a, d and b\n  b wears "a crown"',
        '  a, b, c, d\n  d wears "a hat"\n  together "having a picnic"',
    ],
)
def test_every_region_prompt_leads_with_its_own_token(scene_file: ScenePath, body: str) -> None:
    """Whatever the order of mention, each region prompt starts with its subject's token and
    attributes (where a LoRA trained alone reads it) and never holds another concept's token
    or attributes; the rest is the global prompt, word for word."""
    attrs = {"b": "a crown", "d": "a hat"}
    [job, *_] = load(scene_file(HEAD + f'scene s {{\n{body}\n  setting "a park"\n}}\n')).plan.jobs
    for region in job.regions:
        own = f"<{region.subject.upper()}>"
        assert region.prompt.startswith(own)
        head, rest = region.prompt.split(", ", 1)
        assert rest == job.prompt
        assert [t for t in ("<A>", "<B>", "<C>", "<D>") if t in region.prompt] == [own]
        for name, words in attrs.items():
            worn = name == region.subject and f'{name} wears "{words}"' in body
            assert (f"wearing {words}" in region.prompt) == worn, name


def test_concept_negative_goes_to_its_region(scene_file: ScenePath) -> None:
    text = HEAD.replace('class "man"', 'class "man"\n  negative "a woman"')
    plan = load(scene_file(text + "scene s {\n  a, b\n}\n")).plan
    assert [r.negative_prompt for r in plan.jobs[0].regions] == ["a woman", None]


def test_find_cycle() -> None:
    assert layout.find_cycle([("a", "b"), ("b", "c")]) is None
    assert layout.find_cycle([("a", "b"), ("b", "c"), ("c", "a")]) == ["a", "b", "c", "a"]


def test_fmt_keeps_areas() -> None:
    from scenecraft.language.fmt import format_file

    text = "scene s {\n  regions on\n  a at top left\n  b at (0.5, 0, 1, 0.5)\n}\n"
    assert format_file(parse(text)) == text


def test_layout_command_draws_one_sketch_per_scene(
    scene_file: ScenePath, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = scene_file(HEAD + "scene s {\n  a left of b\n}\nscene t {\n  size 768x512\n  c\n}\n")
    out = tmp_path / "out"
    assert main(["layout", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(out / "main" / "s" / "layout.png"),
        str(out / "main" / "t" / "layout.png"),
    ]
    with Image.open(printed[0]) as im:
        assert im.size == (512, 512 + 64)
        left, right = im.getpixel((100, 200)), im.getpixel((400, 200))
        assert left != right  # two boxes in two colours
    with Image.open(printed[1]) as im:
        assert im.size == (512, 341 + 64)
    assert main(["layout", str(path), "--out", str(out), "--only", "nope"]) == 2


def test_layout_only_a_storyboard_draws_the_scenes_its_panels_name(
    scene_file: ScenePath, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the same selection as `render --only BOARD` (issue 11): named panels' scenes count
    text = HEAD + "scene s {\n  a left of b\n}\nscene t {\n  c\n}\n"
    path = scene_file(text + 'storyboard day {\n  panel t "c alone"\n}\n')
    out = tmp_path / "out"
    assert main(["layout", str(path), "--out", str(out), "--only", "day"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "main" / "t" / "layout.png")]
