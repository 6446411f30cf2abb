"""Jinja2 scene templates: variables, the sandbox, and errors that point into the template."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from scenecraft.api import load
from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span
from scenecraft.language.templating import parse_var, read_vars_file, render_template

ScenePath = Callable[..., Path]
ROOT = Path(__file__).parent.parent

HEAD = """model "example-org/sd15-base"
concept gosling {
  token "<GOSLING>"
}
concept taylor {
  token "<TAYLOR>"
}
"""  # 7 lines


def errors_of(path: Path, variables: dict[str, object] | None = None) -> list[Diagnostic]:
    with pytest.raises(DiagnosticError) as info:
        load(path, variables)
    return [d for d in info.value.diagnostics if d.is_error]


def test_loop_expands_to_scenes(scene_file: ScenePath) -> None:
    path = scene_file(
        HEAD
        + "{% for who in people %}\nscene s-{{ who }} {\n  {{ who }}\n"
        + "  setting {{ place | tojson }}\n}\n{% endfor %}\n",
        "t.scene.j2",
    )
    variables = {"people": ["gosling", "taylor"], "place": 'a "quoted" café'}
    plan = load(path, variables).plan
    assert [(j.scene, j.prompt) for j in plan.jobs] == [
        ("s-gosling", '<GOSLING>, in a "quoted" café'),
        ("s-taylor", '<TAYLOR>, in a "quoted" café'),
    ]
    assert plan.template_vars == variables
    assert plan.rendered_source is not None and "scene s-taylor {" in plan.rendered_source


def test_error_in_loop_output_points_to_the_template_line(scene_file: ScenePath) -> None:
    path = scene_file(
        HEAD
        + "{% for who in people %}\n"  # 8
        + "scene s-{{ who }} {\n"  # 9
        + "  {{ who }} waves at nobody\n"  # 10: the error in every expansion
        + "}\n"
        + "{% endfor %}\n",
        "t.scene.j2",
    )
    diags = errors_of(path, {"people": ["gosling", "taylor"]})
    assert [d.code for d in diags] == ["unknown-concept", "unknown-concept"]
    for d in diags:
        assert d.span == Span(str(path), 10, 3, 10, 28)
    notes = [d.notes[0] for d in diags]
    assert notes == [
        "the template produced: `gosling waves at nobody`",
        "the template produced: `taylor waves at nobody`",
    ]


def test_syntax_error_in_loop_output_points_to_the_template_line(scene_file: ScenePath) -> None:
    path = scene_file(
        HEAD + "{% for x in items %}\nscene s{{ loop.index }} {\n  gosling wears {{ x }}\n}\n"
        "{% endfor %}\n",
        "t.scene.j2",
    )
    [diag] = errors_of(path, {"items": ['"a hat"', "a hat"]})
    assert diag.code == "missing-value" or diag.code == "unexpected-token"
    assert diag.span is not None and diag.span.line == 10
    assert diag.notes[0] == "the template produced: `gosling wears a hat`"


def test_lines_after_a_loop_keep_their_template_line(scene_file: ScenePath) -> None:
    path = scene_file(
        HEAD + "{% for i in range(3) %}\nscene s{{ i }} {\n  gosling\n}\n{% endfor %}\n"
        "scene last {\n  nobody\n}\n",
        "t.scene.j2",
    )
    [diag] = errors_of(path)
    assert diag.span == Span(str(path), 14, 3, 14, 9)


def test_lines_after_a_multi_line_tag_keep_their_template_line(scene_file: ScenePath) -> None:
    # issue 11: a Jinja tag spread over lines used to send every later location to 1:1
    path = scene_file(
        HEAD
        + "{% set people = [\n"  # 8
        + '    "gosling",\n'  # 9
        + "] %}\n"  # 10
        + "scene s {\n"  # 11
        + "  {{ people[0] }}\n"  # 12
        + "  {{\n    'nobody'\n  }} waves at gosling\n"  # 13-15
        + "}\n",
        "t.scene.j2",
    )
    [diag] = errors_of(path)
    assert diag.code == "unknown-concept"
    assert diag.span is not None and (diag.span.line, diag.span.col) == (13, 3)


def test_undefined_variable_points_at_its_name(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "scene s {\n  gosling wears {{ outfit }}\n}\n", "t.scene.j2")
    [diag] = errors_of(path, {"outfits": "x"})
    assert diag.code == "undefined-variable"
    assert diag.span == Span(str(path), 9, 20, 9, 26)
    assert diag.help == "did you mean `outfits`?"


def test_undefined_variable_through_tojson(scene_file: ScenePath) -> None:
    # regression: Jinja's tojson serialised StrictUndefined and failed with a TypeError
    path = scene_file(HEAD + "scene s {\n  setting {{ place | tojson }}\n}\n", "t.scene.j2")
    [diag] = errors_of(path)
    assert diag.code == "undefined-variable"
    assert "`place`" in diag.message


def test_unclosed_template_block_points_at_its_opening_tag(scene_file: ScenePath) -> None:
    # Jinja itself reports the line after the tag; the opening `{% if %}` is on line 8
    path = scene_file(HEAD + "{% if x %}\nscene s {\n  gosling\n}\n", "t.scene.j2")
    [diag] = errors_of(path, {"x": True})
    assert diag.code == "template-syntax-error"
    assert diag.span is not None and diag.span.line == 8


def test_template_syntax_error_line(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "scene s {\n  gosling wears {{ x + }}\n}\n", "t.scene.j2")
    [diag] = errors_of(path, {"x": 1})
    assert diag.code == "template-syntax-error"
    assert diag.span is not None and diag.span.line == 9


def test_sandbox_blocks_python_internals(scene_file: ScenePath) -> None:
    path = scene_file(
        HEAD + 'scene s {\n  gosling wears "{{ "{0.__class__}".format(1) }}"\n}\n', "t.scene.j2"
    )
    [diag] = errors_of(path)
    assert diag.code == "template-unsafe"
    assert diag.span is not None and diag.span.line == 9


def test_private_attributes_are_refused(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "# {{ x.__class__.__mro__ }}\n", "t.scene.j2")
    [diag] = errors_of(path, {"x": 1})
    assert diag.code == "template-unsafe"
    assert diag.span is not None and diag.span.line == 8


def test_other_rendering_errors(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "defaults {\n  steps {{ 10 // n }}\n}\n", "t.scene.j2")
    [diag] = errors_of(path, {"n": 0})
    assert diag.code == "template-error"
    assert "ZeroDivisionError" in diag.message
    assert diag.span is not None and diag.span.line == 9


def test_jinja_comments_vanish_and_scene_comments_stay() -> None:
    rendered = render_template('{# gone #}\n# kept {{ 1 + 1 }}\nmodel "m"\n', "t.j2", {})
    assert rendered.text == '# kept 2\nmodel "m"\n'
    assert rendered.line_map[:2] == (2, 3)


def test_a_plain_file_with_jinja_delimiters_is_a_template(scene_file: ScenePath) -> None:
    path = scene_file(HEAD + "scene s {\n  {{ who }}\n}\n")
    assert load(path, {"who": "taylor"}).plan.jobs[0].concepts == ("taylor",)


def test_variants_example_expands() -> None:
    variables = read_vars_file(ROOT / "examples" / "variants.vars.toml")
    plan = load(ROOT / "examples" / "variants.scene.j2", variables).plan
    [board] = plan.storyboards
    assert len(board.panels) == 9
    assert len(plan.jobs) == 9 * len(variables["seeds"])


# ------------------------------------------------------------------------------- variables


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("n=3", ("n", 3)),
        ("xs=[1, 2]", ("xs", [1, 2])),
        ("s=hello world", ("s", "hello world")),
        ('q="1"', ("q", "1")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
    ],
)
def test_parse_var(item: str, expected: tuple[str, object]) -> None:
    assert parse_var(item) == expected


@pytest.mark.parametrize("item", ["novalue", "1x=2", "=3", "a b=1"])
def test_parse_var_rejects_bad_items(item: str) -> None:
    with pytest.raises(DiagnosticError) as info:
        parse_var(item)
    assert info.value.diagnostics[0].code == "bad-variable"


def test_vars_files_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "v.toml").write_text('a = 1\nb = ["x"]\n[c]\nd = "e"\n', encoding="utf-8")
    (tmp_path / "v.json").write_text(json.dumps({"a": 1, "b": ["x"], "c": {"d": "e"}}))
    assert read_vars_file(tmp_path / "v.toml") == read_vars_file(tmp_path / "v.json")


@pytest.mark.parametrize(
    ("name", "text", "code", "line"),
    [
        ("bad.toml", "a = 1\nb = \n", "bad-variables-file", 2),
        ("bad.json", '{\n  "a": ,\n}', "bad-variables-file", 2),
        ("list.json", "[1, 2]", "bad-variables-file", None),
        ("vars.yaml", "a: 1", "bad-variables-file", 1),
    ],
)
def test_bad_vars_files(tmp_path: Path, name: str, text: str, code: str, line: int | None) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DiagnosticError) as info:
        read_vars_file(tmp_path / name)
    [diag] = info.value.diagnostics
    assert diag.code == code
    assert (diag.span.line if diag.span else None) == line


def test_missing_vars_file(tmp_path: Path) -> None:
    with pytest.raises(DiagnosticError) as info:
        read_vars_file(tmp_path / "nope.toml")
    assert info.value.diagnostics[0].code == "file-not-found"
