"""The template sandbox: Jinja2's `SandboxedEnvironment` with every value it builds bounded.

The bounds are structural. Every operation that builds a string or a list (`~`, `+`, `*`, `%`,
`{{ }}` output, `{% set %}...{% endset %}` captures, macro bodies, filters, method calls)
predicts the size of its result from the sizes of its operands and spends it against one
budget *before* building it: no single value may pass MAX_SEQUENCE items, and all values built
by one rendering together may not pass MAX_BUILT. Sizes of lists are measured as the text they
would print as, so `[a] * 1000` is cheap but `{{ [a] * 1000 }}` or `([a] * 1000)|join` is
refused before it is printed. Since no step can then run long, the clock checks and the alarm
of `scenecraft.language.templating` keep the time limit too.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.runtime import markup_join
from jinja2.sandbox import SandboxedEnvironment
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


def _too_long(n: int, what: str = "a string or list") -> TemplateLimit:
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
            raise _too_long(n, what) if cap == MAX_SEQUENCE else _too_big_text(n)
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


def _materialise(value: Any, budget: Budget) -> Any:
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
                raise _too_long(i, "a list")
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
    return len(value) if isinstance(value, str) else int(value or 0) if _is_int(value) else 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _replaced_size(s: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(s)
    hits = len(s) + 1 if old == "" else s.count(old)
    if _is_int(count) and count >= 0:
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
        return max(n, *(_width(v) for v in values if _is_int(v)), 0)
    if name == "expandtabs":
        size = _width(values[0]) if values and _is_int(values[0]) else 8
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


class _Generator(CodeGenerator):
    """Jinja's code generator with `~` routed through the environment (to be measured)."""

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(SandboxedEnvironment):
    """The sandbox plus a `Budget` spent by every value the template builds."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.budget = Budget(float("inf"))  # replaced by each rendering (`start`)
        self.finalize = self._finalize
        self.concat = self._concat  # type: ignore[method-assign]

    def start(self, seconds: float) -> Budget:
        self.budget = Budget(seconds)
        return self.budget

    # `{{ value }}`: printed only once its printed size is spent
    def _finalize(self, value: Any) -> Any:
        size = len(value) if isinstance(value, str) else text_size(value, MAX_OUTPUT_CHARS + 1)
        self.budget.spend(size, cap=MAX_OUTPUT_CHARS)
        return value

    # `{% set %}...{% endset %}`, macro and block bodies: buffers joined
    def _concat(self, pieces: Iterable[Any]) -> str:
        items = pieces if isinstance(pieces, list) else _materialise(pieces, self.budget)
        size = sum(len(p) if isinstance(p, str) else text_size(p) for p in items)
        self.budget.spend(size, cap=MAX_OUTPUT_CHARS)
        return "".join(items)

    # `a ~ b ~ c`
    def bounded_concat(self, values: tuple[Any, ...]) -> Any:
        size = 0
        for v in values:  # stop measuring as soon as the sum is too big
            size += text_size(v, MAX_OUTPUT_CHARS + 1)
            if size > MAX_OUTPUT_CHARS:
                break
        if any(hasattr(v, "__html__") for v in values):
            size *= 6  # escaping: up to 6 characters for 1
        self.budget.spend(size, cap=MAX_OUTPUT_CHARS)
        if any(hasattr(v, "__html__") for v in values):
            return markup_join(values)
        return "".join(map(str, values))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        self.budget.tick()
        if operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                self.budget.spend(len(left) + len(right))
            elif _is_int(left) and _is_int(right):
                self._bits(max(left.bit_length(), right.bit_length()) + 1, f"{left} + {right}")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and _is_int(times):
                    self.budget.spend(len(seq) * max(times, 0))
            if _is_int(left) and _is_int(right):
                self._bits(left.bit_length() + right.bit_length(), f"{left} * {right}")
        elif operator == "**" and _is_int(left) and _is_int(right):
            if abs(left) > 1 and right > 0 and right * math.log2(abs(left)) > MAX_INT_BITS:
                raise TemplateLimit(
                    f"`{left} ** {right}` is a number of more than {MAX_INT_BITS} bits",
                    "use smaller numbers",
                )
        elif operator == "%" and isinstance(left, str):
            args = right if isinstance(right, tuple) else (right,)
            values = list(right.values()) if isinstance(right, dict) else list(args)
            self.budget.spend(format_size(left, values))
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` / `format_map`, which Jinja wraps when the attribute is read (not in
        `call`): the wrapper spends the predicted size first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        owner, name, budget = value.__self__, value.__name__, self.budget

        def bounded(*args: Any, **kwargs: Any) -> str:
            budget.spend(method_size(owner, name, args, kwargs))
            return wrapped(*args, **kwargs)

        return bounded

    def _bits(self, bits: int, what: str) -> None:
        if bits > MAX_INT_BITS:
            raise TemplateLimit(
                f"`{what[:60]}` is a number of more than {MAX_INT_BITS} bits", "use smaller numbers"
            )

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = __self.budget
        budget.tick()
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, (str, list)):
            if name == "join" and args:
                args = (_materialise(args[0], budget), *args[1:])
            size = method_size(owner, name, args, kwargs)
            if isinstance(owner, list) and len(owner) + size > MAX_SEQUENCE:
                raise _too_long(len(owner) + size, "a list")
            budget.spend(size)
        result = super().call(__context, __obj, *args, **kwargs)
        _spend_result(budget, result)
        return result


def _spend_result(budget: Budget, result: Any) -> None:
    """After a call whose size was not predicted: a string or list counts as built."""
    if isinstance(result, (str, list, tuple, bytes)):
        if len(result) > MAX_SEQUENCE:
            raise _too_long(len(result))


def bounded_filter(env: BoundedEnvironment, name: str, func: Callable[..., Any]) -> Any:
    """Wrap a built-in filter: its result's size is predicted and spent before it runs."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = env.budget
        budget.tick()
        lead = [a for a in args if _is_context(a)]
        plain = [a for a in args if not _is_context(a)]
        if plain and name in ("join", "sum", "list", "unique", "sort", "batch", "slice"):
            plain[0] = _materialise(plain[0], budget)
        for value in (*plain[1:], *kwargs.values()):
            if _is_int(value) and abs(value) > MAX_SEQUENCE:
                raise TemplateLimit(
                    f"an argument of the `{name}` filter is {value:,} (at most {MAX_SEQUENCE:,})",
                    "use widths and counts that fit a scene file",
                )
        size = filter_size(name, plain, kwargs)
        if size is not None:
            budget.spend(size)
        result = func(*lead, *plain, **kwargs)
        if size is None and isinstance(result, (str, list, tuple)):
            budget.spend(len(result))
        return result

    if hasattr(func, "jinja_pass_arg"):  # keep pass_context / pass_eval_context markers
        bounded.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    return bounded


def _is_context(value: Any) -> bool:
    return isinstance(value, (jinja2.runtime.Context, jinja2.nodes.EvalContext, jinja2.Environment))


def bounded_range(env: BoundedEnvironment) -> Any:
    def bounded(*args: int) -> Ticking:
        budget = env.budget
        items = range(*args)
        budget.range_items += len(items)
        if budget.range_items > MAX_RANGE_ITEMS:
            raise TemplateLimit(
                f"the template's loops and ranges ask for more than {MAX_RANGE_ITEMS:,} "
                "items in all",
                "nested loops multiply: generate fewer scenes or seeds per file",
            )
        return Ticking(items, budget)

    return bounded


class Ticking:
    """A range that checks the clock while it is iterated (loops inside loops)."""

    def __init__(self, items: range, budget: Budget) -> None:
        self.items, self.budget = items, budget

    def __iter__(self) -> Iterator[int]:
        for i, value in enumerate(self.items):
            if i % 1024 == 0:
                self.budget.tick()
            yield value

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        return self.items[index]

    def __repr__(self) -> str:
        return repr(self.items)


def bounded_lipsum(lipsum: Any) -> Any:
    def bounded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:  # noqa: A002
        if any(isinstance(v, int) and v > MAX_LIPSUM for v in (n, min, max)):
            raise TemplateLimit(
                f"`lipsum` asks for more than {MAX_LIPSUM} paragraphs or words",
                f"use `lipsum({MAX_LIPSUM})` or less",
            )
        return lipsum(n=n, html=html, min=min, max=max)

    return bounded


def environment(strict_tojson: Callable[[Any], Any]) -> BoundedEnvironment:
    env = BoundedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson"] = strict_tojson(env.filters["tojson"])
    for name, func in list(env.filters.items()):
        env.filters[name] = bounded_filter(env, name, func)
    env.globals["range"] = bounded_range(env)
    env.globals["lipsum"] = bounded_lipsum(env.globals["lipsum"])
    return env
