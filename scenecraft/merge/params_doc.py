"""The merge methods' parameter tables in Markdown, generated from their models.

docs/language.md §3.4 holds the output between ``<!-- generated: merge-params -->`` and
``<!-- /generated -->``; ``python benchmarks/readme_tables.py`` rewrites it and
tests/test_docs_tables.py fails when it is stale. No torch.
"""

from __future__ import annotations

from types import UnionType
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic.fields import FieldInfo

from scenecraft.merge.config import METHODS, MethodParams, Stages

_TYPES = {bool: "bool", int: "integer", float: "number"}


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _type_and_range(field: FieldInfo) -> tuple[str, str]:
    ann: Any = field.annotation
    if isinstance(ann, UnionType):
        ann = next(a for a in get_args(ann) if a is not type(None))
    if get_origin(ann) is Literal:
        return "name", " \\| ".join(f"`{a}`" for a in get_args(ann))
    if ann is bool:
        return "bool", "`true` \\| `false`"
    lo: Any = None
    hi: Any = None
    lo_open = False
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
    kind = _TYPES.get(ann, "text")
    if lo is None or hi is None:
        return kind, ""
    if lo_open:
        return kind, f"({_num(lo)}, {_num(hi)}]"
    return kind, f"{_num(lo)}..{_num(hi)}"


def _default(field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "see meaning"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{_num(value)}`"


def _rows(fields: dict[str, FieldInfo]) -> list[str]:
    out = [
        "| parameter | type | range / values | default | meaning |",
        "|-----------|------|----------------|---------|---------|",
    ]
    for name, field in fields.items():
        kind, values = _type_and_range(field)
        desc = (field.description or "").replace("|", "\\|")
        out.append(f"| `{name}` | {kind} | {values} | {_default(field)} | {desc} |")
    return out


def _own_fields(model: type[MethodParams]) -> dict[str, FieldInfo]:
    """A model's parameters less ``method`` and the stage settings it inherits."""
    inherited = set(Stages.model_fields) if issubclass(model, Stages) else {"method"}
    return {k: f for k, f in model.model_fields.items() if k not in inherited | {"method"}}


def merge_tables() -> str:
    """The methods table, one parameter table per method that has parameters of its own, and
    the stage settings' table (Markdown, ending with a newline)."""
    stage_methods = [name for name, m in METHODS.items() if issubclass(m, Stages)]
    lines = [
        "| method | parameters | what it does |",
        "|--------|------------|--------------|",
    ]
    for name, model in METHODS.items():
        names = [f"`{k}`" for k in _own_fields(model)]
        if issubclass(model, Stages):
            names.append("the stage settings")
        lines.append(f"| `{name}` | {', '.join(names) or '—'} | {model.summary()} |")
    for name, model in METHODS.items():
        own = _own_fields(model)
        if own:
            lines += ["", f"`{name}` parameters:", "", *_rows(own)]
    stage_fields = {k: f for k, f in Stages.model_fields.items() if k != "method"}
    taken = ", ".join(f"`{m}`" for m in stage_methods)
    lines += ["", f"Stage settings (taken by {taken}):", "", *_rows(stage_fields)]
    return "\n".join(lines) + "\n"
