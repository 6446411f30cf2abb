"""Scene-file merge parameters -> the engine's parameters and `MergeConfig` fields.

The scene language names parameters for users (`iterations`, `ridge`, `init gradient-fusion`,
`spatial`, `max_rows`; see docs/language.md); the engine keeps the paper's and its own names.
This is the one place the two vocabularies meet.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from scenecraft.merge.types import MergeConfig

RENAMES: dict[str, dict[str, str]] = {
    "loraclr": {"iterations": "max_iters", "ridge": "eps_rel"},
    "gradient-fusion": {"ridge": "eps_rel"},
}
VALUES: dict[tuple[str, str], dict[Any, Any]] = {
    ("loraclr", "init"): {"gradient-fusion": "fusion-normalised"},
}


def engine_params(
    method: str, params: dict[str, Any], config: MergeConfig | None = None
) -> tuple[dict[str, Any], MergeConfig]:
    """Split scene params into method params (engine names) and stage settings."""
    cfg = config or MergeConfig()
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "spatial":
            cfg = replace(cfg, spatial=bool(value))
        elif key == "max_rows":
            cfg = replace(cfg, text_max_rows=int(value), spatial_max_rows=int(value))
        else:
            name = RENAMES.get(method, {}).get(key, key)
            out[name] = VALUES.get((method, key), {}).get(value, value)
    return out, cfg
