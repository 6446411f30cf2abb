"""The template sandbox's bounds and its budget: the limits, `Budget` (what one rendering has
spent), and the measuring that predicts a value's size before it is built (`text_size`,
`format_size`, `filter_size`, `method_size`). `scenecraft.language.sandbox` spends it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

import jinja2
from jinja2.utils import Namespace

MAX_OUTPUT_CHARS = 2 * 1024 * 1024  # the rendered text, like a hand-written file (loader cap)
MAX_SEQUENCE = 1_000_000  # one string or list a template builds, in characters or items
MAX_BUILT = 32 * 1024 * 1024  # all strings and lists one rendering builds, together
MAX_RANGE_ITEMS = 1_000_000  # items produced by every `range` of one rendering, together
MAX_LIPSUM = 100  # paragraphs (and words per paragraph) of `lipsum`
MAX_INT_BITS = 4096  # integers a template computes (`**`, `*`)
MAX_NESTING = 200  # lists nested in lists, when a value's printed size is measured


class TemplateLimit(Exception):
    """A template exceeded one of the bounds above (raised inside the rendering)."""

    def __init__(self, what: str, help: str, line: int | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.help = help
        self.line = line  # the template line, when the traceback cannot tell it


def timeout(seconds: float) -> TemplateLimit:
    return TemplateLimit(
        f"the template ran longer than {seconds:g} s",
        "loops over loops multiply: generate fewer scenes or seeds per file",
    )


def too_long(n: int, what: str = "a string or list") -> TemplateLimit:
    return TemplateLimit(
        f"the template builds {what} of {n:,} items (at most {MAX_SEQUENCE:,})",
        "build smaller values; a scene file needs no huge strings",
    )


def _too_big_text(n: int) -> TemplateLimit:
    return TemplateLimit(
        f"the template builds a text of {n:,} characters (at most {MAX_OUTPUT_CHARS:,})",
        "generate fewer scenes per file, or split the template",
    )


class Budget:
    """What one rendering has spent so far: time, range items, characters and items built."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.range_items = 0
        self.built = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise timeout(self.seconds)

    def spend(self, n: int, what: str = "a string or list", cap: int = MAX_SEQUENCE) -> None:
        """Before building a value of ``n`` characters or items: refuse it past a bound
        (``cap``: MAX_OUTPUT_CHARS for text on its way out, `{% set %}` captures, `~`)."""
        self.tick()
        if n > cap:
            raise too_long(n, what) if cap == MAX_SEQUENCE else _too_big_text(n)
        self.built += n
        if self.built > MAX_BUILT:
            raise TemplateLimit(
                f"the template builds more than {MAX_BUILT:,} characters and list items in all",
                "build fewer and smaller values; strings built in a loop add up",
            )


# ---------------------------------------------------------------------------- measuring


def text_size(value: Any, limit: int = MAX_SEQUENCE + 1) -> int:
    """An upper bound on ``len(str(value))``, counted only up to ``limit`` (then returned).

    Iterative, with shared and cyclic items counted at each place they print (a cycle prints
    as ``[...]``); lists nested more than MAX_NESTING deep are refused.
    """
    if isinstance(value, str):
        return len(value)
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    on_path: set[int] = set()  # containers being measured (a cycle back to one prints `[...]`)
    while stack and total <= limit:
        item, depth = stack.pop()
        if depth < 0:  # leaving a container: items shared elsewhere print again there
            on_path.discard(item)
        elif isinstance(item, str):  # inside a container: its repr, quotes and escapes
            total += (2 if item.isascii() and item.isprintable() else 10) * len(item) + 2
        elif isinstance(item, (list, tuple, set, frozenset, dict, Namespace)) or _is_view(item):
            if depth > MAX_NESTING:
                raise TemplateLimit(
                    f"the template nests lists more than {MAX_NESTING} deep",
                    "use flat lists and small tables",
                )
            if id(item) in on_path:
                total += 5
                continue
            on_path.add(id(item))
            children = _children(item)
            total += 16 + 4 * len(children)
            if total > limit:
                break
            stack.append((id(item), -1))
            stack.extend((child, depth + 1) for child in children)
        else:
            total += _scalar_size(item)
    return total


def _is_view(item: Any) -> bool:
    return isinstance(item, (type({}.keys()), type({}.values()), type({}.items())))


def _children(item: Any) -> list[Any]:
    if isinstance(item, Namespace):
        item = object.__getattribute__(item, "_Namespace__attrs")
    if isinstance(item, dict):
        return [x for pair in item.items() for x in pair]
    return list(item)


def _scalar_size(item: Any) -> int:
    if isinstance(item, bool) or item is None:
        return 5
    if isinstance(item, int):
        return item.bit_length() // 3 + 2
    if isinstance(item, float):
        return 24
    if isinstance(item, bytes):
        return 4 * len(item) + 3
    if isinstance(item, jinja2.Undefined):
        return 0
    return 200  # macros, loops, cyclers, ranges: a short repr


def materialise(value: Any, budget: Budget) -> Any:
    """A lazy iterable (a generator, `map`, a dict view) as a list, its length spent first."""
    if isinstance(value, (str, list, tuple, dict, set, frozenset)) or not isinstance(
        value, Iterable
    ):
        return value
    items = []
    for i, item in enumerate(value):
        if i % 4096 == 0:
            budget.spend(4096, "a list")
            if i > MAX_SEQUENCE:
                raise too_long(i, "a list")
        items.append(item)
    return items


# ------------------------------------------------------------------- predicted sizes


_FORMAT_WIDTH = re.compile(r"[0-9]{7,}")  # a width or precision of a million or more
_DIGITS = re.compile(r"[0-9]+")


def check_format(fmt: Any) -> None:
    if isinstance(fmt, str) and _FORMAT_WIDTH.search(fmt):
        raise TemplateLimit(
            "a format string asks for a width of a million characters or more",
            "use widths that fit a scene file",
        )


def format_size(fmt: str, args: Iterable[Any]) -> int:
    """Bound on the size of ``fmt % args`` or ``fmt.format(*args)``: each field may print the
    largest argument at the largest width written in the format or passed as a number."""
    check_format(fmt)
    values = list(args)
    fields = fmt.count("%") + fmt.count("{")
    widths = max((int(w) for w in _DIGITS.findall(fmt)), default=0)
    numbers = [abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]
    largest = max((text_size(v) for v in values), default=0)
    return len(fmt) + fields * (largest + widths + max(numbers, default=0))


def _width(value: Any) -> int:
    return len(value) if isinstance(value, str) else int(value or 0) if is_int(value) else 0


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _replaced_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    hits = len(s) + 1 if old == "" else s.count(old)
    if is_int(count) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


def _args_size(args: Iterable[Any]) -> int:
    return sum(text_size(a) for a in args)


def filter_size(name: str, args: list[Any], kwargs: dict[str, Any]) -> int | None:
    """Predicted size of a built-in filter's result (before it runs); None: measured after."""
    if not args:
        return None
    v, rest, kw = args[0], args[1:], kwargs
    n = text_size(v)

    def opt(i: int, key: str, default: Any = None) -> Any:  # argument i after the value, or key=
        return rest[i] if len(rest) > i else kw.get(key, default)

    if name in ("string", "safe", "trim", "striptags", "truncate"):
        return n + text_size(opt(2, "end", "..."))
    if name in ("upper", "lower", "title", "capitalize"):
        return 3 * n
    if name in ("pprint",):
        return 4 * n
    if name in ("e", "escape", "forceescape", "tojson", "xmlattr"):
        return 6 * n
    if name == "urlencode":
        return 12 * n
    if name == "urlize":
        return 64 * n
    if name == "center":
        return max(n, _width(opt(0, "width", 80)))
    if name == "indent":
        lines = v.count("\n") + 1 if isinstance(v, str) else n
        return n + lines * _width(opt(0, "width", 4))
    if name == "replace":
        return _replaced_size(str(v), opt(0, "old"), opt(1, "new"), opt(2, "count", -1))
    if name == "format":
        return format_size(str(v), [*rest, *kw.values()])
    if name == "join":
        items = len(v) if hasattr(v, "__len__") else n
        return n + items * (text_size(opt(0, "d", "")) + (64 if opt(1, "attribute") else 0))
    if name == "wordwrap":
        width = max(_width(opt(0, "width", 79)), 1)
        return 8 * n + (n // width + 1) * text_size(opt(2, "wrapstring", "\n"))
    if name == "sum":
        start = opt(1, "start", 0)
        if isinstance(start, (str, list, tuple)) and isinstance(v, (list, tuple)):
            # each `+` copies the sum so far: quadratic, so the copies are what is spent
            size, copied = len(start), 0
            for item in v:
                size += len(item) if hasattr(item, "__len__") else 1
                copied += size
            return copied
    return None


_STR_READ_ONLY = {"count", "find", "rfind", "index", "rindex", "startswith", "endswith"}
_STR_GROW = {"upper", "lower", "title", "swapcase", "casefold", "capitalize"}


def method_size(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Predicted size of ``owner.name(*args)`` for a string or list (before it runs)."""
    values = [*args, *kwargs.values()]
    if isinstance(owner, list):  # what the list grows by (checked against the cap in `call`)
        if name == "extend" and values:
            return len(values[0]) if hasattr(values[0], "__len__") else 0
        return {"append": 1, "insert": 1, "copy": len(owner)}.get(name, 0)
    if name in _STR_READ_ONLY or name.startswith("is"):
        return 0
    n = len(owner)
    if name in ("center", "ljust", "rjust", "zfill"):
        return max(n, *(_width(v) for v in values if is_int(v)), 0)
    if name == "expandtabs":
        size = _width(values[0]) if values and is_int(values[0]) else 8
        return n + owner.count("\t") * size
    if name == "replace" and len(args) >= 2:
        return _replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    if name == "join" and values:
        items = len(values[0]) if hasattr(values[0], "__len__") else 0
        return text_size(values[0]) + items * n
    if name in ("format", "format_map"):
        mapped = list(values[0].values()) if name == "format_map" and values else values
        return format_size(owner, mapped if isinstance(mapped, list) else [])
    if name == "translate" and values:
        table = values[0]
        longest = (
            max((text_size(x) for x in table.values()), default=1) if isinstance(table, dict) else 1
        )
        return n * max(longest, 1)
    if name in _STR_GROW:
        return 3 * n
    if name == "encode":
        return 4 * n
    return n


# -------------------------------------------------------------------------- environment
