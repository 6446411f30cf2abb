"""The merge cache: one content-addressed folder per merge, written atomically.

Layout of an entry ``<root>/<key>/``:

    manifest.json            what was merged: base identity, each LoRA's sha256, method,
                             params, figures, scenecraft version (written last)
    weights.safetensors      ΔW* = W* − W0 for every changed module, keyed by module path
    embeddings.safetensors   new token embeddings, keyed "<component>/<token>", (n, dim)

Storing ΔW* rather than W*: the file says what the merge changed and nothing else; fp16 storage
(used when the base runs in half precision) rounds relative to ‖ΔW*‖ rather than ‖W0‖, so the
error is far below the rounding of the fp16 base itself; and applying it is W0 + ΔW* in the
base's own dtype and device.

Atomicity: an entry is built in ``<root>/.tmp-<key>-*`` and moved into place with one
``os.replace``; a crash or an exception leaves no ``<root>/<key>``. Readers treat a folder as an
entry only if its manifest exists.

Integrity: the manifest records the size and sha256 of both tensor files (``files``);
`verify_entry` checks them (once per process for unchanged files) and that every ΔW* and
embedding is finite. A damaged entry is never applied: `quarantine` moves it aside to
``<root>/.bad-<key>-*`` and the merge is rebuilt (``scenecraft.merge.api.merge``). Leftovers of
killed runs (``.tmp-*`` after a day, ``.old-*`` and ``.bad-*`` after an hour) are swept whenever
an entry is written. Files and folders get the modes the umask gives.

Use and pruning: every time `merge` serves an entry it touches ``<key>/.used``, so an entry's
last use is known; `prune` removes entries superseded within their lineage (the same merge with
other `scene_prompts` prompts; `merge` does this itself after writing one), unused for a while,
or beyond a size, least recently used first, and never one used in the last ten minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.files import atomic_write_text, disk_note, follow_umask, os_reason, sha256_file
from scenecraft.plan import BaseModelSpec, stable_hash

if TYPE_CHECKING:  # torch is imported where tensors are read or written: `scenecraft cache`
    import torch  # lists and prunes entries without it

CACHE_ENV = "SCENECRAFT_CACHE"  # overrides the cache folder (same meaning as --cache-dir)
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
EMBEDDINGS = "embeddings.safetensors"
ENTRY_FORMAT = 2  # bumped when the layout above changes (2: checksums of the tensor files)
_HASHES = "hashes.json"  # memo of file sha256 by (path, size, mtime)
_STALE_SECONDS = 24 * 3600  # temp folders older than this are leftovers of killed runs
_STALE_OLD_SECONDS = 3600  # replaced (.old-*) and damaged (.bad-*) entries older than this
_VERIFIED: set[tuple[str, int, int, str]] = set()  # (file, size, mtime_ns, sha256) checked


def default_cache_dir() -> Path:
    """$SCENECRAFT_CACHE, else $XDG_CACHE_HOME/scenecraft/merges, else ~/.cache/scenecraft/merges."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scenecraft" / "merges"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# ---------------------------------------------------------------------------------- hashing


def _load_memo(root: Path) -> dict[str, str]:
    try:
        data = json.loads((root / _HASHES).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_memo(root: Path, memo: dict[str, str]) -> None:
    try:
        atomic_write_text(root / _HASHES, json.dumps(memo))
    except OSError:
        pass  # the memo only saves time


def file_digest(path: Path, memo: dict[str, str]) -> str:
    """sha256 of a file, remembered by (absolute path, size, mtime) so big bases hash once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = sha256_file(path)
    return memo[key]


def base_identity(base: BaseModelSpec, root: Path) -> dict[str, Any]:
    """What identifies the base model: its id, plus the sha256 of its file or folder contents."""
    path = Path(base.source).expanduser()
    digest: str | None = None
    if path.exists():
        memo = _load_memo(root)
        if path.is_file():
            digest = file_digest(path, memo)
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            digest = stable_hash(
                {str(p.relative_to(path)): file_digest(p, memo) for p in files}, 64
            )
        _save_memo(root, memo)
    return {
        "source": base.source,
        "revision": base.revision,
        "family": base.family,
        "sha256": digest,
    }


def cache_key(identity: Mapping[str, Any]) -> str:
    """Content hash of everything that determines a merge's output."""
    return stable_hash(dict(identity), 32)


# ---------------------------------------------------------------------------------- entries


def lookup(root: Path, key: str) -> Path | None:
    """The complete entry for ``key``, or None."""
    entry = root / key
    return entry if (entry / MANIFEST).is_file() else None


def read_manifest(entry: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(entry) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise error(
            "merge-entry-invalid",
            f"`{entry}` is not a scenecraft merge (no readable {MANIFEST})",
            notes=(f"{type(exc).__name__}: {exc}",),
            help="run `scenecraft merge` again, with `--force` if the entry is damaged",
        ) from None
    if not isinstance(data, dict) or data.get("format") != ENTRY_FORMAT:
        raise error(
            "merge-entry-invalid",
            f"`{entry}` was written by another scenecraft version (format {data.get('format') if isinstance(data, dict) else '?'})",
            help="run `scenecraft merge --force` to rebuild it",
        )
    return data


def _flatten_embeddings(
    embeddings: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    return {
        f"{component}/{token}": rows.detach().float().contiguous().cpu()
        for component, tokens in embeddings.items()
        for token, rows in tokens.items()
    }


def _invalid(entry: Path, what: str, *notes: str) -> DiagnosticError:
    return error(
        "merge-entry-invalid",
        f"merge cache entry `{entry}` is damaged: {what}",
        notes=notes,
        help="run `scenecraft merge --force` to rebuild it",
    )


def _check_file(entry: Path, name: str, expected: Any) -> None:
    """The file's size and sha256 against the manifest's record (hashed once per process)."""
    path = entry / name
    if not isinstance(expected, dict):
        raise _invalid(entry, f"its manifest records no checksum for {name}")
    try:
        st = path.stat()
    except OSError as exc:
        raise _invalid(entry, f"{name} cannot be read ({os_reason(exc)})") from None
    if st.st_size != expected.get("bytes"):
        raise _invalid(
            entry, f"{name} holds {st.st_size} bytes, its manifest says {expected.get('bytes')}"
        )
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(expected.get("sha256")))
    if memo in _VERIFIED:
        return
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise _invalid(entry, f"{name} cannot be read ({os_reason(exc)})") from None
    if digest != expected.get("sha256"):
        raise _invalid(entry, f"the sha256 of {name} differs from its manifest's")
    _VERIFIED.add(memo)


def load_entry(
    entry: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(ΔW* by module path, embeddings component -> token -> (n, dim), manifest).

    Verified: the tensor files' checksums match the manifest and every value is finite;
    otherwise `merge-entry-invalid`.
    """
    import torch
    from safetensors.torch import load_file

    entry = Path(entry)
    manifest = read_manifest(entry)
    recorded = manifest.get("files")
    files: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    for name in (WEIGHTS, EMBEDDINGS):
        _check_file(entry, name, files.get(name))
    try:
        deltas = dict(load_file(str(entry / WEIGHTS)))
        flat = dict(load_file(str(entry / EMBEDDINGS)))
    except Exception as exc:  # truncated or missing tensor files
        raise error(
            "merge-entry-invalid",
            f"cannot read the tensors of merge `{entry}`",
            notes=(f"{type(exc).__name__}: {str(exc)[:200]}",),
            help="run `scenecraft merge --force` to rebuild it",
        ) from None
    for name, tensor in [*deltas.items(), *flat.items()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _invalid(entry, f"`{name}` holds NaN or infinite values")
    embeddings: dict[str, dict[str, torch.Tensor]] = {}
    for name, rows in flat.items():
        component, _, token = name.partition("/")
        embeddings.setdefault(component, {})[token] = rows
    return deltas, embeddings, manifest


def verify_entry(entry: str | Path) -> dict[str, Any]:
    """The manifest of a sound entry; `merge-entry-invalid` when anything is damaged."""
    _, _, manifest = load_entry(entry)
    return manifest


def quarantine(entry: Path) -> Path | None:
    """Move a damaged entry aside to ``.bad-<key>-*`` (kept an hour for inspection)."""
    try:
        aside = Path(tempfile.mkdtemp(prefix=f".bad-{entry.name}-", dir=entry.parent))
        os.replace(entry, aside / "entry")
    except OSError:
        shutil.rmtree(entry, ignore_errors=True)  # cannot move it: drop it, never apply it
        return None
    return aside


def _sweep_stale(root: Path) -> None:
    """Remove what killed runs left (SIGKILL skips our cleanup): temp folders after a day,
    replaced (``.old-*``) and damaged (``.bad-*``) entries and memo temp files after an hour."""
    now = time.time()
    for pattern, age in (
        (".tmp-*", _STALE_SECONDS),
        (".old-*", _STALE_OLD_SECONDS),
        (".bad-*", _STALE_OLD_SECONDS),
        (".hashes-*", _STALE_OLD_SECONDS),
    ):
        for leftover in root.glob(pattern):
            try:
                if now - leftover.stat().st_mtime <= age:
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()
            except OSError:
                pass


def unwritable(root: Path, exc: BaseException) -> DiagnosticError:
    """`merge-cache-unwritable` with the reason and the free space."""
    return error(
        "merge-cache-unwritable",
        f"cannot write the merge to `{root}`: {os_reason(exc)}",
        notes=(disk_note(root),),
        help="free some space, or pass a writable folder with `--cache-dir` or SCENECRAFT_CACHE",
    )


def write_entry(
    root: Path,
    key: str,
    deltas: Mapping[str, torch.Tensor],
    embeddings: Mapping[str, Mapping[str, torch.Tensor]],
    manifest: Mapping[str, Any],
) -> Path:
    """Write an entry atomically and return its folder; replaces an existing one (force)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    except OSError as exc:
        raise unwritable(root, exc) from None
    try:
        # 1. tensors, then the manifest: a folder with a manifest is complete
        save_file({k: v.contiguous() for k, v in deltas.items()}, str(tmp / WEIGHTS))
        save_file(_flatten_embeddings(embeddings), str(tmp / EMBEDDINGS))
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            for name in (WEIGHTS, EMBEDDINGS)
        }
        text = json.dumps(
            {"format": ENTRY_FORMAT, **manifest, "files": files}, indent=2, sort_keys=True
        )
        (tmp / MANIFEST).write_text(text + "\n", encoding="utf-8")
        for name in (WEIGHTS, EMBEDDINGS, MANIFEST):
            follow_umask(tmp / name)
        follow_umask(tmp, folder=True)
        # 2. one rename makes it visible
        return _publish(tmp, root / key)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise unwritable(root, exc) from None
    except SafetensorError as exc:  # safetensors' own I/O error (a full disk), not an OSError
        shutil.rmtree(tmp, ignore_errors=True)
        raise unwritable(root, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, final: Path) -> Path:
    if not final.exists():
        try:
            os.replace(tmp, final)
        except OSError:
            if lookup(final.parent, final.name) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent run published the same key
        return final
    # a rebuild: move the old entry aside, put the new one in, drop the old one
    old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
    os.replace(final, old / "entry")
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old / "entry", final)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------- use and pruning

USED = ".used"  # touched whenever `merge` serves the entry: its last use is this file's mtime
IN_USE_SECONDS = 600  # used this recently: another process may be reading it, never pruned
KEEP_PER_LINEAGE = 2  # entries kept per lineage (the most recently used) when pruning
HINT_BYTES = 20 * 2**30  # past this, writing a merge says how to prune (nothing is removed)


@dataclass(frozen=True)
class EntryInfo:
    """One cache entry as `scenecraft cache list` shows it (read from its manifest)."""

    key: str  # the entry's folder name (`merge_entry` in provenance)
    path: Path
    bytes: int  # every file of the folder
    last_used: float  # epoch seconds: the last merge that wrote or served it
    created: str  # ISO time the merge was written
    method: str
    concepts: tuple[str, ...]  # concept names as the merging file called them
    lineage: str  # shared by entries that differ only in `scene_prompts`' prompts; else = key
    plan_key: str = ""  # the plan's merge key it was built for ("" in entries before 2026-12-02)
    dtype: str = ""  # the dtype the base ran in ("torch.float32", ...)


def mark_used(entry: Path) -> None:
    """Record a use of ``entry`` (best effort: a read-only cache still serves merges)."""
    try:
        (entry / USED).touch()
    except OSError:
        pass


def _info(entry: Path) -> EntryInfo:
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        manifest = {}
    manifest = manifest if isinstance(manifest, dict) else {}
    stamps, size = [], 0
    for path in entry.rglob("*"):
        try:
            st = path.stat()
        except OSError:
            continue
        if path.is_file():
            size += st.st_size
        if path.name in (MANIFEST, USED):
            stamps.append(st.st_mtime)
    concepts = manifest.get("concepts")
    return EntryInfo(
        key=entry.name,
        path=entry,
        bytes=size,
        last_used=max(stamps, default=0.0),
        created=str(manifest.get("created", "")),
        method=str(manifest.get("method", "?")),
        concepts=tuple(str(c.get("name", "?")) for c in concepts if isinstance(c, dict))
        if isinstance(concepts, list)
        else (),
        lineage=str(manifest.get("lineage") or entry.name),
        plan_key=str(manifest.get("plan_key", "")),
        dtype=str(manifest.get("dtype", "")),
    )


def entries(root: Path) -> list[EntryInfo]:
    """Every complete entry under ``root`` (a folder with a manifest), most recently used first."""
    if not root.is_dir():
        return []
    found = [
        _info(p)
        for p in root.iterdir()
        if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=lambda e: (-e.last_used, e.key))


def remove_entry(entry: Path) -> None:
    """Remove an entry in one rename (readers see it whole or not at all), then its files."""
    aside = Path(tempfile.mkdtemp(prefix=f".old-{entry.name}-", dir=entry.parent))
    os.replace(entry, aside / "entry")
    shutil.rmtree(aside, ignore_errors=True)


def prune(
    root: Path,
    *,
    older_than: float | None = None,
    max_bytes: int | None = None,
    lineage: str | None = None,
    keep: int = KEEP_PER_LINEAGE,
    dry_run: bool = False,
    now: float | None = None,
) -> list[EntryInfo]:
    """Remove entries nobody will miss and return them, least recently used first.

    1. superseded: per lineage (only ``lineage`` when given), all but the ``keep`` most
       recently used — what editing a `scene_prompts` merge's prompts leaves behind;
    2. ``older_than`` seconds without a use;
    3. ``max_bytes``: least recently used first until the entries fit.
    An entry used in the last `IN_USE_SECONDS` is never removed (another process may be
    reading it). Entries are derived data: a removed one is merged again when next needed.
    """
    now = time.time() if now is None else now
    listed = entries(root)
    gone: dict[str, EntryInfo] = {}
    by_lineage: dict[str, list[EntryInfo]] = {}
    for e in listed:  # most recently used first
        by_lineage.setdefault(e.lineage, []).append(e)
    for name, group in by_lineage.items():
        if lineage is None or name == lineage:
            gone |= {e.key: e for e in group[keep:]}
    if older_than is not None:
        gone |= {e.key: e for e in listed if now - e.last_used > older_than}
    if max_bytes is not None:
        left = sum(e.bytes for e in listed if e.key not in gone)
        for e in reversed(listed):  # least recently used first
            if left <= max_bytes:
                break
            if e.key not in gone and now - e.last_used > IN_USE_SECONDS:
                gone[e.key] = e
                left -= e.bytes
    removed = sorted(
        (e for e in gone.values() if now - e.last_used > IN_USE_SECONDS),
        key=lambda e: (e.last_used, e.key),
    )
    if not dry_run:
        for e in removed:
            remove_entry(e.path)
        _sweep_stale(root)
    return removed
