"""Typed setting schemas: which keys each block takes, their value types and ranges.

`read_setting` turns a parsed `Setting` into a Python value or reports a diagnostic. One table
per block keeps every range and default in one place (docs/language.md mirrors it).
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic.fields import FieldInfo

from scenecraft.diagnostics import Collector, Label, did_you_mean
from scenecraft.language import nodes as n
from scenecraft.language.fmt import value as fmt_value
from scenecraft.layout import LAYOUTS
from scenecraft.merge.config import METHODS

Kind = Literal["str", "int", "float", "bool", "size", "seeds", "word", "strs", "words"]


@dataclass(frozen=True)
class Key:
    kind: Kind  # the value type
    lo: float | None = None  # inclusive lower bound (numbers, size sides, list lengths)
    hi: float | None = None  # inclusive upper bound
    choices: tuple[str, ...] = ()  # allowed words for kind "word"/"words"
    lo_open: bool = False  # True: lower bound is exclusive
    doc: str = ""


RENDER_KEYS: dict[str, Key] = {
    "size": Key("size", 64, 4096, doc="image width x height, multiples of 8"),
    "steps": Key("int", 1, 500, doc="denoising steps"),
    "guidance": Key("float", 0, 50, doc="classifier-free guidance scale"),
    "sampler": Key("str", doc="sampler by its A1111 name"),
    "negative": Key("str", doc="negative prompt"),
    "seeds": Key("seeds", doc="seeds: integers and inclusive ranges"),
    "seed": Key("seeds", doc="alias of seeds"),
    "images_per_seed": Key("int", 1, 64, doc="images per seed (seed, seed+1, ...)"),
    "prefix": Key("str", doc="text put before the prompt, e.g. 'a photo of'"),
    "setting": Key("str", doc="where the scene takes place"),
    "time": Key("str", doc="time of day: 'during sunset', 'at night'"),
    "lighting": Key("str", doc="lighting: 'soft candlelight'"),
    "style": Key("str", doc="visual style"),
    "extra": Key("strs", doc="free prompt fragments appended before the setting"),
    "regions": Key(
        "word",
        choices=("on", "alone", "off"),
        doc="a region per subject in scenes with two or more concepts (alone: region prompts "
        "name only their subject)",
    ),
    "layout": Key("word", choices=LAYOUTS, doc="how subjects without a placement share the canvas"),
}
DEFAULTS_KEYS: dict[str, Key] = {
    **RENDER_KEYS,
    "batch_size": Key("int", 1, 256, doc="images per diffusion batch"),
}
SCENE_KEYS = RENDER_KEYS

CONCEPT_KEYS: dict[str, Key] = {
    "token": Key("strs", doc="trigger token(s)"),
    "lora": Key("str", doc="LoRA file"),
    "weight": Key("float", 0, 4, doc="user weight"),
    "class": Key("str", doc="class noun"),
    "kind": Key("word", choices=("subject", "object", "style")),
    "embedding": Key("str", doc="textual-inversion embedding file"),
    "references": Key("strs", doc="reference images"),
    "negative": Key("str", doc="negative prompt of the concept's region"),
}

MODEL_KEYS: dict[str, Key] = {
    "family": Key("word", choices=("sd15", "sd2", "sdxl", "flux")),
    "revision": Key("str"),
}

STORYBOARD_KEYS: dict[str, Key] = {
    "columns": Key("int", 1, 16, doc="panels per row"),
    "title": Key("str"),
}


def merge_key(field: FieldInfo) -> Key:
    """A merge parameter's `Key`, read from its field in the method's model."""
    ann: Any = field.annotation
    if isinstance(ann, types.UnionType):  # `int | None`: unset means the engine decides
        ann = next(a for a in get_args(ann) if a is not type(None))
    choices: tuple[str, ...] = ()
    if get_origin(ann) is Literal:
        kind, choices = "word", tuple(str(a) for a in get_args(ann))
    else:
        kind = {bool: "bool", int: "int", float: "float"}.get(ann, "str")
    lo = hi = None
    lo_open = False
    for m in field.metadata:
        if isinstance(m, (at.Ge, at.Gt)):
            lo, lo_open = (m.ge if isinstance(m, at.Ge) else m.gt), isinstance(m, at.Gt)
        elif isinstance(m, at.Le):
            hi = m.le
    return Key(kind, lo, hi, choices, lo_open, doc=field.description or "")  # type: ignore[arg-type]


class _MergeKeys(Mapping[str, dict[str, Key]]):
    """Method -> its parameters as `Key`s, read live from the models in
    `scenecraft.merge.config.METHODS` (a method registered later is seen too)."""

    def __getitem__(self, method: str) -> dict[str, Key]:
        fields = METHODS[method].model_fields
        return {name: merge_key(f) for name, f in fields.items() if name != "method"}

    def __iter__(self) -> Iterator[str]:
        return iter(list(METHODS))

    def __len__(self) -> int:
        return len(METHODS)


# Names as users write them, from the methods' parameter models (scenecraft.merge.config).
MERGE_KEYS: Mapping[str, dict[str, Key]] = _MergeKeys()

_TYPE_WORDS = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "`true` or `false`",
    "size": "a size like `512x512`",
    "seeds": "integers or ranges like `1..4`",
    "word": "a name",
    "strs": "one or more strings",
    "words": "one or more names",
}

MAX_SEEDS = 10_000


def _wrong_type(c: Collector, key: str, spec: Key, v: n.Value) -> None:
    c.error(
        "wrong-value-type",
        f"`{key}` expects {_TYPE_WORDS[spec.kind]}, found `{fmt_value(v)}`",
        v.span,
        label=f"expected {_TYPE_WORDS[spec.kind]}",
        help=_type_help(key, spec, v),
    )


def _type_help(key: str, spec: Key, v: n.Value) -> str | None:
    if spec.kind in ("str", "strs") and isinstance(v, n.Ident):
        return f'quote it: `{key} "{v.name}"`'
    if spec.kind == "word" and spec.choices:
        return "one of " + ", ".join(f"`{x}`" for x in spec.choices)
    return None


def _check_range(c: Collector, key: str, spec: Key, x: float, v: n.Value) -> bool:
    too_low = spec.lo is not None and (x <= spec.lo if spec.lo_open else x < spec.lo)
    too_high = spec.hi is not None and x > spec.hi
    if too_low or too_high:
        lo = "" if spec.lo is None else f"{'(' if spec.lo_open else '['}{_num(spec.lo)}"
        hi = "" if spec.hi is None else f"{_num(spec.hi)}]"
        c.error(
            "value-out-of-range",
            f"`{key}` must be in {lo}, {hi}, found {fmt_value(v)}",
            v.span,
            label="out of range",
        )
        return False
    return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _read_one(c: Collector, key: str, spec: Key, v: n.Value) -> Any:
    kind = spec.kind
    if kind in ("str", "strs"):
        if isinstance(v, n.Str):
            return v.value
    elif kind in ("word", "words"):
        word = v.name if isinstance(v, n.Ident) else v.value if isinstance(v, n.Str) else None
        if word is not None:
            if spec.choices and word not in spec.choices:
                c.error(
                    "unknown-choice",
                    f"`{word}` is not a valid `{key}`",
                    v.span,
                    label="unknown value",
                    notes=("valid: " + ", ".join(f"`{x}`" for x in spec.choices),),
                    help=did_you_mean(word, spec.choices),
                )
                return None
            return word
    elif kind == "int":
        if isinstance(v, n.Num) and v.is_int:
            return int(v.value) if _check_range(c, key, spec, v.value, v) else None
    elif kind == "float":
        if isinstance(v, n.Num):
            return float(v.value) if _check_range(c, key, spec, v.value, v) else None
    elif kind == "bool":
        if isinstance(v, n.Bool):
            return v.value
    elif kind == "size":
        if isinstance(v, n.Size):
            return _read_size(c, key, spec, v)
    _wrong_type(c, key, spec, v)
    return None


def _read_size(c: Collector, key: str, spec: Key, v: n.Size) -> tuple[int, int] | None:
    ok = True
    for side in (v.width, v.height):
        ok = _check_range(c, key, spec, side, v) and ok
    if ok and (v.width % 8 or v.height % 8):
        c.error(
            "size-not-multiple-of-8",
            f"image size {v.width}x{v.height} is not a multiple of 8",
            v.span,
            label="width and height must be multiples of 8",
            notes=("the VAE works on 8x8 pixel blocks; diffusers rejects other sizes",),
            help=f"use `{_round8(v.width)}x{_round8(v.height)}`",
        )
        return None
    return (v.width, v.height) if ok else None


def _round8(x: int) -> int:
    return max(8, int(round(x / 8)) * 8)


def _read_seeds(c: Collector, key: str, values: tuple[n.Value, ...]) -> list[int] | None:
    seeds: list[int] = []
    for v in values:
        if isinstance(v, n.Num) and v.is_int:
            if v.value < 0 or v.value > 2**32 - 1:
                c.error("value-out-of-range", "seeds must be in [0, 4294967295]", v.span)
                return None
            seeds.append(int(v.value))
        elif isinstance(v, n.Range):
            if v.start > v.stop:
                c.error(
                    "bad-range",
                    f"range `{v.start}..{v.stop}` is empty: its start is after its end",
                    v.span,
                    label="start > end",
                    help=f"write `{v.stop}..{v.start}`",
                )
                return None
            if v.start < 0 or v.stop > 2**32 - 1:
                c.error("value-out-of-range", "seeds must be in [0, 4294967295]", v.span)
                return None
            if v.stop - v.start + 1 + len(seeds) > MAX_SEEDS:
                c.error(
                    "too-many-images",
                    f"`{key}` asks for more than {MAX_SEEDS} seeds",
                    v.span,
                    help="use a shorter range",
                )
                return None
            seeds.extend(range(v.start, v.stop + 1))
        else:
            _wrong_type(c, key, Key("seeds"), v)
            return None
    return list(dict.fromkeys(seeds))


def read_setting(c: Collector, setting: n.Setting, spec: Key) -> Any:
    """The value of ``setting`` checked against ``spec``; None (and a diagnostic) if bad."""
    key = setting.key.name
    if spec.kind == "seeds":
        return _read_seeds(c, key, setting.values)
    if spec.kind in ("strs", "words"):
        out = [_read_one(c, key, spec, v) for v in setting.values]
        return None if any(x is None for x in out) else out
    if len(setting.values) != 1:
        c.error(
            "wrong-value-count",
            f"`{key}` takes one value, found {len(setting.values)}",
            setting.values[1].span,
            label="unexpected extra value",
            help="quote text that contains commas",
        )
        return None
    return _read_one(c, key, spec, setting.values[0])


def read_block(
    c: Collector,
    settings: tuple[n.Setting, ...],
    table: dict[str, Key],
    where: str,
    extra_names: tuple[str, ...] = (),
) -> dict[str, tuple[Any, n.Setting]]:
    """Read every setting of a block; unknown and duplicate keys are reported."""
    out: dict[str, tuple[Any, n.Setting]] = {}
    for s in settings:
        key = s.key.name
        spec = table.get(key)
        if spec is None:
            unknown_setting(c, s, table, where, extra_names)
            continue
        canon = (
            "seeds" if key == "seed" and spec.kind == "seeds" else key
        )  # `seed` is an alias of `seeds`, not of a merge seed
        if canon in out:
            duplicate_setting(c, s, out[canon][1])
            continue
        value = read_setting(c, s, spec)
        if value is not None:
            out[canon] = (value, s)
    return out


def unknown_setting(
    c: Collector, s: n.Setting, table: dict[str, Key], where: str, extra: tuple[str, ...] = ()
) -> None:
    valid = sorted(table)
    c.error(
        "unknown-setting",
        f"unknown setting `{s.key.name}` in {where}",
        s.key.span,
        label="not a setting here",
        notes=("valid settings: " + ", ".join(valid),) if valid else ("this block takes none",),
        help=did_you_mean(s.key.name, [*valid, *extra]),
    )


def duplicate_setting(c: Collector, s: n.Setting, first: n.Setting) -> None:
    c.error(
        "duplicate-setting",
        f"`{s.key.name}` is set twice",
        s.key.span,
        label="set again here",
        labels=(Label(first.key.span, "first set here"),),
        help="remove one of them",
    )
