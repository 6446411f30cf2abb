"""What a LoRA file says about itself, from its safetensors header alone (no torch).

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON:
tensor names with dtypes and shapes, and a ``__metadata__`` map. Reading it costs one small read
however large the file; hover shows the layout, rank and family it implies.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.names import FAMILY_BY_CROSS_DIM

MAX_HEADER_BYTES = 16 * 1024 * 1024  # larger headers are not read (a LoRA's is a few hundred KiB)


@dataclass(frozen=True)
class LoraInfo:
    format: str  # "kohya", "diffusers/PEFT", "diffusers (attention processors)", "unknown"
    tensors: int
    rank: int | None  # the most common rank of its layers
    family: str | None  # from the cross-attention width of `attn2.to_k`, else None
    metadata: dict[str, str] = field(default_factory=dict)


def read_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file, or None (not one, unreadable, too large)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if size > MAX_HEADER_BYTES:
                return None
            data = json.loads(fh.read(size).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _format(names: list[str]) -> str:
    if any(k.startswith(("lora_unet_", "lora_te")) for k in names):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in names):
        return "diffusers/PEFT"
    if any("_lora.down." in k or ".lora.down." in k for k in names):
        return "diffusers (attention processors)"
    return "unknown"


def _down(name: str) -> bool:
    return name.endswith(("lora_down.weight", "lora_A.weight", "lora.down.weight"))


def lora_info(path: Path) -> LoraInfo | None:
    """The format, rank and family of a safetensors LoRA file, or None if it is not one."""
    header = read_header(path)
    if header is None:
        return None
    raw_meta = header.pop("__metadata__", None)
    metadata = {str(k): str(v) for k, v in raw_meta.items()} if isinstance(raw_meta, dict) else {}
    names = list(header)
    ranks: Counter[int] = Counter()
    family = None
    for name in names:
        shape = header[name].get("shape") if isinstance(header[name], dict) else None
        if not _down(name) or not isinstance(shape, list) or len(shape) < 2:
            continue
        ranks[int(shape[0])] += 1
        if family is None and "attn2" in name and ("to_k" in name or "to_v" in name):
            family = FAMILY_BY_CROSS_DIM.get(int(shape[1]))
    if family is None and any("text_encoder_2" in k or k.startswith("lora_te2_") for k in names):
        family = "sdxl"
    rank = ranks.most_common(1)[0][0] if ranks else None
    return LoraInfo(_format(names), len(names), rank, family, metadata)
