"""The corners a new user hit (issue 30), one regression test each."""

from __future__ import annotations

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
