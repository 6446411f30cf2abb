"""Output paths: safe names, the layout, confinement to OUT, atomic writes.

Layout: ``OUT/<file stem>/<scene>/<seed>.png`` (``<seed>-<n>.png`` when a seed gives several
images; storyboard panels live under ``OUT/<file stem>/<storyboard>/<NN>-<scene>/``). Every name
is sanitised and the final path must resolve inside OUT (docs/render.md, "Re-runs"):
- two outputs never share a path: sanitised names that collide are an ``output-path-collision``
  diagnostic naming both sources, before anything renders (`check_unique_paths`); names longer
  than 80 characters keep a hash of the full name, so they never collide by truncation;
- files get the modes the umask gives (the temp file is chmod-ed before the rename); a failed
  write (a full disk, a read-only folder) is ``output-unwritable`` with the path and free space.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from scenecraft import files
from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.files import disk_note, os_reason, path_problem
from scenecraft.plan import RenderJob

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_RESERVED = {
    "con",
    "prn",
    "aux",
    "nul",
    *(f"com{i}" for i in range(10)),
    *(f"lpt{i}" for i in range(10)),
}


def safe_name(name: str, max_len: int = 80) -> str:
    """One path component: ASCII letters, digits, ``._+-``; never ``.``/``..``, never empty."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", text).strip("._ ") or "_"
    if len(text) > max_len:  # keep a hash of the whole name: long names never collide by cutting
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = f"{text[: max_len - 9]}-{digest}"
    if text.split(".")[0].lower() in _RESERVED:
        text = "_" + text
    return text


def _outside(path: Path, base: Path) -> DiagnosticError:
    return error(
        "unsafe-output-path",
        f"output path `{path}` resolves outside the output folder `{base}`",
        help="remove the symlink that points outside the output folder, or choose another --out",
    )


def _inside(resolved: Path, base: Path) -> bool:
    return resolved == base or base in resolved.parents


def confined(root: Path, *parts: str, memo: dict[tuple[str, ...], Path] | None = None) -> Path:
    """``root / parts`` (each part sanitised) checked to resolve inside ``root``.

    ``memo`` (one dict per planning pass) keeps resolved folders, so 20,000 images in a few
    folders cost one ``lstat`` each instead of two full resolutions; a final component that is
    a symlink is still resolved and checked.
    """
    names = [safe_name(p) for p in parts]
    if memo is None:
        base = root.resolve()
        path = base.joinpath(*names)
        if not _inside(path.resolve(), base):
            raise _outside(path, base)
        return path
    root_key = (str(root),)
    base = memo.get(root_key) or memo.setdefault(root_key, root.resolve())
    folder_key = (*root_key, *names[:-1])
    folder = memo.get(folder_key)
    if folder is None:
        folder = base.joinpath(*names[:-1]).resolve()
        if not _inside(folder, base):
            raise _outside(base.joinpath(*names), base)
        memo[folder_key] = folder
    path = base.joinpath(*names)
    if os.path.islink(path) and not _inside(path.resolve(), base):
        raise _outside(path, base)
    return path


def image_path(
    out_dir: Path, job: RenderJob, suffix: str, memo: dict[tuple[str, ...], Path] | None = None
) -> Path:
    """Where ``job``'s image goes (see the module docstring for the layout)."""
    stem = Path(job.file).stem or "scene"
    if job.storyboard is not None:
        folder = [stem, job.storyboard, f"{(job.panel or 0) + 1:02d}-{job.scene}"]
    else:
        folder = [stem, job.scene]
    # the extra images of a seed (images_per_seed > 1) are <seed>-2.png, <seed>-3.png, ...
    name = str(job.seed) if job.index == 0 else f"{job.seed}-{job.index + 1}"
    return confined(out_dir, *folder, name + suffix + ".png", memo=memo)


# ----------------------------------------------------------------------------- atomic writes


def unwritable(path: Path, exc: BaseException) -> DiagnosticError:
    """`output-unwritable`: what failed, where, and how much space the disk has left."""
    return error(
        "output-unwritable",
        f"cannot write `{path}`: {os_reason(exc)}",
        notes=(disk_note(path.parent),),
        help="free some space or choose another --out; finished images are kept and a re-run "
        "renders only what is missing",
    )


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`scenecraft.files.atomic_write` (temp file, umask's mode, ``os.replace``); an OSError
    (a full disk, a read-only folder) is an `output-unwritable` diagnostic."""
    try:
        files.atomic_write(path, write)
    except OSError as exc:
        raise unwritable(path, exc) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def check_out_dir(out: Path) -> None:
    """`output-dir-unusable` unless ``out`` is (or can become) a folder scenecraft can write."""
    problem = path_problem(out)
    if problem == "missing":
        try:
            out.mkdir(parents=True, exist_ok=True)
            return
        except OSError as exc:
            problem = os_reason(exc)
    elif problem is None:
        problem = "it is a file"
    elif problem == "a folder":
        if os.access(out, os.W_OK | os.X_OK):
            return
        problem = "the folder is not writable"
    raise error(
        "output-dir-unusable",
        f"cannot write images into `{out}`: {problem}",
        help="give --out a folder you can write (it is created when missing)",
    )


def check_unique_paths(items: Iterable[tuple[Path, str]]) -> None:
    """`output-path-collision` when two different sources would write one path.

    ``items`` are (path, source) pairs; the source names what the output is (``scene `a`
    seed 1``) and equal sources may share a path (the same image asked for twice).
    """
    seen: dict[Path, str] = {}
    for path, source in items:
        other = seen.setdefault(path, source)
        if other != source:
            raise error(
                "output-path-collision",
                f"{other} and {source} would both be written to `{path}`",
                notes=(
                    "output names are sanitised to ASCII letters, digits and `._+-`, so "
                    "different names can become the same file name",
                ),
                help="rename one of them so the names differ in letters or digits",
            )
