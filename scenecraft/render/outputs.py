"""Output files: safe names, atomic writes, PNG provenance and the run manifest.

Layout: ``OUT/<file stem>/<scene>/<seed>.png`` (``<seed>-<n>.png`` when a seed gives several
images; storyboard panels live under ``OUT/<file stem>/<storyboard>/<NN>-<scene>/``). Every name
is sanitised and the final path must resolve inside OUT. Each PNG carries an A1111-compatible
``parameters`` text chunk and a ``scenecraft`` chunk (JSON: the job, its source span, the merge
key and the image key used to skip finished images on a re-run).

Integrity (docs/render.md, "Re-runs"):
- an image is up to date only when its header is a PNG's of the job's size (read before any
  decoding: `png_size`) and its manifest entry holds the image key AND the sha256 of the PNG's
  bytes, and the file on disk still has that hash; a PNG without such an entry counts only when
  it decodes completely and its own ``scenecraft`` chunk holds the key (it is then adopted into
  the manifest with its hash). A truncated, overwritten, emptied or foreign picture is rendered
  again;
- one scene file per output folder: the manifest records the file's resolved path, and another
  file of the same name is an ``output-path-collision`` while it exists (`Manifest.open`);
- two outputs never share a path: sanitised names that collide are an ``output-path-collision``
  diagnostic naming both sources, before anything renders (`check_unique_paths`, `Manifest.open`);
  names longer than 80 characters keep a hash of the full name, so they never collide by
  truncation;
- the manifest is rewritten under an exclusive lock (``.<manifest>.lock``, `fcntl.flock`) that
  merges what other runs wrote meanwhile, so concurrent runs into one --out keep every entry;
- files get the modes the umask gives (the temp file is chmod-ed before the rename); a failed
  write (a full disk, a read-only folder) is ``output-unwritable`` with the path and free space.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from scenecraft import files
from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.files import disk_note, os_reason, path_problem
from scenecraft.plan import RenderJob

METADATA_VERSION = 1
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


# ------------------------------------------------------------------------------- PNG metadata


def _a1111_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def a1111_parameters(prompt: str, negative: str, fields: dict[str, Any]) -> str:
    """A1111's ``parameters`` text: prompt, ``Negative prompt: …``, then ``Key: value, …``."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields.items()))
    return "\n".join(lines)


_FIELD = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict[str, str]:
    """Parse A1111 ``parameters`` text back into ``{"Prompt", "Negative prompt", "Steps", …}``."""
    lines = text.split("\n")
    fields_line = lines[-1] if len(lines) > 1 else ""
    body = lines[:-1] if len(lines) > 1 else lines
    negative_at = next((i for i, ln in enumerate(body) if ln.startswith("Negative prompt: ")), None)
    result: dict[str, str] = {}
    if negative_at is None:
        result["Prompt"] = "\n".join(body)
    else:
        result["Prompt"] = "\n".join(body[:negative_at])
        neg = "\n".join(body[negative_at:])
        result["Negative prompt"] = neg.removeprefix("Negative prompt: ")
    for m in _FIELD.finditer(fields_line):
        key, value = m.group(1).strip(), m.group(2).strip()
        result[key] = json.loads(value) if value.startswith('"') else value
    return result


@dataclass(frozen=True)
class PngMetadata:
    parameters: str | None  # A1111 text chunk, as written
    scenecraft: dict[str, Any] | None  # our JSON chunk, parsed
    text: dict[str, str] = field(default_factory=dict)  # every text chunk

    @property
    def fields(self) -> dict[str, str]:
        return parse_parameters(self.parameters) if self.parameters else {}


def read_png_metadata(path: str | Path) -> PngMetadata:
    """Text chunks of a PNG (reads the header only, not the pixels)."""
    from PIL import Image

    with Image.open(path) as im:
        text = {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    ours: dict[str, Any] | None = None
    if "scenecraft" in text:
        try:
            parsed = json.loads(text["scenecraft"])
            ours = parsed if isinstance(parsed, dict) else None
        except ValueError:
            ours = None
    return PngMetadata(text.get("parameters"), ours, text)


def sha256_bytes_of(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def decoded(path: Path) -> tuple[bool, str | None]:
    """(decodes completely, image key in its ``scenecraft`` chunk or None).

    Complete: every chunk's CRC holds up to IEND and all pixels decode (a truncated or
    overwritten file fails one or the other).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # chunk CRCs and structure up to IEND
        with Image.open(path) as im:
            im.load()  # the pixels themselves: a truncated IDAT fails here
            text = {str(k): str(v) for k, v in getattr(im, "text", {}).items()}
    except Exception:  # truncated, overwritten, not a PNG, missing: not finished
        return False, None
    try:
        data = json.loads(text.get("scenecraft", "null"))
    except ValueError:
        data = None
    key = data.get("key") if isinstance(data, dict) else None
    return True, key if isinstance(key, str) else None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR: the first 24 bytes, nothing decoded; None when the
    file is missing or not a PNG (JPEG bytes in a ``.png``, a text file, an empty file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


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
    found_size = png_size(path)
    if found_size is None or (size is not None and found_size != tuple(size)):
        return False
    entry = manifest.images.get(rel, {})
    if entry.get("key") == key and isinstance(entry.get("sha256"), str):
        if sha256_bytes_of(path) == entry["sha256"]:
            return True
    ok, found = decoded(path)
    if not ok or found != key:
        return False
    digest = sha256_bytes_of(path)
    if digest is None:
        return False
    manifest.record(rel, {**entry, "key": key, "sha256": digest})
    return True


def write_png(path: Path, image: Any, parameters: str, provenance: dict[str, Any]) -> str:
    """Save a PIL image atomically with the ``parameters`` and ``scenecraft`` chunks.

    Returns the sha256 of the bytes written (the manifest records it).
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("scenecraft", json.dumps(provenance, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------- manifest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``.<name>.lock`` next to ``path`` (no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise unwritable(lock, exc) from None
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
