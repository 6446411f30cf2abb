"""Session fixtures for the merge I/O tests (formats, cache, apply): one tiny base pipeline.

Import the ``*_fixture`` functions into a test module to use ``base_pipe``, ``base_index`` and
``fresh_pipe`` there.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.testing import quiet_libraries, tiny_pipeline


@pytest.fixture(scope="session", name="base_pipe")
def base_pipe_fixture() -> Any:
    """The tiny SD pipeline; tests must not modify it (use `fresh_pipe` for that)."""
    quiet_libraries()
    return tiny_pipeline(0)


@pytest.fixture(scope="session", name="base_index")
def base_index_fixture(base_pipe: Any) -> ModuleIndex:
    return ModuleIndex.from_pipe(base_pipe)


@pytest.fixture(name="fresh_pipe")
def fresh_pipe_fixture(base_pipe: Any) -> Any:
    """A private copy of the base pipeline, free to patch."""
    return copy.deepcopy(base_pipe)
