"""File saves, from `watchfiles` (an optional extra: ``pip install "scenecraft[watch]"``).

Editors save by writing a temporary file and renaming it over the old one, which ends a watch
on the file itself; so the folders holding the watched files are watched, and only changes to
the watched files themselves come through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
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


def saves(
    paths: Callable[[], set[Path]], stop: threading.Event | None = None
) -> Iterator[set[Path]]:
    """Yield the set of changed files after each save of one of ``paths()``.

    ``paths()`` is asked again after every change (a new `include` is watched from then on).
    One watcher stays open while the folders stay the same, so a save made while the caller
    builds is not lost: it comes with the next item. Ends when ``stop`` is set; Ctrl-C raises
    KeyboardInterrupt."""
    watchfiles = require_watchfiles()
    files: set[Path] = set()

    def wanted(_change: object, name: str) -> bool:
        return Path(name).resolve() in files

    while stop is None or not stop.is_set():
        files = {p.resolve() for p in paths()}
        folders = _folders(files)
        if not folders:
            return
        for batch in watchfiles.watch(
            *folders, watch_filter=wanted, debounce=DEBOUNCE_MS, recursive=False, stop_event=stop
        ):
            yield {Path(name) for _change, name in batch}
            files = {p.resolve() for p in paths()}
            if _folders(files) != folders:
                break  # an include in another folder: watch the new set of folders
        else:
            return  # stopped


def _folders(files: set[Path]) -> list[Path]:
    return sorted({p.parent for p in files if p.parent.is_dir()})
