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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import Concat
from jinja2.runtime import markup_join
from jinja2.sandbox import SandboxedEnvironment

from scenecraft.language.sandbox_budget import (
    MAX_INT_BITS,
    MAX_LIPSUM,
    MAX_OUTPUT_CHARS,
    MAX_RANGE_ITEMS,
    MAX_SEQUENCE,
    Budget,
    TemplateLimit,
    filter_size,
    format_size,
    is_int,
    materialise,
    method_size,
    text_size,
    timeout,
    too_long,
)

__all__ = [  # the limits and errors stay importable from here (templating reads them)
    "MAX_OUTPUT_CHARS",
    "BoundedEnvironment",
    "TemplateLimit",
    "environment",
    "timeout",
]


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
        items = pieces if isinstance(pieces, list) else materialise(pieces, self.budget)
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
            elif is_int(left) and is_int(right):
                self._bits(max(left.bit_length(), right.bit_length()) + 1, f"{left} + {right}")
        elif operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and is_int(times):
                    self.budget.spend(len(seq) * max(times, 0))
            if is_int(left) and is_int(right):
                self._bits(left.bit_length() + right.bit_length(), f"{left} * {right}")
        elif operator == "**" and is_int(left) and is_int(right):
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
                args = (materialise(args[0], budget), *args[1:])
            size = method_size(owner, name, args, kwargs)
            if isinstance(owner, list) and len(owner) + size > MAX_SEQUENCE:
                raise too_long(len(owner) + size, "a list")
            budget.spend(size)
        result = super().call(__context, __obj, *args, **kwargs)
        _spend_result(budget, result)
        return result


def _spend_result(budget: Budget, result: Any) -> None:
    """After a call whose size was not predicted: a string or list counts as built."""
    if isinstance(result, (str, list, tuple, bytes)):
        if len(result) > MAX_SEQUENCE:
            raise too_long(len(result))


def bounded_filter(env: BoundedEnvironment, name: str, func: Callable[..., Any]) -> Any:
    """Wrap a built-in filter: its result's size is predicted and spent before it runs."""

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = env.budget
        budget.tick()
        lead = [a for a in args if _is_context(a)]
        plain = [a for a in args if not _is_context(a)]
        if plain and name in ("join", "sum", "list", "unique", "sort", "batch", "slice"):
            plain[0] = materialise(plain[0], budget)
        for value in (*plain[1:], *kwargs.values()):
            if is_int(value) and abs(value) > MAX_SEQUENCE:
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
