"""The VS Code grammar (editors/vscode) knows every keyword of grammars/scene.lark and every
setting key the checker accepts, so a new word in the language cannot go unhighlighted.

The grammar's own scope tests (and the scan of every example file) run with npm in CI
(`.ci/run`: `npm test` in editors/vscode); this test needs no node.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from scenecraft.language import schema

ROOT = Path(__file__).resolve().parent.parent
SYNTAXES = ROOT / "editors" / "vscode" / "syntaxes"


def grammar_text() -> str:
    return (SYNTAXES / "scene.tmLanguage.json").read_text(encoding="utf-8")


def lark_keywords() -> set[str]:
    """Every quoted word of the Lark grammar (`"wears"`, `"left" "of"`, ...)."""
    text = (ROOT / "grammars" / "scene.lark").read_text(encoding="utf-8")
    return set(re.findall(r'"([a-z]+)"', text))


def matched_words(text: str) -> set[str]:
    """Every word listed in an alternation `(?:a|b|c)` or `(a|b|c)` of the grammar's regexes."""
    words: set[str] = set()
    for group in re.findall(r"\((?:\?:)?([a-z_]+(?:\|[a-z_]+)+)\)", text):
        words.update(group.split("|"))
    return words


def test_every_lark_keyword_is_highlighted() -> None:
    missing = lark_keywords() - matched_words(grammar_text())
    # the top-level item words are matched one rule each
    single = {w for w in missing if f"({w})" in grammar_text()}
    assert missing - single == set()
    assert {"wears", "object", "panel", "storyboard"} <= lark_keywords()  # the scan reads it


def test_every_setting_key_is_highlighted() -> None:
    keys = set(schema.RENDER_KEYS) | set(schema.DEFAULTS_KEYS) | set(schema.CONCEPT_KEYS)
    keys |= set(schema.MODEL_KEYS) | set(schema.STORYBOARD_KEYS)
    for per_method in schema.MERGE_KEYS.values():
        keys |= set(per_method)
    assert keys - matched_words(grammar_text()) == set()


def test_grammars_are_json_with_the_scopes_package_json_names() -> None:
    package = json.loads((ROOT / "editors" / "vscode" / "package.json").read_text("utf-8"))
    for entry in package["contributes"]["grammars"]:
        grammar = json.loads((ROOT / "editors" / "vscode" / entry["path"]).read_text("utf-8"))
        assert grammar["scopeName"] == entry["scopeName"]
