"""Atomic writes, the one way scenecraft writes a file: a temp file in the same folder, then
``os.replace``, so a reader (or a crash) never sees a torn file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temp path beside ``path``, moved onto ``path`` when the block ends without an error
    (removed otherwise). For writers that want a file name rather than an open file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write(f)`` into a temp file, then replace ``path`` with it."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
