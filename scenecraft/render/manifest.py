"""The run manifest: one JSON file per run target, and whether an image on disk is finished.

Integrity (docs/render.md, "Re-runs"):
- an image is up to date only when its header is a PNG's of the job's size (read before any
  decoding: `png_size`) and its manifest entry holds the image key AND the sha256 of the PNG's
  bytes, and the file on disk still has that hash; a PNG without such an entry counts only when
  it decodes completely and its own ``scenecraft`` chunk holds the key (it is then adopted into
  the manifest with its hash). A truncated, overwritten, emptied or foreign picture is rendered
  again (`is_finished`);
- one scene file per output folder: the manifest records the file's resolved path, and another
  file of the same name is an ``output-path-collision`` while it exists (`Manifest.open`);
- the manifest is rewritten under an exclusive lock (`fcntl.flock` on its folder: no lock file)
  that merges what other runs wrote meanwhile, so concurrent runs into one --out keep every entry.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import error
from scenecraft.render import png
from scenecraft.render.paths import atomic_write_text, unwritable


def is_finished(
    path: Path, rel: str, key: str, manifest: Manifest, size: tuple[int, int] | None = None
) -> bool:
    """Whether ``path`` holds a complete image with image key ``key`` (and ``size``, w x h).

    First the header alone: a PNG signature and, when ``size`` is given, the job's width and
    height (a foreign 13,300x13,300 picture is refused without reading its pixels). Then the
    fast path: the manifest entry has ``key`` and the sha256 of the file's current bytes.
    Otherwise the file must decode completely and carry ``key`` in its own ``scenecraft``
    chunk (provenance: a picture without our chunk is never adopted, whatever the manifest
    says); it is then adopted into the manifest with its new hash.
    """
    found_size = png.png_size(path)
    if found_size is None or (size is not None and found_size != tuple(size)):
        return False
    entry = manifest.images.get(rel, {})
    if entry.get("key") == key and isinstance(entry.get("sha256"), str):
        if png.sha256_bytes_of(path) == entry["sha256"]:
            return True
    ok, found = png.decoded(path)
    if not ok or found != key:
        return False
    digest = png.sha256_bytes_of(path)
    if digest is None:
        return False
    manifest.record(rel, {**entry, "key": key, "sha256": digest})
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the folder that holds ``path`` (`fcntl.flock` on the folder itself,
    so no lock file is left behind; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError as exc:
        raise unwritable(path.parent, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_images(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(header, images) of a manifest on disk; empty when missing or unreadable."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    if not isinstance(old, dict):
        return {}, {}
    images = old.get("images")
    if not isinstance(images, dict):
        return old, {}
    return old, {str(k): v for k, v in images.items() if isinstance(v, dict)}


def _other_owner(old: dict[str, Any], header: dict[str, Any]) -> str | None:
    """The scene file that owns a manifest folder, when it is not the one in ``header``.

    Another stem (``x.scene`` -> ``x.j2`` is the same output) is another file. The same stem
    at another resolved path (``plan_path``) is another file while that file still exists; a
    manifest whose file is gone (the project was moved or renamed) is adopted.
    """
    theirs, ours = old.get("plan_file"), header.get("plan_file")
    if isinstance(theirs, str) and isinstance(ours, str) and Path(theirs).stem != Path(ours).stem:
        return theirs
    their_path, our_path = old.get("plan_path"), header.get("plan_path")
    if not isinstance(their_path, str) or not isinstance(our_path, str) or their_path == our_path:
        return None
    return their_path if os.path.isfile(their_path) else None


@dataclass
class Manifest:
    """One JSON file per run target, rewritten atomically after every batch.

    `save` merges under a lock: entries this run recorded win, entries other runs wrote to the
    file meanwhile are kept, so concurrent runs into one --out lose nothing.
    """

    path: Path
    header: dict[str, Any]  # plan file, source hash, merge key, model, mode
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # by relative image path
    mine: set[str] = field(default_factory=set)  # entries recorded by this run

    @classmethod
    def open(cls, path: Path, header: dict[str, Any]) -> Manifest:
        """Load the previous manifest's image entries (when readable) under a fresh header.

        `output-path-collision` when the manifest belongs to another scene file: one whose name
        sanitises to the same folder (``ünï cödé.scene`` and ``uni_code.scene``), or one with
        the same name in another folder (``a/story.scene`` and ``b/story.scene``) that still
        exists (`_other_owner`).
        """
        old, images = _read_images(path)
        other = _other_owner(old, header)
        if other is not None:
            ours = Path(str(header.get("plan_path") or header.get("plan_file")))
            raise error(
                "output-path-collision",
                f"scene files `{other}` and `{ours}` would both write into `{path.parent}`",
                notes=(
                    "the output folder is named after the scene file (sanitised to ASCII "
                    "letters, digits and `._+-`); its manifest says another file owns it",
                ),
                help="render them into different --out folders, or rename one of the files; "
                f"to hand the folder over, delete `{path}`",
            )
        return cls(path, header, images)

    def key_for(self, rel: str) -> str | None:
        key = self.images.get(rel, {}).get("key")
        return key if isinstance(key, str) else None

    def record(self, rel: str, entry: dict[str, Any]) -> None:
        self.images[rel] = entry
        self.mine.add(rel)

    def save(self, **extra: Any) -> None:
        with _locked(self.path):
            _, on_disk = _read_images(self.path)
            merged = {**self.images, **on_disk, **{k: self.images[k] for k in self.mine}}
            self.images = merged
            data = {**self.header, **extra, "images": dict(sorted(merged.items()))}
            atomic_write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")
