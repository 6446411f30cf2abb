"""Checker rules and the loader: names, settings, includes, all errors of a file in one run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from scenecraft.api import load
from scenecraft.diagnostics import Diagnostic, DiagnosticError

ScenePath = Callable[..., Path]

MODEL = 'model "example-org/sd15-base"\n'
CAST = """
concept gosling {
  token "<GOSLING>"
  class "man"
}

concept taylor {
  token "<TAYLOR>"
  class "woman"
}
"""


def errors_of(path: Path, **kw: object) -> list[Diagnostic]:
    with pytest.raises(DiagnosticError) as info:
        load(path, **kw)  # type: ignore[arg-type]
    return info.value.diagnostics


def codes(diags: list[Diagnostic]) -> list[str]:
    return [d.code for d in diags]


def test_all_errors_of_a_file_are_reported_sorted_by_position(scene_file: ScenePath) -> None:
    path = scene_file(
        MODEL
        + CAST
        + """
defaults {
  steps 0
  sampler "Eular"
}

scene a {
  gosling waves at gosling
  tylor left of gosling
  size 500x500
}

storyboard b {
  panel nowhere
}
"""
    )
    diags = [d for d in errors_of(path) if d.is_error]
    assert codes(diags) == [
        "value-out-of-range",
        "unknown-sampler",
        "self-reference",
        "unknown-concept",
        "size-not-multiple-of-8",
        "unknown-scene",
    ]
    positions = [(d.span.line, d.span.col) for d in diags if d.span]
    assert positions == sorted(positions)


def test_a_clean_file_has_no_warnings(scene_file: ScenePath) -> None:
    loaded = load(scene_file(MODEL + CAST + "\nscene s {\n  gosling hugs taylor\n}\n"))
    assert codes(loaded.warnings) == ["concept-without-weights", "concept-without-weights"]
    assert [j.scene for j in loaded.plan.jobs] == ["s"]


def test_unknown_concept_suggests_the_closest_name(scene_file: ScenePath) -> None:
    [diag] = [
        d for d in errors_of(scene_file(MODEL + CAST + "scene s {\n  goslin\n}\n")) if d.is_error
    ]
    assert diag.code == "unknown-concept"
    assert diag.help == "did you mean `gosling`?"


def test_objects_are_in_scope_only_in_their_scene(scene_file: ScenePath) -> None:
    path = scene_file(
        MODEL
        + CAST
        + 'scene a {\n  object vase "a vase"\n  gosling left of vase\n}\n'
        + "scene b {\n  taylor left of vase\n}\n"
    )
    [diag] = [d for d in errors_of(path) if d.is_error]
    assert (diag.code, diag.span and diag.span.line) == ("unknown-concept", 17)


def test_object_named_like_a_concept_is_a_duplicate(scene_file: ScenePath) -> None:
    path = scene_file(MODEL + CAST + "scene a {\n  object gosling\n  taylor\n}\n")
    assert "duplicate-definition" in codes(errors_of(path))


def test_contradictory_placements_on_one_axis_only(scene_file: ScenePath) -> None:
    ok = scene_file(
        MODEL + CAST + "scene a {\n  gosling left of taylor\n  gosling above taylor\n}\n",
        "ok.scene",
    )
    load(ok)
    bad = scene_file(
        MODEL + CAST + "scene a {\n  gosling left of taylor\n  gosling right of taylor\n}\n"
    )
    assert "contradictory-placement" in codes(errors_of(bad))


def test_missing_verb_for_a_concept_followed_by_text(scene_file: ScenePath) -> None:
    path = scene_file(MODEL + CAST + 'scene a {\n  gosling "a hat"\n  taylor\n}\n')
    diags = errors_of(path)
    [diag] = [d for d in diags if d.is_error]
    assert diag.code == "missing-verb"
    assert diag.help is not None and 'gosling wears "a hat"' in diag.help
    # the line still mentions gosling: no "unused" or "empty scene" noise around the error
    assert not {"unused-concept", "empty-scene"} & set(codes(diags))


def test_scene_settings_override_defaults(scene_file: ScenePath) -> None:
    path = scene_file(
        MODEL
        + CAST
        + "defaults {\n  steps 20\n  seeds 1\n}\n"
        + "scene a {\n  gosling\n  steps 40\n  seeds 5, 6\n}\n"
        + "scene b {\n  taylor\n}\n"
    )
    jobs = load(path).plan.jobs
    assert [(j.scene, j.steps, j.seed) for j in jobs] == [
        ("a", 40, 5),
        ("a", 40, 6),
        ("b", 20, 1),
    ]


def test_batch_size_only_in_defaults(scene_file: ScenePath) -> None:
    path = scene_file(MODEL + CAST + "scene a {\n  gosling\n  batch_size 2\n}\n")
    assert "unknown-setting" in codes(errors_of(path))


def test_merge_params_are_checked_per_method(scene_file: ScenePath) -> None:
    good = scene_file(MODEL + CAST + "merge ties {\n  density 0.5\n}\nscene a {\n  gosling\n}\n")
    plan = load(good).plan
    assert (plan.merge.method, plan.merge.params.values()) == ("ties", {"density": 0.5})
    bad = scene_file(
        MODEL + CAST + "merge linear {\n  density 0.5\n}\nscene a {\n  gosling\n}\n", "bad.scene"
    )
    assert "unknown-setting" in codes(errors_of(bad))


# ------------------------------------------------------------------------ files and includes


def test_lora_paths_resolve_against_the_declaring_file(scene_file: ScenePath) -> None:
    lib = scene_file(
        'concept dog {\n  token "<V1>"\n  lora "../loras/dog.safetensors"\n}\n', "lib/cast.scene"
    )
    (lib.parent.parent / "loras").mkdir()
    (lib.parent.parent / "loras" / "dog.safetensors").write_bytes(b"")
    main = scene_file(MODEL + 'include "lib/cast.scene"\nscene s {\n  dog\n}\n')
    loaded = load(main, allow_missing=False)
    [concept] = loaded.plan.merge.concepts
    assert concept.lora == str((lib.parent.parent / "loras" / "dog.safetensors").resolve())
    assert not concept.placeholder
    assert loaded.warnings == []


def test_missing_lora_is_a_warning_or_an_error(scene_file: ScenePath) -> None:
    path = scene_file(
        MODEL + 'concept dog {\n  token "<V1>"\n  lora "nope.safetensors"\n}\nscene s {\n  dog\n}\n'
    )
    lenient = load(path, allow_missing=True)
    assert [(d.code, d.severity) for d in lenient.warnings] == [("lora-not-found", "warning")]
    assert lenient.plan.merge.concepts[0].placeholder
    assert [(d.code, d.severity) for d in errors_of(path, allow_missing=False)] == [
        ("lora-not-found", "error")
    ]


def test_include_brings_concepts_model_and_defaults(scene_file: ScenePath) -> None:
    scene_file(MODEL + CAST + "defaults {\n  steps 12\n}\n", "lib/cast.scene")
    main = scene_file('include "lib/cast.scene"\nscene s {\n  gosling hugs taylor\n}\n')
    loaded = load(main)
    assert loaded.plan.merge.base.source == "example-org/sd15-base"
    assert [c.name for c in loaded.plan.merge.concepts] == ["gosling", "taylor"]
    assert loaded.plan.jobs[0].steps == 12
    assert set(loaded.sources) == {str(main), str(main.parent / "lib" / "cast.scene")}


def test_an_include_twice_is_read_once_and_concepts_across_files_clash(
    scene_file: ScenePath,
) -> None:
    scene_file(CAST, "lib/cast.scene")
    scene_file('include "cast.scene"\n', "lib/more.scene")
    main = scene_file(
        MODEL + 'include "lib/cast.scene"\ninclude "lib/more.scene"\nscene s {\n  gosling\n}\n'
    )
    assert [c.name for c in load(main).plan.merge.concepts] == ["gosling"]
    clash = scene_file(
        MODEL + 'include "lib/cast.scene"\n' + CAST + "scene s {\n  gosling\n}\n", "clash.scene"
    )
    assert "duplicate-definition" in codes(errors_of(clash))


def test_circular_include_names_the_cycle(scene_file: ScenePath) -> None:
    scene_file('include "b.scene"\n', "lib/a.scene")
    scene_file('include "a.scene"\n', "lib/b.scene")
    main = scene_file(MODEL + 'include "lib/a.scene"\n')
    [diag] = errors_of(main)
    assert diag.code == "circular-include"
    assert "a.scene -> b.scene -> a.scene" in diag.message
    assert diag.span is not None and diag.span.file.endswith("b.scene")


def test_self_include_is_circular(scene_file: ScenePath) -> None:
    main = scene_file(MODEL + 'include "main.scene"\n')
    assert codes(errors_of(main)) == ["circular-include"]


def test_error_in_an_included_file_points_into_it(scene_file: ScenePath) -> None:
    scene_file("concept x {\n  weight 9\n}\n", "lib/cast.scene")
    main = scene_file(MODEL + 'include "lib/cast.scene"\nscene s {\n  x\n}\n')
    [diag] = [d for d in errors_of(main) if d.is_error]
    assert diag.code == "value-out-of-range"
    assert diag.span is not None
    assert (Path(diag.span.file).name, diag.span.line) == ("cast.scene", 2)


def test_missing_include_points_at_the_include_line(scene_file: ScenePath) -> None:
    main = scene_file(MODEL + 'include "nope.scene"\n')
    [diag] = errors_of(main)
    assert diag.code == "file-not-found"
    assert diag.span is not None and (diag.span.file, diag.span.line) == (str(main), 2)


def test_missing_main_file(tmp_path: Path) -> None:
    [diag] = errors_of(tmp_path / "nope.scene")
    assert diag.code == "file-not-found"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.scene"
    path.write_bytes(b'model "\xff"\n')
    assert codes(errors_of(path)) == ["unreadable-file"]


def test_scene_in_included_file(scene_file: ScenePath) -> None:
    scene_file(CAST + "scene extra {\n  gosling\n}\n", "lib/cast.scene")
    main = scene_file(MODEL + 'include "lib/cast.scene"\nscene s {\n  gosling\n}\n')
    assert "scene-in-include" in codes(errors_of(main))


def test_unused_concept_warns_only_for_the_main_file(scene_file: ScenePath) -> None:
    scene_file(CAST, "lib/cast.scene")
    main = scene_file(
        MODEL
        + 'include "lib/cast.scene"\nconcept zed {\n  token "<Z>"\n}\nscene s {\n  gosling\n}\n'
    )
    unused = [d for d in load(main).warnings if d.code == "unused-concept"]
    assert [d.message for d in unused] == ["concept `zed` is never used in a scene"]


def test_tokens_written_inside_prompt_text_are_reported(scene_file: ScenePath) -> None:
    """`token-in-text`: a trigger token inside any text that reaches the prompt as written
    (defaults, settings, attributes, quoted verbs, objects, `together`), once per place; not
    in `negative`, not inside another word, not when the concept is named."""
    path = scene_file(
        MODEL
        + CAST
        + """
defaults {
  style "photo of <TAYLOR>"
  negative "<GOSLING>, blurry"
}

scene a {
  gosling wears "a shirt like <TAYLOR>'s"
  gosling "hugs" taylor
  setting "a park"
}

scene b {
  taylor
  object vase "a vase shaped like <GOSLING>"
  together "<TAYLOR><GOSLING> dancing"
  extra "not<GOSLING>x", "x<TAYLOR>y"
}
"""
    )
    warned = [d for d in load(path).warnings if d.code == "token-in-text"]
    lines = [(d.span.line if d.span else 0, d.message.split("`")[1]) for d in warned]
    assert sorted(lines) == [
        (14, "<TAYLOR>"),  # defaults style
        (19, "<TAYLOR>"),  # an attribute
        (26, "<GOSLING>"),  # an object's text
        (27, "<GOSLING>"),  # together: two tokens side by side are two words
        (27, "<TAYLOR>"),
    ]
    assert "name the concept instead (`taylor`" in warned[0].help  # type: ignore[operator]


def test_token_match_is_a_whole_word() -> None:
    from scenecraft.language.check import contains_token

    assert contains_token("with <ZIGGY>, on grass", "<ZIGGY>")
    assert contains_token("ohwx man", "ohwx") and not contains_token("ohwxy man", "ohwx")
    assert not contains_token("she asks", "sks") and contains_token("a sks dog", "sks")


def test_a_style_token_in_text_says_how_to_name_the_style(scene_file: ScenePath) -> None:
    path = scene_file(
        MODEL
        + CAST
        + 'concept noir {\n  token "<NOIR>"\n  kind style\n}\n'
        + 'scene s {\n  gosling\n  style "<NOIR>, moody"\n}\n'
    )
    [warned] = [d for d in load(path).warnings if d.code == "token-in-text"]
    assert warned.help == "write `style noir`: a style concept named so is merged"
