"""Prompt English: how a scene's structure becomes a prompt the LoRAs were trained on.

Pure functions over small dataclasses, shared by the compiler and the embedded toy world (whose
captions must be in the compiler's English so compiled prompts are in distribution).

Rules:
- a concept reads as its trigger token(s) then its class noun: ``<GOSLING> man``;
- its attributes are bound right after its first mention: ``<TAYLOR> woman wearing a crown``;
- an interaction reads ``A waves at B and C``; a placement ``A left of B``;
- concepts mentioned nowhere else are listed; a group activity follows them (objects are
  listed after it: the activity is never theirs);
- setting, lighting and style close the prompt: ``in a library, during sunset, noir style``.
Clauses are joined with ", ".

Regional sampling writes two more kinds of prompt from the same scene:
- a region prompt leads with its subject as a single-subject scene would say it (its token,
  class and own attributes: what the subject's LoRA was trained on, token first), then the
  global prompt: ``<TAYLOR> woman wearing a crown, man waves at woman, in a library``; another
  subject's identity and attributes never reach it (`regions alone`: the subject alone in the
  setting, lighting and style, Mix-of-Show's region prompts);
- the global prompt keeps the structure (interactions, placements, objects, activity, setting,
  lighting, style) but names each concept by its class noun only: ``man waves at woman, in a
  library``; the regions supply who they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

ATTRIBUTE_VERBS: dict[str, str] = {
    "wears": "wearing",
    "dressed-as": "dressed as",
    "with": "with",
    "holding": "holding",
    "has": "who has",
    "in": "in",
    "is": "",
}

RELATION_WORDS: dict[str, str] = {
    "left-of": "left of",
    "right-of": "right of",
    "above": "above",
    "below": "below",
    "on-top-of": "on top of",
    "in-front-of": "in front of",
    "behind": "behind",
    "beside": "beside",
    "back-to-back": "back to back with",
}

PREPOSITIONS = (
    "in ",
    "on ",
    "at ",
    "inside ",
    "under ",
    "near ",
    "by ",
    "beneath ",
    "among ",
    "across ",
    "along ",
    "above ",
    "over ",
    "within ",
    "outside ",
    "during ",
    "underwater",
    "next to ",
    "beside ",
    "behind ",
    "below ",
    "beyond ",
    "around ",
    "through ",
    "against ",
    "between ",
    "amid ",
    "amidst ",
    "atop ",
    "upon ",
    "onto ",
    "into ",
    "off ",
    "underneath ",
    "outdoors",
    "indoors",
)


@dataclass(frozen=True)
class Subject:
    """Something that can appear in a prompt: a concept (token + class) or a plain object."""

    name: str  # the scene-file name
    words: str  # what the prompt says for it: "<GOSLING> man", "a vase"
    attributes: tuple[tuple[str, str], ...] = ()  # (verb key of ATTRIBUTE_VERBS, text)
    is_object: bool = False  # a declared object: listed, never part of the group activity


@dataclass(frozen=True)
class Clause:
    """An interaction (verb + targets) or a placement (relation + one target)."""

    subject: str
    verb: str  # interaction words ("waves at") or a RELATION_WORDS key ("left-of")
    targets: tuple[str, ...]
    is_placement: bool = False


@dataclass(frozen=True)
class SceneText:
    subjects: tuple[Subject, ...]  # in order of first appearance
    clauses: tuple[Clause, ...] = ()  # interactions and placements in source order
    activity: str | None = None  # group activity: "working in a bustling kitchen"
    setting: str | None = None
    lighting: str | None = None
    style: str | None = None
    prefix: str | None = None  # e.g. "a photo of"
    extra: tuple[str, ...] = field(default_factory=tuple)  # free prompt fragments


def describe(subject: Subject) -> str:
    """``<TAYLOR> woman wearing a crown and holding a rose``."""
    parts = []
    for verb, text in subject.attributes:
        lead = ATTRIBUTE_VERBS.get(verb, verb)
        parts.append(f"{lead} {text}".strip() if lead else text)
    return " ".join([subject.words, " and ".join(parts)]) if parts else subject.words


def join_names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def place_setting(text: str) -> str:
    """A setting reads as a location: ``in`` is added unless it starts with a preposition."""
    return text if text.lower().startswith(PREPOSITIONS) else f"in {text}"


def style_words(text: str) -> str:
    return text if text.lower().endswith("style") else f"{text} style"


def scene_prompt(scene: SceneText) -> str:
    """Compose the prompt for one scene (rules in the module docstring)."""
    by_name = {s.name: s for s in scene.subjects}
    described: set[str] = set()

    def mention(name: str) -> str:
        subject = by_name.get(name)
        if subject is None:
            return name
        if name in described:
            return subject.words
        described.add(name)
        return describe(subject)

    clauses: list[str] = []
    for clause in scene.clauses:
        head = mention(clause.subject)
        verb = RELATION_WORDS[clause.verb] if clause.is_placement else clause.verb
        targets = join_names([mention(t) for t in clause.targets])
        clauses.append(f"{head} {verb} {targets}".strip())
    unmentioned = [s for s in scene.subjects if s.name not in described]
    # the group activity is what the concepts do; objects are listed after it, on their own
    things = [describe(s) for s in unmentioned if s.is_object] if scene.activity else []
    rest = [describe(s) for s in unmentioned if not (scene.activity and s.is_object)]
    if rest:
        listed = join_names(rest)
        if scene.activity and len(rest) > 1 and any(s.attributes for s in scene.subjects):
            # "A holding x and B, all preparing a dish": the activity belongs to everyone
            clauses.append(f"{listed}, {'both' if len(rest) == 2 else 'all'} {scene.activity}")
        else:
            clauses.append(f"{listed} {scene.activity}" if scene.activity else listed)
    elif scene.activity:
        clauses.append(f"together {scene.activity}")
    if things:
        clauses.append(join_names(things))
    if scene.prefix and clauses:
        clauses[0] = f"{scene.prefix} {clauses[0]}"
    clauses.extend(scene.extra)
    if scene.setting:
        clauses.append(place_setting(scene.setting))
    if scene.lighting:
        clauses.append(scene.lighting)
    if scene.style:
        clauses.append(style_words(scene.style))
    return ", ".join(c for c in clauses if c)


def alone(scene: SceneText, name: str) -> SceneText:
    """The region text of subject ``name``: that subject in the scene's setting and style."""
    subject = next(s for s in scene.subjects if s.name == name)
    return replace(scene, subjects=(subject,), clauses=(), activity=None, extra=())


def region_prompt(scene: SceneText, plain: dict[str, str], name: str) -> str:
    """The region prompt of subject ``name`` (`regions on`): the subject first, with its
    attributes, as its LoRA was trained to read it (``<KIKI> triangle wearing a hat``), then
    the global prompt (the scene with every subject in ``plain`` by its class words), which
    ties it to the rest: ``<KIKI> triangle, square left of triangle, on grass``."""
    subject = next(s for s in scene.subjects if s.name == name)
    head = describe(subject)
    if scene.prefix:
        head = f"{scene.prefix} {head}"
    rest = scene_prompt(replace(anonymous(scene, plain), prefix=None))
    return f"{head}, {rest}" if rest else head


def anonymous(scene: SceneText, plain: dict[str, str]) -> SceneText:
    """The global text: subjects named in ``plain`` (name -> class words) lose their identity
    and their attributes; everything else stays."""
    subjects = tuple(
        Subject(s.name, plain[s.name]) if s.name in plain else s for s in scene.subjects
    )
    return replace(scene, subjects=subjects)
