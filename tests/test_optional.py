"""The optional-dependency helper: skip with a reason, or fail under SCENECRAFT_CI=1."""

from __future__ import annotations

import pytest

from tests._optional import CI_ENV, require_executable, require_module

ABSENT = "scenecraft-no-such-tool-x9"


def test_absent_executable_skips_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CI_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} not on PATH; apt-get install it"):
        require_executable(ABSENT, install="apt-get install it")


def test_absent_executable_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip"):
        require_executable(ABSENT)


def test_absent_module_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CI_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install no_such_mod_x9"):
        require_module("no_such_mod_x9")
    monkeypatch.setenv(CI_ENV, "1")
    with pytest.raises(pytest.fail.Exception):
        require_module("no_such_mod_x9")


def test_present_dependencies_are_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CI_ENV, "1")
    assert require_executable(ABSENT, "sh").endswith("sh")
    assert require_module("json").dumps([]) == "[]"
