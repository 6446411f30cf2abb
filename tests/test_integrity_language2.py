"""Issue 32, the language side: every bound holds on every path, in linear time and small memory.

Template values are bounded as they are built, includes share one text budget, comments,
captions and line numbers cost linear time, diagnostics are capped and clip long lines,
deep `--vars` values are a diagnostic, and names that differ only in case collide.
Peak memory and time of the full-size inputs: benchmarks/hostile_inputs.py.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from scenecraft.api import load
from scenecraft.diagnostics import Diagnostic, DiagnosticError, Span, render_all
from scenecraft.language import parser
from scenecraft.language.check import check
from scenecraft.language.compiler import compile_plan
from scenecraft.language.loader import load_program

HEAD = """model "example-org/sd15-base"
concept ziggy {
  token "<ZIGGY>"
  class "man"
}
"""


def fail(tmp_path: Path, text: str, name: str = "x.scene", **kw: Any) -> DiagnosticError:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DiagnosticError) as exc:
        load(path, **kw)
    return exc.value


# ---------------------------------------------------------------- 7. blank lines, long strings


@pytest.mark.parametrize(
    "body",
    [
        "\n" * 200_000,  # one `_NL` token of 200,000 lines
        '  ziggy wears "' + "ab" * 200_000 + '"\n',  # one string of 400,000 characters
    ],
    ids=["blank-lines", "long-string"],
)
def test_long_tokens_lex_in_small_memory(body: str) -> None:
    # a backtracking regex kept state per repetition: 2 MiB of blank lines peaked at 875 MB
    text = HEAD + "scene s {\n  ziggy\n" + body + "}\n"
    tracemalloc.start()
    try:
        parser.parse(text, "x.scene")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * len(text), f"peak {peak:,} bytes for {len(text):,} characters"


# ----------------------------------------------------------------- 2. linear comments, panels


class _CountingStr(str):
    """A str that adds up how many characters `count` scans."""

    scanned = 0

    def count(self, sub: Any, start: Any = None, end: Any = None) -> int:  # type: ignore[override]
        lo = 0 if start is None else start
        hi = len(self) if end is None else end
        _CountingStr.scanned += max(hi - lo, 0)
        return super().count(sub, start, end)


def test_comment_lines_are_counted_once_over_the_text() -> None:
    text = _CountingStr("# a comment\n" * 5_000)
    _CountingStr.scanned = 0
    tokens = parser._comment_tokens(text)
    assert [t.line for t in tokens[:3]] == [1, 2, 3] and tokens[-1].line == 5_000
    assert _CountingStr.scanned <= len(text)  # it was the text up to each comment, per comment


class _CountingList(list[Any]):
    iterations = 0

    def __iter__(self) -> Any:
        _CountingList.iterations += 1
        return super().__iter__()


def test_storyboard_captions_are_found_in_one_pass(tmp_path: Path) -> None:
    panels = "".join(f'  panel "caption {i}" {{\n    ziggy\n  }}\n' for i in range(300))
    path = tmp_path / "board.scene"
    path.write_text(HEAD + "storyboard b {\n" + panels + "}\n", encoding="utf-8")
    checked = check(load_program(path), allow_missing=True)
    board = checked.storyboards["b"]
    board.panels = _CountingList(board.panels)
    _CountingList.iterations = 0
    plan, _ = compile_plan(checked, source_text="")
    assert [j.caption for j in plan.jobs][:2] == ["caption 0", "caption 1"]
    assert plan.jobs[-1].panel == 299
    assert _CountingList.iterations <= 3  # it was two scans of the panels per job


# ------------------------------------------------------------- 2. capped, clipped diagnostics


def test_a_repeated_error_prints_a_few_times_and_says_how_many_more() -> None:
    line = "  extra " + ",".join(["a"] * 2_000)
    diags = [
        Diagnostic(
            "wrong-value-type",
            "`extra` expects one or more strings, found `a`",
            Span("x.scene", 2, 9 + 2 * i, 2, 10 + 2 * i),
            label="expected one or more strings",
        )
        for i in range(2_000)
    ]
    text = render_all(diags, {"x.scene": "scene s {\n" + line + "\n}\n"})
    assert text.endswith("... and 1,997 more errors")
    assert text.count("error[wrong-value-type]") == 3
    assert len(text) < 2_000  # each error quoted the whole 4,000-character line
    quoted = [ln for ln in text.split("\n") if ln.startswith("2 | ")]
    assert quoted and all(len(ln) < 200 and ln.endswith("...") for ln in quoted)


def test_a_clipped_line_keeps_the_caret_under_the_span() -> None:
    line = "x" * 5_000 + " bad " + "y" * 5_000
    diag = Diagnostic("unexpected-token", "unexpected `bad`", Span("f", 1, 5_002, 1, 5_005))
    text = render_all([diag], {"f": line + "\n"})
    quoted, caret = text.split("\n")[3:5]
    at = quoted.index("bad")
    assert caret.index("^") == at and caret.count("^") == 3
    assert quoted.startswith("1 | ...") and quoted.endswith("...")


def test_the_cli_caps_twenty_thousand_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scenecraft import cli

    (tmp_path / "x.scene").write_text(
        HEAD + "scene s {\n  ziggy\n  extra " + ",".join(["a"] * 20_000) + "\n}\n"
    )
    assert cli.main(["check", str(tmp_path / "x.scene")]) == 2
    err = capsys.readouterr().err
    assert "... and 19,997 more errors" in err
    assert len(err) < 10_000  # it wrote 20,000 copies of a 40,000-character line


# ------------------------------------------------------------- 3. one text budget for includes


def test_includes_share_one_text_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scenecraft.language import loader

    lib = "".join(f'concept c{i} {{\n  token "<C{i}>"\n}}\n' for i in range(300))
    for i in range(10):  # ten copies: `seen` dedupes only one path, not one text
        (tmp_path / f"lib{i}.scene").write_text(lib, encoding="utf-8")
    includes = "".join(f'include "lib{i}.scene"\n' for i in range(10))
    main = HEAD + includes + "scene s {\n  ziggy\n}\n"
    monkeypatch.setattr(loader, "MAX_PROGRAM_CHARS", len(main) + 2 * len(lib) + 10)
    exc = fail(tmp_path, main)
    [diag] = exc.diagnostics
    assert diag.code == "unreadable-file"
    assert diag.message.startswith(f"`{tmp_path}/lib2.scene` brings the program's text past")
    assert diag.span is not None and (diag.span.line, diag.span.col) == (8, 9)  # the 3rd include
    (tmp_path / "two.scene").write_text(HEAD + includes[:21] + "scene s {\n  ziggy\n}\n")
    assert load(tmp_path / "two.scene").plan.jobs  # one library fits


def test_template_output_counts_against_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scenecraft.language import loader

    monkeypatch.setattr(loader, "MAX_PROGRAM_CHARS", 5_000)
    body = "{% for i in range(400) %}\nscene s{{ i }} {\n  ziggy\n}\n{% endfor %}\n"
    exc = fail(tmp_path, HEAD + body, name="x.scene.j2")
    assert [d.code for d in exc.diagnostics] == ["unreadable-file"]


# ------------------------------------------------------------------ 5. deep --vars, --var values


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("deep.toml", "a = " + "[" * 100_000 + "]" * 100_000 + "\n"),
        ("deep65.json", '{"a": ' + "[" * 65 + "]" * 65 + "}"),
        ("dotted.toml", "a" + ".a" * 100 + " = 1\n"),
    ],
)
def test_deep_vars_files_are_a_diagnostic(tmp_path: Path, name: str, text: str) -> None:
    from scenecraft import cli

    (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "x.scene").write_text(HEAD + "scene s {\n  ziggy\n}\n", encoding="utf-8")
    code = cli.main(["check", str(tmp_path / "x.scene"), "--vars", str(tmp_path / name)])
    assert code == 2  # it was a RecursionError: exit 70


def test_a_deep_var_value_is_a_diagnostic(tmp_path: Path) -> None:
    from scenecraft import cli

    (tmp_path / "x.scene").write_text(HEAD + "scene s {\n  ziggy\n}\n", encoding="utf-8")
    for value in ("[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 70 + "1" + "}" * 70):
        assert cli.main(["check", str(tmp_path / "x.scene"), "--var", f"x={value}"]) == 2
    ok = "[" * 64 + "]" * 64
    assert (
        cli.main(["check", str(tmp_path / "x.scene"), "--var", f"x={ok}", "--var", "n=null"]) == 0
    )


# ---------------------------------------------------------------------- 11. case collisions


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("scene Scene1", "scene scene1"),
        ("scene CON", "scene con"),
        ("scene Board", "storyboard board"),
    ],
)
def test_names_differing_only_in_case_collide(tmp_path: Path, first: str, second: str) -> None:
    board = "  panel s\n" if second.startswith("storyboard") else "  ziggy\n"
    text = (
        HEAD
        + "scene s {\n  ziggy\n}\n"
        + first
        + " {\n  ziggy\n}\n"
        + second
        + " {\n"
        + board
        + "}\n"
    )
    exc = fail(tmp_path, text)
    [diag] = exc.errors
    assert diag.code == "case-collision"
    assert diag.labels[0].message == "first defined here"


def test_one_name_for_a_scene_and_a_storyboard_is_not_a_case_collision(tmp_path: Path) -> None:
    path = tmp_path / "x.scene"
    path.write_text(HEAD + "scene s {\n  ziggy\n}\nstoryboard s {\n  panel s\n}\n")
    assert load(path).plan.jobs


# --------------------------------------------------------- 1. template values bounded as built

A = "{% set a = 'x' * 1000000 %}"
NESTED_SETS = A + "".join(
    f"{{% set a{i} %}}{{{{ {p} }}}}{{{{ {p} }}}}{{% endset %}}"
    for i, p in enumerate(["a", *(f"a{k}" for k in range(1, 11))], 1)
)


@pytest.mark.parametrize(
    "body",
    [
        A + "{% set b = " + " ~ ".join(["a"] * 1500) + " %}",  # one `~` of 1,500 terms
        NESTED_SETS,  # eleven nested captures, each twice the last
        "{{ ('a\\n' * 500000)|indent('x' * 2500) }}",
        "{% filter indent('x' * 2500) %}" + "a\n" * 2000 + "{% endfilter %}",
        A + "{{ ([a] * 1000)|join }}",
        A + "{{ ('%s' * 1000) % ([a] * 1000)|list }}",
        A + "{{ ('{0}' * 1000).format(a) }}",
        A + "{{ ('%s' * 1000)|format(*([a] * 1000)) }}",
        A + "{{ [a] * 1000 }}",
        A + "{{ ([a] * 1000)|string }}",
        A + "{{ ([a] * 1000)|tojson }}",
        A + "{{ ([a] * 1000)|pprint }}",
        A + "{% set l = [[a] * 1000] %}{{ l * 1 }}",
        "{{ ('\\t' * 500000).expandtabs(999999) }}",
        "{{ ('a' * 1000).translate({97: 'x' * 100000}) }}",
        A + "{{ a.replace('x', 'yy') }}",
        "{{ ([['x'] * 1000] * 2000)|sum(start=[])|length }}",  # quadratic copies
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}"
        "{% set ns.s = ns.s ~ 'xxxxxxxxxx' %}{% endfor %}",  # a string grown in a loop
        "{% macro m() %}" + "{{ 'x' * 900000 }}" * 3 + "{% endmacro %}{{ m()|length }}",
        "{% set n = 3 ** 2000 %}{% for i in range(20) %}{% set n = n * n %}{% endfor %}",
        "{% set ns = namespace(l=[]) %}{% for i in range(300) %}{% set ns.l = [ns.l] %}{% endfor %}"
        "{{ ns.l }}",
    ],
)
def test_template_values_are_bounded_as_they_are_built(body: str) -> None:
    from scenecraft.language.templating import render_template

    tracemalloc.start()
    try:
        with pytest.raises(DiagnosticError) as exc:
            render_template(HEAD + body + "\n", "t.scene.j2", {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.code for d in exc.value.diagnostics] == ["template-limit"]
    assert peak < 100 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"  # it was 1.5 to 3.9 GB


def test_a_self_containing_list_prints_as_python_does() -> None:
    from scenecraft.language.templating import render_template

    text = "{% set l = [1] %}{{ l.append(l) or '' }}{{ l }}\n"
    assert render_template(text, "t.j2", {}).text == "[1, [...]]\n"


def test_ordinary_string_building_still_works() -> None:
    from scenecraft.language.templating import render_template

    text = (
        "{% set names = ['ann', 'bo'] %}{{ names|join(', ') ~ '!' }} {{ '%s-%d'|format('x', 3) }}"
        " {{ 'a b'.replace(' ', '_') }} {{ ('ab' * 2)|upper }} {{ '{}/{}'.format(1, 2) }}"
        "{% set block %}{{ 'in' }}{{ 'side' }}{% endset %} {{ block|indent(2) }}"
        " {{ [[1], [2]]|sum(start=[]) }} {{ {'k': [1, 'v']} }}\n"
    )
    out = render_template(text, "t.j2", {}).text
    assert out == "ann, bo! x-3 a_b ABAB 1/2 inside [1, 2] {'k': [1, 'v']}\n"


def test_the_time_limit_holds_for_nested_captures() -> None:
    import time

    from scenecraft.language.templating import render_template

    start = time.monotonic()
    with pytest.raises(DiagnosticError):
        render_template(HEAD + NESTED_SETS + "\n", "t.scene.j2", {})
    assert time.monotonic() - start < 5  # it ran 25 s past a 10 s limit


def test_small_steps_add_up_against_one_budget() -> None:
    from scenecraft.language.templating import render_template

    grow = (
        "{% set ns = namespace(s='') %}{% for i in range(100000) %}"
        "{% set ns.s = ns.s ~ 'xxxxxxxxxx' %}{% endfor %}\n"
    )
    with pytest.raises(DiagnosticError) as exc:
        render_template(grow, "t.j2", {})
    assert "33,554,432 characters and list items in all" in exc.value.diagnostics[0].message


def test_reading_a_big_value_in_a_loop_costs_nothing() -> None:
    from scenecraft.language.templating import render_template

    text = (
        "{% set a = 'x' * 1000000 %}{% set l = ['y'] * 1000000 %}{% set n = namespace(k=0) %}"
        "{% for i in range(200) %}{% if a.startswith('x') and a.count('z') == 0 %}"
        "{% set n.k = n.k + l.count('y') // 1000000 %}{% endif %}{% endfor %}{{ n.k }}\n"
    )
    assert render_template(text, "t.j2", {}).text == "200\n"
    with pytest.raises(DiagnosticError):  # a list grown past 1,000,000 items by `extend`
        render_template("{% set l = ['y'] * 1000000 %}{{ l.extend(l) }}\n", "t.j2", {})
