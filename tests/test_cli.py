"""The `scenecraft` command (check, compile, fmt): exit codes, JSON output, variables.

Run in-process through `scenecraft.cli.main` (output captured with capsys), plus one real
subprocess. `merge` and `render` are tested by their owners.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from scenecraft import cli
from scenecraft.plan import RenderPlan

ScenePath = Callable[..., Path]
ROOT = Path(__file__).parent.parent

GOOD = """model "example-org/sd15-base"

concept gosling {
  token "<GOSLING>"
  class "man"
}

scene s {
  gosling
}
"""
BAD = GOOD.replace("  gosling\n}", "  goslin\n}")
TEMPLATE = GOOD.replace(
    "  gosling\n}", "  gosling wears {{ outfit | tojson }}\n  steps {{ steps }}\n}"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# ---------------------------------------------------------------------------------- check


def test_check_ok(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    code, out, err = run(capsys, "check", scene_file(GOOD))
    assert code == 0
    assert "checked 1 file: no errors" in err
    assert "error" not in out


def test_check_error_is_rendered_and_exits_2(
    capsys: pytest.CaptureFixture[str], scene_file: ScenePath
) -> None:
    path = scene_file(BAD)
    code, _, err = run(capsys, "check", path)
    assert code == 2
    assert "error[unknown-concept]: unknown concept `goslin`" in err
    assert f"{path}:9:3" in err
    assert "9 |   goslin" in err
    assert "did you mean `gosling`?" in err


def test_check_json(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    code, out, _ = run(capsys, "check", "--format", "json", scene_file(BAD))
    assert code == 2
    diags = json.loads(out)
    [diag] = [d for d in diags if d["severity"] == "error"]
    assert {d["code"] for d in diags} == {
        "unknown-concept",
        "concept-without-weights",
        "unused-concept",
    }
    assert diag["code"] == "unknown-concept"
    assert diag["severity"] == "error"
    assert (diag["span"]["line"], diag["span"]["col"]) == (9, 3)
    assert diag["help"] == "did you mean `gosling`?"


def test_check_json_with_warnings_only(
    capsys: pytest.CaptureFixture[str], scene_file: ScenePath
) -> None:
    code, out, _ = run(capsys, "check", "--format", "json", scene_file(GOOD))
    assert code == 0
    assert [d["code"] for d in json.loads(out)] == ["concept-without-weights"]


def test_check_json_for_a_syntax_error(
    capsys: pytest.CaptureFixture[str], scene_file: ScenePath
) -> None:
    code, out, _ = run(capsys, "check", "--format=json", scene_file("scene s {\n"))
    assert code == 2
    assert [d["code"] for d in json.loads(out)] == ["unclosed-block"]


def test_check_strict_makes_missing_lora_an_error(
    capsys: pytest.CaptureFixture[str], scene_file: ScenePath
) -> None:
    path = scene_file(GOOD.replace('class "man"', 'class "man"\n  lora "gone.safetensors"'))
    assert run(capsys, "check", path)[0] == 0
    code, _, err = run(capsys, "check", "--strict", path)
    assert code == 2
    assert "error[lora-not-found]" in err


def test_check_several_files_reports_all(
    capsys: pytest.CaptureFixture[str], scene_file: ScenePath
) -> None:
    bad1 = scene_file(BAD, "a.scene")
    good = scene_file(GOOD, "b.scene")
    bad2 = scene_file("scene s {\n", "c.scene")
    code, _, err = run(capsys, "check", bad1, good, bad2)
    assert code == 2
    assert "error[unknown-concept]" in err and "error[unclosed-block]" in err


def test_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", tmp_path / "nope.scene")
    assert code == 2
    assert "error[file-not-found]" in err


def test_check_examples(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted((ROOT / "scenes").glob("*.scene"))
    assert run(capsys, "check", *files)[0] == 0
    code, _, _ = run(
        capsys,
        "check",
        ROOT / "examples" / "variants.scene.j2",
        "--vars",
        ROOT / "examples" / "variants.vars.toml",
    )
    assert code == 0


# -------------------------------------------------------------------------------- compile


def test_compile_json_round_trips_and_is_deterministic(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = ROOT / "examples" / "storyboard.scene"
    code, first, _ = run(capsys, "compile", path, "--json")
    assert code == 0
    plan = RenderPlan.model_validate_json(first)
    assert plan.jobs and plan.storyboards
    assert plan.to_json() + "\n" == first
    _, second, _ = run(capsys, "compile", path, "--json")
    assert first == second


def test_compile_human_output(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    code, out, err = run(capsys, "compile", scene_file(GOOD))
    assert code == 0
    assert "GOSLING" in out + err


def test_compile_error_exits_2(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    code, out, err = run(capsys, "compile", scene_file(BAD), "--json")
    assert code == 2
    assert out == ""
    assert "error[unknown-concept]" in err


def test_var_and_vars_files(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    path = scene_file(TEMPLATE, "t.scene.j2")
    toml = scene_file('outfit = "a hat"\nsteps = 12\n', "v.toml")
    js = scene_file(json.dumps({"outfit": "a hat", "steps": 12}), "v.json")

    def plan_for(*args: str | Path) -> RenderPlan:
        code, out, err = run(capsys, "compile", path, "--json", *args)
        assert code == 0, err
        return RenderPlan.model_validate_json(out)

    from_toml = plan_for("--vars", toml)
    assert (from_toml.jobs[0].prompt, from_toml.jobs[0].steps) == (
        "<GOSLING> man wearing a hat",
        12,
    )
    assert plan_for("--vars", js).jobs == from_toml.jobs
    from_args = plan_for("--var", "outfit=a hat", "--var", "steps=12")
    assert from_args.jobs == from_toml.jobs
    assert from_args.template_vars == {"outfit": "a hat", "steps": 12}
    overridden = plan_for("--vars", toml, "--var", "steps=20")  # --var wins over --vars
    assert overridden.jobs[0].steps == 20


def test_template_errors_exit_2(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    path = scene_file(TEMPLATE, "t.scene.j2")
    code, _, err = run(capsys, "check", path, "--var", "outfit=x")
    assert code == 2
    assert "error[undefined-variable]: template variable `steps` is undefined" in err
    code, _, err = run(capsys, "compile", path, "--var", "1=x")
    assert code == 2
    assert "error[bad-variable]" in err
    bad_vars = scene_file("steps = = 3\n", "bad.toml")
    code, _, err = run(capsys, "check", path, "--vars", bad_vars)
    assert code == 2
    assert "error[bad-variables-file]" in err


# ------------------------------------------------------------------------------------ fmt

UGLY = 'model   "m"\nscene s {\n      gosling   wears "a hat"   # hat\n}\n'
PRETTY = 'model "m"\n\nscene s {\n  gosling wears "a hat"  # hat\n}\n'


def test_fmt_check(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    ugly = scene_file(UGLY, "ugly.scene")
    pretty = scene_file(PRETTY, "pretty.scene")
    assert run(capsys, "fmt", "--check", pretty)[0] == 0
    code, _, err = run(capsys, "fmt", "--check", ugly, pretty)
    assert code == 1
    assert f"would reformat {ugly}" in err
    assert ugly.read_text() == UGLY  # --check writes nothing


def test_fmt_stdout_and_in_place(capsys: pytest.CaptureFixture[str], scene_file: ScenePath) -> None:
    ugly = scene_file(UGLY)
    code, out, _ = run(capsys, "fmt", "--stdout", ugly)
    assert (code, out) == (0, PRETTY)
    assert ugly.read_text() == UGLY
    code, _, err = run(capsys, "fmt", ugly)
    assert code == 0
    assert ugly.read_text() == PRETTY
    assert f"reformatted {ugly}" in err
    assert [p.name for p in ugly.parent.iterdir()] == ["main.scene"]  # no temp file left
    # issue 11: an already formatted file printed nothing with --stdout
    code, out, _ = run(capsys, "fmt", "--stdout", ugly)
    assert (code, out) == (0, PRETTY)


def test_fmt_refuses_templates_and_bad_files(
    capsys: pytest.CaptureFixture[str], scene_file: ScenePath
) -> None:
    code, _, err = run(capsys, "fmt", scene_file(TEMPLATE, "t.scene.j2"))
    assert code == 2
    assert "error[cannot-format-template]" in err
    broken = scene_file("scene s {\n", "broken.scene")
    code, _, err = run(capsys, "fmt", broken)
    assert code == 2
    assert "error[unclosed-block]" in err
    assert broken.read_text() == "scene s {\n"


# ------------------------------------------------------------------------ failures and argv


def test_internal_error_is_reported_without_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, scene_file: ScenePath
) -> None:
    def boom(*_: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.delenv("SCENECRAFT_DEBUG", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "check", boom)
    code, _, err = run(capsys, "check", scene_file(GOOD))
    assert code == cli.EXIT_INTERNAL
    assert "error[internal-error]: RuntimeError: boom" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["check"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback(scene_file: ScenePath) -> None:
    """The real command: exit code 2 without a traceback, and the same plan JSON from two
    processes with different string-hash seeds (nothing depends on set or dict hash order)."""

    def scenecraft(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed}
        env.pop("SCENECRAFT_DEBUG", None)
        cmd = [sys.executable, "-m", "scenecraft.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    proc = scenecraft("check", str(scene_file(BAD)))
    assert proc.returncode == 2
    assert "error[unknown-concept]" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    example = "examples/storyboard.scene"
    first = scenecraft("compile", example, "--json", hash_seed="1")
    second = scenecraft("compile", example, "--json", hash_seed="2")
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout
