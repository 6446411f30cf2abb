"""The text a scene's prompt takes as written, whether a trigger token occurs in it, and the
`token-in-text` warning."""

from __future__ import annotations

import re
from functools import lru_cache

from scenecraft.diagnostics import Collector
from scenecraft.language import nodes as n
from scenecraft.language.checked import ConceptInfo

PROMPT_TEXT = ("prefix", "setting", "time", "lighting", "style", "extra")  # settings written
# into the prompt as they are (not `negative`: a token there asks the model to avoid it)


def prompt_texts(files: list[n.File], main: n.File) -> list[tuple[str, n.Span]]:
    """Every piece of text a scene's prompt takes as written, with its span: prompt settings
    (in `defaults` and scenes), attributes, quoted verbs, object and `together` texts."""
    bodies: list[tuple[n.Setting | n.SceneStmt, ...]] = []
    for f in files:
        for item in f.items:
            if isinstance(item, n.Defaults):
                bodies.append(item.settings)
            elif isinstance(item, n.Scene) and f is main:
                bodies.append(item.body)
            elif isinstance(item, n.Storyboard) and f is main:
                bodies += [p.scene.body for p in item.panels if p.scene is not None]
    out: list[tuple[str, n.Span]] = []
    for body in bodies:
        for stmt in body:
            if isinstance(stmt, n.Setting) and stmt.key.name in PROMPT_TEXT:
                out += [(v.value, v.span) for v in stmt.values if isinstance(v, n.Str)]
            elif isinstance(stmt, n.SubjectStmt):
                out += [(a.text.value, a.text.span) for a in stmt.attributes]
                action = stmt.action
                if isinstance(action, n.Interaction) and action.free:
                    out.append((action.verb, action.span))
            elif isinstance(stmt, n.ObjectDecl | n.Together) and stmt.text is not None:
                out.append((stmt.text.value, stmt.text.span))
    return out


def contains_token(text: str, token: str) -> bool:
    """Whether ``token`` occurs in ``text`` as a whole word (`<ZIGGY>`, `ohwx`; not `sks` in
    `asks`)."""
    return token in text and _token_pattern(token).search(text) is not None


@lru_cache(maxsize=1024)
def _token_pattern(token: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(token)}(?!\w)")


def warn_tokens_in_text(
    c: Collector, tokens: dict[str, ConceptInfo], files: list[n.File], main: n.File
) -> None:
    """`token-in-text`: a concept's trigger token written inside prompt text (`setting
    "next to <ZIGGY>"`) reaches the prompt as written, but the concept is not merged, placed
    or given a region for it: only naming the concept does that."""
    for text, span in prompt_texts(files, main):
        for token, info in tokens.items():
            if contains_token(text, token):
                c.warn(
                    "token-in-text",
                    f"the token `{token}` of concept `{info.name}` is written inside text",
                    span,
                    label="reaches the prompt as written",
                    help=(
                        f"write `style {info.name}`: a style concept named so is merged"
                        if info.kind == "style"
                        else f"name the concept instead (`{info.name}`, e.g. `{info.name} "
                        "beside ...`): a concept named in a scene is merged, placed and "
                        "given its own region"
                    ),
                )
