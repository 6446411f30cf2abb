"""Shared pytest fixtures. Each area appends its own clearly delimited section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

# ============================================================ language (scene files) =========


@pytest.fixture
def scene_file(tmp_path: Path) -> Callable[..., Path]:
    """``scene_file(text, name="main.scene")`` writes a file under tmp_path, returns its path."""

    def write(text: str, name: str = "main.scene") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


# ========================================================== end language ====================
