"""Sizes (issue 30): no module under scenecraft/ over MAX_MODULE_LINES lines, and no function over
MAX_FUNCTION_LINES lines unless its docstring says why it reads best whole.

The convention: a function longer than MAX_FUNCTION_LINES (``end_lineno - lineno + 1``, its
decorators left out, its docstring counted) has a docstring holding the word "long" in a
sentence that gives the reason ("Long because it is one optimisation loop ..."). Anything else
is split into small named steps.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "scenecraft"
MAX_MODULE_LINES = 520
MAX_FUNCTION_LINES = 60
_REASON = re.compile(r"\blong\b", re.IGNORECASE)

# Known exceptions, each with its reason. Entries that no longer apply are harmless; only new
# offenders fail.
KNOWN_LONG_MODULES: set[str] = set()  # none left
KNOWN_UNEXPLAINED_FUNCTIONS: set[str] = set()  # none left


def module_lines(root: Path = PACKAGE) -> dict[str, int]:
    """Module path (relative to the package) -> its number of lines."""
    return {
        path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(root.rglob("*.py"))
    }


def unexplained_long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Names of the functions in ``source`` longer than ``limit`` lines whose docstring does
    not hold the word "long"."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit and not _REASON.search(ast.get_docstring(node) or ""):
                out.append(node.name)
    return out


def test_no_module_is_too_long() -> None:
    too_long = {
        name: lines
        for name, lines in module_lines().items()
        if lines > MAX_MODULE_LINES and name not in KNOWN_LONG_MODULES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them): {too_long}"


def test_every_long_function_says_why() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for name in unexplained_long_functions(path.read_text(encoding="utf-8")):
            if f"{rel}:{name}" not in KNOWN_UNEXPLAINED_FUNCTIONS:
                found.append(f"{rel}:{name}")
    assert not found, (
        f"functions over {MAX_FUNCTION_LINES} lines without a reason: split them, or say in the "
        f'docstring why they read best whole (a sentence with the word "long"): {found}'
    )


def _function(lines: int, docstring: str) -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(lines - 2))
    return f'def f():\n    """{docstring}"""\n{body}'


def test_the_function_rule_counts_and_reads_the_reason() -> None:
    assert unexplained_long_functions(_function(60, "Short enough.")) == []
    assert unexplained_long_functions(_function(61, "Does things.")) == ["f"]
    assert unexplained_long_functions(_function(61, "Long because it is one loop.")) == []
    # the word, not a part of one
    assert unexplained_long_functions(_function(61, "The longest prompt.")) == ["f"]
