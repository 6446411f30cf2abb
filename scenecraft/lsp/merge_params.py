"""Merge methods and their parameters as the language server shows them.

The one adapter over the parameter table in `scenecraft.merge.config`: completion and hover read
`merge_parameters()` only, so a change of the table's shape is absorbed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from scenecraft.merge import config


@dataclass(frozen=True)
class ParamInfo:
    name: str  # as users write it
    kind: str  # "float", "int", "word", "bool"
    default: Any  # None: the stage's own default (the doc says which)
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()

    @property
    def range_text(self) -> str:
        """`[0, 1]`, `(0, 1]`, `one of a, b`, `true or false`, or ""."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.lo is None and self.hi is None:
            return ""
        lo = "" if self.lo is None else f"{'(' if self.lo_open else '['}{_num(self.lo)}"
        hi = "" if self.hi is None else f"{_num(self.hi)}]"
        return f"{lo}, {hi}"

    @property
    def default_text(self) -> str:
        if self.default is None:
            return "(see doc)"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return str(self.default)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@lru_cache(maxsize=1)
def merge_parameters() -> dict[str, list[ParamInfo]]:
    """method -> its parameters, in the table's order (every method, even those with none)."""
    return {
        method: [
            ParamInfo(name, p.kind, p.default, p.doc, p.lo, p.hi, p.lo_open, tuple(p.choices))
            for name, p in params.items()
        ]
        for method, params in config.PARAMS.items()
    }


def merge_parameter(method: str, name: str) -> ParamInfo | None:
    return next((p for p in merge_parameters().get(method, []) if p.name == name), None)
