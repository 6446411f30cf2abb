"""The corners a new user hit (issue 30), one regression test each."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenecraft.render.storyboard import panel_label


def test_a_caption_that_starts_with_a_number_is_not_numbered_twice() -> None:
    assert panel_label(0, "1. Market day") == "1. Market day"
    assert panel_label(1, "2) Meanwhile") == "2) Meanwhile"
    assert panel_label(2, "Kiki is crowned") == "3. Kiki is crowned"
    assert panel_label(3, "") == "4."
    assert panel_label(4, "1984 revisited") == "5. 1984 revisited"


def test_fmt_help_says_templates_are_not_formatted(capsys: pytest.CaptureFixture[str]) -> None:
    from scenecraft.cli import main

    with pytest.raises(SystemExit):
        main(["fmt", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Jinja templates" in out and "are not formatted" in out


SCENE = """model "{model}"
concept ziggy {{
  token "<ZIGGY>"
  class "man"
  lora "z.safetensors"
}}

scene s {{
  ziggy
}}
"""


def _scene(folder: Path, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "z.safetensors").write_bytes(b"")
    path = folder / "s.scene"
    path.write_text(SCENE.format(model=model), encoding="utf-8")
    return path


def test_a_model_path_without_dot_slash_is_relative_to_the_scene_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scenecraft import load

    scene = _scene(tmp_path / "proj", "sc/weights/base")
    (tmp_path / "proj/sc/weights/base").mkdir(parents=True)
    for cwd in (tmp_path, tmp_path / "proj", tmp_path / "proj/sc"):  # any folder: one answer
        monkeypatch.chdir(cwd)
        loaded = load(str(scene))
        assert loaded.plan.merge.base.source == str(tmp_path / "proj/sc/weights/base")
        assert not [w for w in loaded.warnings if w.code.startswith("model")]


def test_a_hub_like_id_naming_a_local_folder_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scenecraft import load

    scene = _scene(tmp_path / "proj", "org/base")
    (tmp_path / "org/base").mkdir(parents=True)  # in the current folder, not beside the file
    monkeypatch.chdir(tmp_path)
    loaded = load(str(scene))
    assert loaded.plan.merge.base.source == "org/base"  # still the hub id
    (warning,) = [w for w in loaded.warnings if w.code == "model-path-ambiguous"]
    assert "current folder" in warning.message
    (tmp_path / "proj/org/base").mkdir(parents=True)  # now beside the file too: the folder wins
    loaded = load(str(scene))
    assert loaded.plan.merge.base.source == str(tmp_path / "proj/org/base")
    assert [w.code for w in loaded.warnings] == ["model-path-ambiguous"]


def test_render_reads_a_hub_like_id_as_the_hub_whatever_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scenecraft.models as models
    from scenecraft.plan import BaseModelSpec

    (tmp_path / "org/base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    asked: list[str] = []

    def fake_hub(base: BaseModelSpec, dtype: object) -> object:
        asked.append(base.source)
        raise RuntimeError("stop here")

    monkeypatch.setattr(models, "_load_hub", fake_hub)
    with pytest.raises(RuntimeError, match="stop here"):
        models.load_pipeline(BaseModelSpec(source="org/base"), device="cpu")
    assert asked == ["org/base"]


def test_dry_run_off_a_terminal_keeps_whole_paths(tmp_path: Path) -> None:
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from scenecraft.cli import render as command
    from scenecraft.cli.args import RenderSettings, build_parser
    from tests._fixtures_render import make_plan, saved_pipeline_dir

    argv = ["render", "f.scene", "--out", str(tmp_path), "--dry-run"]
    settings = RenderSettings.from_args(build_parser().parse_args(argv))
    long = ("the-knight-waves-at-the-queen-in-the-ancient-library", "solo")
    plan = make_plan(base=str(saved_pipeline_dir()), seeds=(1,), scenes=long)
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False)  # what a pipe gets
    assert command.run(settings, SimpleNamespace(plan=plan), console=console) == 0
    text = buf.getvalue()
    assert f"{long[0]}/1.png" in text  # one piece, not folded over lines
    assert text.count(long[0]) == 2  # scene column and path, each whole


def test_a_string_var_where_the_template_loops_is_a_diagnostic(tmp_path: Path) -> None:
    from scenecraft import load
    from scenecraft.diagnostics import DiagnosticError

    (tmp_path / "z.safetensors").write_bytes(b"")
    template = tmp_path / "places.scene.j2"
    template.write_text(
        SCENE.format(model="org/base").split("scene s")[0]
        + "{% for place in places %}\n"
        + 'scene {{ place | replace(" ", "-") }} {\n  ziggy\n  setting {{ place | tojson }}\n}\n'
        + "{% endfor %}\n",
        encoding="utf-8",
    )
    with pytest.raises(DiagnosticError) as caught:
        load(str(template), {"places": "on grass"})
    (d,) = caught.value.diagnostics
    assert d.code == "bad-variable" and "letter by letter" in d.message
    assert d.span is not None and (d.span.line, d.span.col) == (8, 17)  # `places` in the for
    assert "--var places='[\"on grass\"]'" in (d.help or "")
    loaded = load(str(template), {"places": ["on grass", "at sea"]})  # a list works
    assert [j.scene for j in loaded.plan.jobs] == ["on-grass", "at-sea"]


def test_a_manifest_write_leaves_no_lock_file(tmp_path: Path) -> None:
    from scenecraft.render.manifest import Manifest

    path = tmp_path / "story" / "manifest.json"
    m = Manifest.open(path, {"plan_file": "story.scene"})
    m.record("a.png", {"key": "A"})
    m.save()
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]


def test_the_tour_shows_the_regions_compile_writes(tmp_path: Path) -> None:
    """docs/tour.md's market example prints what `scenecraft compile` gives for it (a global
    prompt and a box and prompt per concept), not one combined prompt."""
    from scenecraft import load

    for name in ("g", "t"):
        (tmp_path / f"{name}.safetensors").write_bytes(b"")
    scene = tmp_path / "market.scene"
    scene.write_text(
        'model "org/base"\n'
        'concept gosling {\n  token "<GOSLING>"\n  class "man"\n  lora "g.safetensors"\n}\n'
        'concept taylor {\n  token "<TAYLOR>"\n  class "woman"\n  lora "t.safetensors"\n}\n'
        "scene market {\n"
        '  gosling in "a denim jacket" holding "a basket of apples"\n'
        '  taylor wears "a striped shirt and linen trousers"\n'
        "  gosling beside taylor\n"
        '  setting "a busy farmers market"\n'
        "}\n",
        encoding="utf-8",
    )
    (job,) = load(str(scene)).plan.jobs
    tour = (Path(__file__).parent.parent / "docs" / "tour.md").read_text(encoding="utf-8")
    assert f"\n{job.prompt}\n" in tour
    for region in job.regions:
        assert f"{region.prompt}\n" in tour and f"  {region.subject} [" in tour
