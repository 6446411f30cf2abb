"""Hostile inputs stay bounded: capped reads, non-files, include chains, template limits, job caps.

Each case must end in a diagnostic (exit 2 at the CLI), never a hang, a MemoryError or exit 70.
Peak memory of the same inputs is measured by benchmarks/hostile_inputs.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scenecraft import cli
from scenecraft.api import load
from scenecraft.diagnostics import DiagnosticError
from scenecraft.files import NotARegularFile, TooLarge, load_error_note, path_problem, read_capped
from scenecraft.language import templating
from scenecraft.language.loader import MAX_FILE_BYTES, read_text
from scenecraft.language.templating import read_vars_file, render_template

HEAD = """model "example-org/sd15-base"
concept ziggy {
  token "<ZIGGY>"
  class "man"
}
"""


def codes(exc: pytest.ExceptionInfo[DiagnosticError]) -> list[str]:
    return [d.code for d in exc.value.diagnostics]


def fail(tmp_path: Path, text: str, name: str = "x.scene", **kw: object) -> DiagnosticError:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DiagnosticError) as exc:
        load(path, **kw)  # type: ignore[arg-type]
    return exc.value


# ------------------------------------------------------------------------------ reading


def test_read_capped_reads_at_most_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(TooLarge):
        read_capped(big, 100)
    assert read_capped(big, 101) == b"x" * 101


def test_devices_fifos_folders_and_symlink_loops_are_not_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    cases = {
        "/dev/zero": "a device",
        str(fifo): "a FIFO (named pipe)",
        str(tmp_path): "a folder",
        str(loop): "a symlink loop",
    }
    for path, kind in cases.items():
        assert path_problem(path) == kind
        with pytest.raises(NotARegularFile) as exc:
            read_capped(path, 10)  # a FIFO with no writer must not block
        assert exc.value.kind == kind
    assert path_problem(tmp_path / "missing") == "missing"


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "folder", "loop"])
def test_scene_file_that_is_not_a_file_is_unreadable_file(tmp_path: Path, target: str) -> None:
    path = Path(target) if target.startswith("/") else tmp_path / target
    if target == "fifo":
        os.mkfifo(path)
    elif target == "folder":
        path.mkdir()
    elif target == "loop":
        path.symlink_to(path)
    with pytest.raises(DiagnosticError) as exc:
        read_text(path, str(path))
    assert codes(exc) == ["unreadable-file"]
    assert "not a regular file" in exc.value.diagnostics[0].message


def test_oversized_scene_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.scene"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES * 64)  # sparse: 256 MiB that cost no disk
    with pytest.raises(DiagnosticError) as exc:
        read_text(path, "huge.scene")
    assert codes(exc) == ["unreadable-file"] and "2 MiB" in exc.value.diagnostics[0].message


def test_include_of_a_device_and_of_a_symlink_loop(tmp_path: Path) -> None:
    err = fail(tmp_path, HEAD + 'include "/dev/zero"\nscene s {\n  ziggy\n}\n')
    assert [d.code for d in err.diagnostics] == ["unreadable-file"]
    assert err.diagnostics[0].span is not None  # points at the include
    (tmp_path / "l1.scene").symlink_to(tmp_path / "l2.scene")
    (tmp_path / "l2.scene").symlink_to(tmp_path / "l1.scene")
    err = fail(tmp_path, HEAD + 'include "l1.scene"\nscene s {\n  ziggy\n}\n', "y.scene")
    assert [d.code for d in err.diagnostics] == ["unreadable-file"]


def test_vars_file_that_is_a_device_is_a_diagnostic() -> None:
    with pytest.raises(DiagnosticError) as exc:
        read_vars_file("/dev/zero")
    assert codes(exc) == ["bad-variables-file"]


def test_include_chain_1500_deep_is_include_too_deep(tmp_path: Path) -> None:
    for i in range(1500):
        (tmp_path / f"{i}.scene").write_text(f'include "{i + 1}.scene"\n', encoding="utf-8")
    err = fail(tmp_path, HEAD + 'include "0.scene"\nscene s {\n  ziggy\n}\n')
    assert [d.code for d in err.diagnostics] == ["include-too-deep"]


def test_cli_exit_2_for_dev_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "/dev/zero"]) == 2
    assert "unreadable-file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    "body",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        "{{ 10 ** 100000 }}",
        "{{ lipsum(10**6) }}",
        "{{ 'x'|center(10**9) }}",
        "{{ 'x'.ljust(10**9) }}",
        "{{ '%999999999d'|format(1) }}",
        "{{ '%999999999d' % 1 }}",
        "{{ range(100000)|join('x' * 100) }}",
        "{{ [1]|batch(10**9, 'x')|list }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'y' * 1000 }}\n{% endfor %}",
    ],
)
def test_template_bounds(body: str) -> None:
    with pytest.raises(DiagnosticError) as exc:
        render_template(HEAD + body + "\n", "t.scene.j2", {})
    assert codes(exc) == ["template-limit"]
    span = exc.value.diagnostics[0].span
    assert span is not None and span.line > HEAD.count("\n")  # in the body, not on line 1


def test_template_time_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(templating, "MAX_SECONDS", 0.3)
    loops = (
        "{% set l = range(3000)|list %}{% for a in l %}{% for b in l %}{% for c in l %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    )
    with pytest.raises(DiagnosticError) as exc:
        render_template(HEAD + loops + "\n", "t.scene.j2", {})
    assert codes(exc) == ["template-limit"]
    assert "longer than 0.3 s" in exc.value.diagnostics[0].message


def test_ordinary_templates_are_untouched() -> None:
    text = "{% for s in range(4294967000, 4294967002) %}{{ s }} {{ 'ab' * 3 }}\n{% endfor %}"
    assert render_template(text, "t.j2", {}).text == "4294967000 ababab\n4294967001 ababab\n"


# ----------------------------------------------------------------------- jobs and seeds


def test_job_cap_counts_before_expanding(tmp_path: Path) -> None:
    scenes = "".join(f"scene s{i} {{\n  ziggy\n  seeds 0..9999\n}}\n" for i in range(11))
    err = fail(tmp_path, HEAD + scenes)
    [d] = err.diagnostics
    # the checker stops at the scene that passes the cap: nothing more is held in memory
    assert d.code == "too-many-jobs" and "more than 100,000 images" in d.message
    assert "at least 110,000 up to scene `s10`" in d.message
    loaded = load(tmp_path / "x.scene", max_jobs=110_000)
    assert len(loaded.plan.jobs) == 110_000


def test_compiler_states_the_exact_count(tmp_path: Path) -> None:
    from scenecraft.language.check import check
    from scenecraft.language.compiler import compile_plan
    from scenecraft.language.loader import load_program

    path = tmp_path / "x.scene"
    path.write_text(HEAD + "scene s {\n  ziggy\n  seeds 1..30\n}\n", encoding="utf-8")
    checked = check(load_program(path))
    with pytest.raises(DiagnosticError) as exc:
        compile_plan(checked, source_text="", max_jobs=29)
    [d] = exc.value.diagnostics
    assert d.code == "too-many-jobs" and "asks for 30 images in all (at most 29" in d.message


def test_job_cap_flag_on_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.scene"
    path.write_text(HEAD + "scene s {\n  ziggy\n  seeds 1..3\n}\n", encoding="utf-8")
    assert cli.main(["compile", str(path), "--max-jobs", "2"]) == 2
    assert "too-many-jobs" in capsys.readouterr().err
    assert cli.main(["compile", str(path), "--max-jobs", "3", "--json"]) == 0


def test_seed_plus_image_index_above_32_bits_is_rejected(tmp_path: Path) -> None:
    text = HEAD + "scene s {\n  ziggy\n  seeds 4294967295\n  images_per_seed 64\n}\n"
    err = fail(tmp_path, text)
    [d] = err.diagnostics
    assert d.code == "value-out-of-range" and "4294967358" in d.message
    ok = HEAD + "scene s {\n  ziggy\n  seeds 4294967232\n  images_per_seed 64\n}\n"
    (tmp_path / "ok.scene").write_text(ok, encoding="utf-8")
    assert max(j.seed + j.index for j in load(tmp_path / "ok.scene").plan.jobs) == 2**32 - 1


def test_compile_table_shows_one_row_per_scene_for_big_plans(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.scene"
    scenes = "".join(f"scene s{i} {{\n  ziggy\n  seeds 0..99, 200\n}}\n" for i in range(3))
    path.write_text(HEAD + scenes, encoding="utf-8")
    assert cli.main(["compile", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("0..99, 200") == 3 and "303 images to render" in out
    assert "one row per scene" in out


# ------------------------------------------------------------------------------ pickles


def test_pickle_refusal_note_is_a_whole_sentence(tmp_path: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("true",))

    path = tmp_path / "evil.pt"
    torch.save({"a": Evil()}, path)
    with pytest.raises(Exception) as exc:
        torch.load(path, weights_only=True)
    note = load_error_note(exc.value)
    assert "weights_only` set to `False`" not in note and "Re-running" not in note
    assert note.startswith("the file is a pickle that needs code to load") and "system" in note
