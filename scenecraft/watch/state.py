"""What the live page shows, shared between the build loop and the HTTP server's threads.

The state holds the grid of the last good plan (sections of cells, one per image), the
diagnostics of the last broken build, and a status line. Every change bumps ``version`` and
wakes the server-sent-event subscribers. A cell's picture is served only when the image is in
the manifest with a finished file: ``ready`` (its key is the plan's) or ``stale`` (an older
finished image at the same path, shown until the new one lands); ``missing`` serves nothing.
Images are written atomically by the renderer, so a served file is never half-written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import Diagnostic, render_text


@dataclass(frozen=True)
class Cell:
    """One image of the grid."""

    label: str  # caption, or scene and seed
    prompt: str  # the job's prompt
    path: Path  # where the renderer writes it
    key: str  # the image key of the current plan
    state: str = "missing"  # "ready" | "stale" | "missing"


@dataclass(frozen=True)
class Section:
    """A storyboard (its panels in order) or a scene (its seeds)."""

    title: str
    columns: int
    cells: tuple[int, ...]  # indexes into LiveState.cells


@dataclass
class LiveState:
    """The page's model; every method is safe to call from any thread."""

    file: str = ""
    version: int = 0
    status: str = "starting"  # starting | checking | rendering | ready | broken
    message: str = ""
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    by_path: dict[Path, int] = field(default_factory=dict, repr=False)  # cell index by file
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    subscribers: list[queue.Queue[int]] = field(default_factory=list, repr=False)

    # -- subscribers (one queue per open page)
    def subscribe(self) -> queue.Queue[int]:
        q: queue.Queue[int] = queue.Queue()
        with self.lock:
            self.subscribers.append(q)
        return q

    def unsubscribe(self, q: queue.Queue[int]) -> None:
        with self.lock:
            if q in self.subscribers:
                self.subscribers.remove(q)

    def _changed(self) -> None:
        """Bump the version and wake every subscriber (call with the lock held)."""
        self.version += 1
        for q in self.subscribers:
            q.put(self.version)

    # -- updates from the build loop
    def set_status(self, status: str, message: str = "") -> None:
        with self.lock:
            self.status, self.message = status, message
            self._changed()

    def show_plan(
        self,
        sections: Sequence[Section],
        cells: Sequence[Cell],
        warnings: Sequence[dict[str, Any]] = (),
    ) -> None:
        """A new good plan: its grid replaces the old one; errors give way to its warnings."""
        with self.lock:
            self.sections, self.cells = list(sections), list(cells)
            self.by_path = {c.path: n for n, c in enumerate(self.cells)}
            self.diagnostics = list(warnings)
            self._changed()

    def image_ready(self, path: Path) -> None:
        """An image of the grid landed on disk (written, or verified up to date)."""
        with self.lock:
            n = self.by_path.get(path)
            if n is not None and self.cells[n].state != "ready":
                self.cells[n] = replace(self.cells[n], state="ready")
                self._changed()

    def show_diagnostics(
        self, diagnostics: Iterable[Diagnostic], sources: Mapping[str, str] | None = None
    ) -> None:
        """A broken build: the diagnostics are shown beside the last good grid (kept)."""
        rows = [diagnostic_row(d, sources) for d in diagnostics]
        with self.lock:
            self.diagnostics = rows
            self.status = "broken"
            errors = sum(1 for r in rows if r["severity"] == "error")
            self.message = f"{errors} error(s); showing the last good pictures"
            self._changed()

    # -- reads for the server
    def image_path(self, n: int) -> Path | None:
        """The file of cell ``n`` when it may be served (ready or stale), else None."""
        with self.lock:
            if 0 <= n < len(self.cells) and self.cells[n].state != "missing":
                return self.cells[n].path
        return None

    def snapshot(self) -> dict[str, Any]:
        """The state as JSON for the page (image URLs carry a version: a new key, a new URL)."""
        with self.lock:
            cells = [
                {
                    "id": n,
                    "label": c.label,
                    "prompt": c.prompt,
                    "state": c.state,
                    "url": None if c.state == "missing" else f"/image/{n}?v={c.key[:16]}-{c.state}",
                }
                for n, c in enumerate(self.cells)
            ]
            return {
                "file": self.file,
                "version": self.version,
                "status": self.status,
                "message": self.message,
                "diagnostics": list(self.diagnostics),
                "sections": [
                    {"title": s.title, "columns": s.columns, "cells": [cells[i] for i in s.cells]}
                    for s in self.sections
                ],
            }


def diagnostic_row(d: Diagnostic, sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One diagnostic for the page: its code, ``file:line:col`` and the rustc-style text."""
    return {
        "severity": d.severity,
        "code": d.code,
        "message": d.message,
        "where": str(d.span) if d.span else "",
        "text": render_text(d, sources),
    }
