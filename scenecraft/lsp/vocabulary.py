"""The language's fixed words, read from where they are defined: the grammar (interactions,
placement relations, attribute words, item keywords), `scenecraft.layout` (areas, layouts),
`scenecraft.language.schema` (settings) and `scenecraft.names` (samplers)."""

from __future__ import annotations

import re
from functools import lru_cache

from scenecraft.language.parser import grammar_path

_QUOTED = re.compile(r'"([^"]+)"')


@lru_cache(maxsize=1)
def _grammar() -> str:
    return grammar_path().read_text(encoding="utf-8")


def grammar_rule(name: str) -> str:
    """The body of rule ``name`` (``name:`` or ``!name:``), continuation lines included."""
    lines = _grammar().split("\n")
    for i, line in enumerate(lines):
        m = re.match(rf"!?{re.escape(name)}\s*:(.*)", line)
        if not m:
            continue
        body = [m.group(1)]
        for more in lines[i + 1 :]:
            if not more.strip() or not more[0].isspace():
                break
            body.append(more)
        return " ".join(x.split("//")[0] for x in body)
    raise KeyError(f"no rule {name!r} in the grammar")


def phrases(rule: str) -> tuple[str, ...]:
    """The word sequences of a rule's alternatives: `"waves" "at" | "hugs"` -> waves at, hugs."""
    out = []
    for alternative in grammar_rule(rule).split("|"):
        words = _QUOTED.findall(alternative)
        if words:
            out.append(" ".join(words))
    return tuple(dict.fromkeys(out))


@lru_cache(maxsize=1)
def interactions() -> tuple[str, ...]:
    return phrases("verb")


@lru_cache(maxsize=1)
def relations() -> tuple[str, ...]:
    return phrases("relation")


@lru_cache(maxsize=1)
def attribute_words() -> tuple[str, ...]:
    return phrases("attribute")


@lru_cache(maxsize=1)
def item_keywords() -> tuple[str, ...]:
    """`model`, `include`, `concept`, ...: the rules `_item` lists, each starting with its word."""
    return tuple(name.strip() for name in grammar_rule("_item").split("|"))


SCENE_KEYWORDS = ("object", "together")  # statements of a scene body that start with a keyword
BOARD_KEYWORDS = ("panel",)
