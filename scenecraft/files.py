"""File access with bounds: regular files only, reads capped, modes that follow the umask.

Every input scenecraft reads (scene files, includes, --vars files) goes through `read_capped`:
it opens without blocking (a FIFO never hangs the read), refuses anything that is not a regular
file (folders, FIFOs, devices such as ``/dev/zero``, sockets) and reads at most ``cap + 1`` bytes,
so no input can make scenecraft allocate more than its cap. `path_problem` says in words what is
wrong with a path where a file is expected (missing, a folder, a FIFO, a device, a symlink loop),
for the loaders of weights files that hand the path on to a library.

Temp files made by `tempfile.mkstemp`/`mkdtemp` are 0600/0700; `follow_umask` gives a finished
file or folder the mode a plain ``open``/``mkdir`` would have had, before it is renamed into place.
`disk_note` describes the free space near a path that could not be written (ENOSPC and friends).

Atomic writes are the one way scenecraft writes a file: a temp file in the same folder, given the
umask's mode, then ``os.replace``, so a reader (or a crash) never sees a torn file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class NotARegularFile(OSError):
    """The path exists but is not a regular file (``kind`` says what it is)."""

    def __init__(self, path: str | Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
        self.kind = kind


class TooLarge(OSError):
    """The file holds more than the cap (``size`` is what was seen, at least cap + 1)."""

    def __init__(self, path: str | Path, size: int, cap: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {human_bytes(cap)}", str(path))
        self.size = size
        self.cap = cap


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} bytes"  # pragma: no cover - the loop always returns


def kind_of(mode: int) -> str | None:
    """None for a regular file, else what the mode says the path is, in words."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` (one slash, no colon, no path prefix or model-file suffix) reads as a hub id;
    anything else (``./x``, ``/x``, ``a/b/c``, ``base``, ``x.safetensors``) is a path."""
    if source.startswith((".", "/", "~", "\\")) or source.endswith(MODEL_FILE_SUFFIXES):
        return False
    return source.count("/") == 1 and ":" not in source


def path_problem(path: str | Path) -> str | None:
    """None when ``path`` is a regular file (symlinks followed), else what is wrong, in words.

    ``"missing"`` when nothing is there; ``"a symlink loop"``, ``"a folder"``, ``"a FIFO (named
    pipe)"``, ``"a device"``, ``"a socket"``, or the OS's own words for anything else.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return str(exc.strerror or exc)
    except ValueError:  # a NUL in the name
        return "missing"
    return kind_of(st.st_mode)


def read_capped(path: str | Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; never reads more than ``cap + 1``.

    Raises FileNotFoundError, `NotARegularFile` (folders, FIFOs, devices, sockets, symlink loops),
    `TooLarge`, or the OSError of the failed read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFile(path, "a symlink loop") from None
        raise
    try:
        st = os.fstat(fd)
        kind = kind_of(st.st_mode)
        if kind is not None:
            raise NotARegularFile(path, kind)
        if st.st_size > cap:
            raise TooLarge(path, st.st_size, cap)
        chunks: list[bytes] = []
        total = 0
        while total <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:  # the file grew after fstat
            raise TooLarge(path, total, cap)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ modes


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, *, folder: bool = False) -> None:
    """Give a temp file (0600) or folder (0700) the mode ``open``/``mkdir`` would have given it."""
    base = 0o777 if folder else 0o666
    os.chmod(path, base & ~current_umask())


# --------------------------------------------------------------------------- disk full


def disk_note(path: str | Path) -> str:
    """``"<free> free on the disk holding `<folder>`"`` for the nearest existing folder of path."""
    folder = Path(path)
    for candidate in (folder, *folder.parents):
        try:
            if candidate.is_dir():
                free = shutil.disk_usage(candidate).free
                return f"{human_bytes(free)} free on the disk holding `{candidate}`"
        except OSError:
            continue
    return "free space unknown"


_RUST_IO = re.compile(r'message: \\?"([^"\\]+)')  # safetensors: IoError(Os { .., message: ".." })


def os_reason(exc: BaseException) -> str:
    """An OSError in words: its strerror (``No space left on device``), else its text (the
    OS's words inside a safetensors ``IoError(Os { … message: "…" })``)."""
    reason = getattr(exc, "strerror", None)
    if reason:
        return str(reason)
    found = _RUST_IO.search(str(exc))
    return found.group(1) if found else f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------------------ pickles

_TORCH_BOILERPLATE = (
    "Weights only load failed",
    "Check the documentation of torch.load",
    "Please file an issue",
    "(1) ",
    "(2) ",
    "In PyTorch 2.6",
    "Re-running `torch.load`",
)


def load_error_note(exc: BaseException, limit: int = 240) -> str:
    """One whole sentence saying why ``torch.load(weights_only=True)`` refused a file.

    torch's message opens with advice to load the file unsafely; that part is dropped and the
    line naming what the pickle wanted (``unsupported GLOBAL posix.system``) is kept. Cut at a
    word boundary when long, never mid-sentence without an ellipsis.
    """
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(_TORCH_BOILERPLATE)]
    if "Weights only load failed" in text:
        reason = kept[0] if kept else "it holds objects other than tensors"
        note = f"the file is a pickle that needs code to load, which scenecraft refuses: {reason}"
    else:
        note = f"{type(exc).__name__}: {kept[0] if kept else text.strip()}"
    if len(note) > limit:
        note = note[:limit].rsplit(" ", 1)[0] + " …"
    return note


# ------------------------------------------------------------------------------ file hashes

_SHA256: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes (hex): the one file-hash helper. A file is hashed once per
    process while its (real path, size, mtime) stay the same; the merge cache adds an on-disk
    memo by the same key for big base weights."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(real, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


# ------------------------------------------------------------------------------ atomic writes


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temp path beside ``path``, moved onto ``path`` (with the umask's mode) when the block
    ends without an error, removed otherwise. For writers that want a file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        follow_umask(tmp)
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
