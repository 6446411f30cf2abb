"""Merge methods and their parameters as the language server shows them.

The one adapter over the parameter table in `scenecraft.merge.config`: completion and hover read
`merge_parameters()` only, so a change of the table's shape is absorbed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import UnionType
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic.fields import FieldInfo

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


def _info(name: str, field: FieldInfo) -> ParamInfo:
    """One field of a method's pydantic model as completion and hover show it."""
    ann: Any = field.annotation
    if isinstance(ann, UnionType):  # `float | None`: the optional part says "default decided"
        ann = next(a for a in get_args(ann) if a is not type(None))
    doc = field.description or ""
    if get_origin(ann) is Literal:
        return ParamInfo(name, "word", field.default, doc, choices=tuple(get_args(ann)))
    kind = {bool: "bool", int: "int", float: "float"}.get(ann, "word")
    lo: float | None = None
    hi: float | None = None
    lo_open = False
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, at.Gt):
            lo, lo_open = float(m.gt), True  # type: ignore[arg-type]
        elif isinstance(m, at.Le):
            hi = float(m.le)  # type: ignore[arg-type]
    return ParamInfo(name, kind, field.default, doc, lo, hi, lo_open)


@lru_cache(maxsize=1)
def merge_parameters() -> dict[str, list[ParamInfo]]:
    """method -> its parameters, in the model's order (every method, even those with none)."""
    return {
        method: [_info(n, f) for n, f in model.model_fields.items() if n != "method"]
        for method, model in config.METHODS.items()
    }


def merge_parameter(method: str, name: str) -> ParamInfo | None:
    return next((p for p in merge_parameters().get(method, []) if p.name == name), None)
