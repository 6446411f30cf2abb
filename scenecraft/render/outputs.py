"""Output files: safe names, PNG provenance and the run manifest (written atomically).

Layout: ``OUT/<file stem>/<scene>/<seed>.png`` (``<seed>-<n>.png`` when a seed gives several
images; storyboard panels live under ``OUT/<file stem>/<storyboard>/<NN>-<scene>/``). Every name
is sanitised and the final path must resolve inside OUT. Each PNG carries an A1111-compatible
``parameters`` text chunk and a ``scenecraft`` chunk (JSON: the job, its source span, the merge
key and the image key used to skip finished images on a re-run).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.diagnostics import error
from scenecraft.files import atomic_write, atomic_write_text
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
    text = text[:max_len]
    if text.split(".")[0].lower() in _RESERVED:
        text = "_" + text
    return text


def confined(root: Path, *parts: str) -> Path:
    """``root / parts`` (each part sanitised) checked to resolve inside ``root``."""
    base = root.resolve()
    path = base.joinpath(*(safe_name(p) for p in parts))
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise error(
            "unsafe-output-path",
            f"output path `{path}` resolves outside the output folder `{base}`",
            help="remove the symlink that points outside the output folder, or choose another --out",
        )
    return path


def image_path(out_dir: Path, job: RenderJob, suffix: str) -> Path:
    """Where ``job``'s image goes (see the module docstring for the layout)."""
    stem = Path(job.file).stem or "scene"
    if job.storyboard is not None:
        folder = [stem, job.storyboard, f"{(job.panel or 0) + 1:02d}-{job.scene}"]
    else:
        folder = [stem, job.scene]
    # the extra images of a seed (images_per_seed > 1) are <seed>-2.png, <seed>-3.png, ...
    name = str(job.seed) if job.index == 0 else f"{job.seed}-{job.index + 1}"
    return confined(out_dir, *folder, name + suffix + ".png")


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


def existing_key(path: Path) -> str | None:
    """The image key recorded in an existing PNG, or None (missing, unreadable, foreign)."""
    if not path.is_file():
        return None
    try:
        meta = read_png_metadata(path)
    except Exception:  # a torn or foreign file simply gets rendered again
        return None
    key = (meta.scenecraft or {}).get("key")
    return key if isinstance(key, str) else None


def write_png(path: Path, image: Any, parameters: str, provenance: dict[str, Any]) -> None:
    """Save a PIL image atomically with the ``parameters`` and ``scenecraft`` chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("scenecraft", json.dumps(provenance, sort_keys=True))
    atomic_write(path, lambda f: image.save(f, format="PNG", pnginfo=info))


# ---------------------------------------------------------------------------------- manifest


@dataclass
class Manifest:
    """One JSON file per run target, rewritten atomically after every batch."""

    path: Path
    header: dict[str, Any]  # plan file, source hash, merge key, model, mode
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # by relative image path

    @classmethod
    def open(cls, path: Path, header: dict[str, Any]) -> Manifest:
        """Load the previous manifest's image entries (when readable) under a fresh header."""
        images: dict[str, dict[str, Any]] = {}
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old, dict) and isinstance(old.get("images"), dict):
                images = {str(k): v for k, v in old["images"].items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass
        return cls(path, header, images)

    def key_for(self, rel: str) -> str | None:
        key = self.images.get(rel, {}).get("key")
        return key if isinstance(key, str) else None

    def record(self, rel: str, entry: dict[str, Any]) -> None:
        self.images[rel] = entry

    def save(self, **extra: Any) -> None:
        data = {**self.header, **extra, "images": dict(sorted(self.images.items()))}
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str) + "\n")
