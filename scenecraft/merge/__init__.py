"""The merge engine: many single-concept LoRAs into one model (LoRACLR and its baselines).

The public names below load lazily, so ``import scenecraft`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "merge": "scenecraft.merge.api",
    "MergeResult": "scenecraft.merge.api",
    "apply_merge": "scenecraft.merge.apply",
    "read_concept_lora": "scenecraft.merge.formats",
    "inspect_lora": "scenecraft.merge.formats",
    "LoRAInfo": "scenecraft.merge.formats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
