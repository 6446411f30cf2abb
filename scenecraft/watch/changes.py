"""File saves, from `watchfiles` (an optional extra: ``pip install "scenecraft[watch]"``).

Editors save by writing a temporary file and renaming it over the old one, which ends a watch
on the file itself; so the folders holding the watched files are watched, and only changes to
the watched files themselves come through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from types import ModuleType

from scenecraft.diagnostics import error

DEBOUNCE_MS = 100  # saves closer together than this are one change


def require_watchfiles() -> ModuleType:
    """The `watchfiles` module, or `watch-not-installed`."""
    try:
        import watchfiles
    except ImportError:
        raise error(
            "watch-not-installed",
            "`scenecraft watch` needs watchfiles, which is not installed",
            help='install the extra: `pip install "scenecraft[watch]"`',
        ) from None
    return watchfiles


def _wanted(files: frozenset[Path], _change: object, name: str) -> bool:
    return Path(name).resolve() in files


def saves(
    paths: Callable[[], set[Path]], stop: threading.Event | None = None
) -> Iterator[set[Path]]:
    """Yield the set of changed files after each save of one of ``paths()``; the set of paths
    is asked again after every change (a new `include` is watched from then on). Ends when
    ``stop`` is set; Ctrl-C raises KeyboardInterrupt."""
    watchfiles = require_watchfiles()
    while stop is None or not stop.is_set():
        files = {p.resolve() for p in paths()}
        folders = sorted({p.parent for p in files if p.parent.is_dir()})
        if not folders:
            return
        changed: set[Path] = set()
        for batch in watchfiles.watch(
            *folders,
            watch_filter=partial(_wanted, frozenset(files)),
            debounce=DEBOUNCE_MS,
            recursive=False,
            stop_event=stop,
        ):
            changed = {Path(name) for _change, name in batch}
            break  # back to `paths()`: the build may have found other includes
        if not changed:
            return  # stopped
        yield changed
