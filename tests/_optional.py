"""Optional dependencies in tests: present, or skip with a visible reason (fail under CI).

Tests that need something the README's plain ``pytest`` cannot assume (a real browser, Ray)
call `require_executable` / `require_module`. On a developer's machine without it the test is
skipped and pytest's summary says why; ``.ci/run`` sets ``SCENECRAFT_CI=1``, which turns the skip
into a failure, so CI can never go green by skipping.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from types import ModuleType

import pytest

CI_ENV = "SCENECRAFT_CI"


def in_ci() -> bool:
    """True where optional dependencies are mandatory (``SCENECRAFT_CI=1``)."""
    return os.environ.get(CI_ENV, "").strip() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip the calling test with ``reason``, or fail it under ``SCENECRAFT_CI=1``."""
    if in_ci():
        pytest.fail(f"{reason} ({CI_ENV}=1: CI must not skip this test)", pytrace=False)
    pytest.skip(reason)


def require_executable(*names: str, install: str = "") -> str:
    """The path of the first of ``names`` on PATH; else skip (or fail under CI)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    hint = f"; {install}" if install else ""
    missing(f"{' / '.join(names)} not on PATH{hint}")
    raise AssertionError("unreachable")  # pragma: no cover - missing() always raises


def require_module(name: str, install: str = "") -> ModuleType:
    """Import and return module ``name``; else skip (or fail under CI)."""
    if importlib.util.find_spec(name) is None:
        hint = f"; {install}" if install else f"; pip install {name}"
        missing(f"python module {name!r} is not installed{hint}")
    return importlib.import_module(name)
