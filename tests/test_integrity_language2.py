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
