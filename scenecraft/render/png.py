"""PNG files: the one encoder (an A1111 ``parameters`` chunk and a ``scenecraft`` provenance
chunk), reading those chunks back, and the cheap checks of a finished file.

Every PNG carries an A1111-compatible ``parameters`` text chunk and a ``scenecraft`` chunk (JSON:
the job, its source span, the merge key and the image key used to skip finished images on a
re-run). `encode_png` makes the bytes wherever an image is rendered (in process or on a Ray
worker), so both write the same file for the same pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.render.paths import atomic_write

METADATA_VERSION = 1


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


def encode_png(image: Any, parameters: str, provenance: dict[str, Any]) -> bytes:
    """The PNG bytes of a PIL image with the ``parameters`` and ``scenecraft`` chunks."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("scenecraft", json.dumps(provenance, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(path: Path, image: Any, parameters: str, provenance: dict[str, Any]) -> str:
    """Save a PIL image atomically with the ``parameters`` and ``scenecraft`` chunks.

    Returns the sha256 of the bytes written (the manifest records it).
    """
    data = encode_png(image, parameters, provenance)
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()
