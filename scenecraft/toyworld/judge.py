"""An exact judge for toy-world images: find every sprite, recognise it, check where it is.

The world is procedural, so judging is segmentation plus recognition by parts, with no fixed
slots (world 2 draws sprites anywhere, at several sizes). How a picture is read — every pixel
named against its row's backdrop and the world's palette, sprites cut out (hats never body,
crowns trimmed, touching sprites split by colour or shape), each recognised by shape, colour
and pattern separately, what it wears read above it — is `scenecraft.toyworld.reading`; its
agreement with pictures of the model's own output labelled by eye is
`scenecraft.toyworld.agreement` (docs/toyworld.md). Then expected sprites are assigned to found
sprites one to one by minimum total distance to their own reference (exhaustive; scenes hold at
most four sprites), never by position, so a swap shows up as wrong placements, a duplicate as a
wrong identity, an extra sprite as lower accuracy.

Per concept (``Scores.concepts``, all in [0, 1]):
- accuracy: found with its class (shape), times #expected / max(#expected, #found) — so a
  missing or an extra sprite lowers it;
- identity: found as exactly its identity (shape, colour and pattern);
- placement: when the expected sprite carries a ``box`` (normalised x0, y0, x1, y1, as a render
  job's regions give it), whether its body centre lies inside that box; otherwise the share of
  the requested placements it takes part in that hold between body boxes
  (`scenecraft.toyworld.world.relation_holds`); None when neither applies;
- attribute: whether it wears exactly what was asked (a crown, a hat or nothing); None when the
  scene asks no attribute of anyone.
Scene scores average them (accuracy also over extra sprites; placement and attribute are 1.0
when nothing was asked); similarity is the mean of 1 - d over expected sprites (0 when missing).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from scenecraft.plan import Placement
from scenecraft.prompts import Clause, SceneText, Subject, scene_prompt
from scenecraft.toyworld.reading import (
    MIN_AREA,
    Found,
    Identity,
    find_sprites,
    pixel_classes,
    recognise,
    worn_attribute,
)
from scenecraft.toyworld.world import CONCEPTS, SIZE, Scene, Sprite, relation_holds

__all__ = [
    "MIN_AREA",
    "ConceptScore",
    "ExpectedScene",
    "ExpectedSprite",
    "Found",
    "Identity",
    "Scores",
    "assign",
    "expected_prompt",
    "expected_scene",
    "find_sprites",
    "ground_truth",
    "judge",
    "pixel_classes",
    "recognise",
    "worn_attribute",
]

MAX_FOUND = 8  # largest components considered for the assignment

NormBox = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the canvas


@dataclass(frozen=True)
class ExpectedSprite:
    name: str  # concept or object name as the scene names it
    sprite: Sprite  # its identity (shape, colour, pattern); attribute is what it wears
    box: NormBox | None = None  # where it must be (a region), normalised; None: anywhere

    @property
    def identity(self) -> Identity:
        return (self.sprite.shape, self.sprite.colour, self.sprite.pattern)


@dataclass(frozen=True)
class ExpectedScene:
    """What an image should show: named sprites (optionally boxed) and placements."""

    sprites: tuple[ExpectedSprite, ...]
    placements: tuple[Placement, ...] = ()
    setting: str | None = None  # a world SETTINGS key, for prompts and ground-truth renders


@dataclass(frozen=True)
class ConceptScore:
    """How one expected sprite came out."""

    name: str
    accuracy: float
    identity: float
    placement: float | None  # None: no box and no placement asked of it
    attribute: float | None  # None: the scene asks no attribute
    found: int | None  # index into Scores.found, None when missing


@dataclass(frozen=True)
class Scores:
    accuracy: float
    identity: float
    placement: float
    similarity: float
    found: tuple[Found, ...] = field(repr=False)  # sprites found, by centre (left to right)
    assignment: dict[str, int] = field(default_factory=dict)  # expected name -> index in found
    concepts: tuple[ConceptScore, ...] = ()  # per expected sprite, in the scene's order
    attribute: float = 1.0  # mean of the per-concept attribute scores (1.0 when none asked)


def expected_scene(
    concepts: Sequence[str | tuple[str, Sprite]],
    placements: Sequence[Placement | tuple[str, str, str]] = (),
    attributes: Mapping[str, str] | None = None,
    setting: str | None = None,
    boxes: Mapping[str, NormBox] | None = None,
) -> ExpectedScene:
    """Build an ExpectedScene: concept names (keys of CONCEPTS) or (name, Sprite) objects,
    placements as plan.Placement or (subject, relation, target), attributes name -> "a crown",
    boxes name -> (x0, y0, x1, y1) fractions of the canvas (a render job's regions)."""
    attributes = attributes or {}
    boxes = boxes or {}
    sprites = []
    for item in concepts:
        name, sprite = (item, CONCEPTS[item].sprite) if isinstance(item, str) else item
        sprite = Sprite(sprite.shape, sprite.colour, sprite.pattern, attributes.get(name))
        box = boxes.get(name)
        sprites.append(ExpectedSprite(name, sprite, tuple(box) if box else None))  # type: ignore[arg-type]
    places = tuple(
        p if isinstance(p, Placement) else Placement(subject=p[0], relation=p[1], target=p[2])  # type: ignore[arg-type]
        for p in placements
    )
    return ExpectedScene(tuple(sprites), places, setting)


def expected_prompt(expected: ExpectedScene) -> str:
    """The prompt for an expected scene in the compiler's English (concepts by their token)."""
    subjects = []
    for s in expected.sprites:
        concept = CONCEPTS.get(s.name)
        words = f"{concept.token} {concept.class_noun}" if concept else Sprite(*s.identity).words
        attrs = (("wears", s.sprite.attribute),) if s.sprite.attribute else ()
        subjects.append(Subject(s.name, words, attrs))
    clauses = tuple(Clause(p.subject, p.relation, (p.target,), True) for p in expected.placements)
    return scene_prompt(SceneText(tuple(subjects), clauses, setting=expected.setting))


def ground_truth(expected: ExpectedScene) -> Scene:
    """The world scene an ExpectedScene describes (render it with any seed)."""
    index = {s.name: i for i, s in enumerate(expected.sprites)}
    placements = tuple((index[p.subject], p.relation, index[p.target]) for p in expected.placements)
    return Scene(tuple(s.sprite for s in expected.sprites), placements, expected.setting)


def assign(expected: ExpectedScene, found: list[Found]) -> dict[str, int]:
    """Expected name -> found index, one to one, minimising the summed distance to own
    references (positions play no part)."""
    names = [s.name for s in expected.sprites]
    ids = [s.identity for s in expected.sprites]
    pool = sorted(range(len(found)), key=lambda j: -found[j].area)[:MAX_FOUND]
    k = min(len(names), len(pool))
    best: tuple[float, dict[str, int]] = (float("inf"), {})
    for subset in itertools.combinations(range(len(names)), k):
        for chosen in itertools.permutations(pool, k):
            cost = sum(found[j].distances[ids[i]] for i, j in zip(subset, chosen, strict=True))
            if cost < best[0]:
                best = (cost, {names[i]: j for i, j in zip(subset, chosen, strict=True)})
    return best[1]


def holds(relation: str, a: Found, b: Found) -> bool | None:
    """Whether ``a relation b`` holds between body boxes; None when not judged in 2-D."""
    return relation_holds(relation, a.box, b.box)


def inside(found: Found, box: NormBox) -> bool:
    """Whether a found sprite's body centre lies in a normalised box."""
    cx, cy = found.centre
    x0, y0, x1, y1 = box
    return x0 * SIZE <= cx <= x1 * SIZE and y0 * SIZE <= cy <= y1 * SIZE


def judge(image: Image.Image, expected: ExpectedScene) -> Scores:
    """Score an image against what it should show (module docstring has the definitions)."""
    found = find_sprites(image)
    match = assign(expected, found)
    n = len(expected.sprites)
    crowd = n / max(n, len(found), 1)
    verdicts: dict[str, list[bool]] = {s.name: [] for s in expected.sprites}
    for p in expected.placements:
        if p.subject in match and p.target in match:
            v = holds(p.relation, found[match[p.subject]], found[match[p.target]])
        else:
            v = None if relation_holds(p.relation, (0, 0, 1, 1), (0, 0, 1, 1)) is None else False
        if v is not None:
            for name in (p.subject, p.target):
                if name in verdicts:
                    verdicts[name].append(v)
    asks_attribute = any(s.sprite.attribute for s in expected.sprites)
    per: list[ConceptScore] = []
    sims = []
    for s in expected.sprites:
        j = match.get(s.name)
        f = found[j] if j is not None else None
        placement: float | None
        if s.box is not None:
            placement = float(f is not None and inside(f, s.box))
        elif verdicts[s.name]:
            placement = sum(verdicts[s.name]) / len(verdicts[s.name])
        else:
            placement = None
        attribute = (
            float(f is not None and f.attribute == s.sprite.attribute) if asks_attribute else None
        )
        per.append(
            ConceptScore(
                name=s.name,
                accuracy=crowd * float(f is not None and f.identity[0] == s.sprite.shape),
                identity=float(f is not None and f.identity == s.identity),
                placement=placement,
                attribute=attribute,
                found=j,
            )
        )
        sims.append(1.0 - f.distances[s.identity] if f is not None else 0.0)
    placed = [c.placement for c in per if c.placement is not None]
    worn = [c.attribute for c in per if c.attribute is not None]
    return Scores(
        accuracy=sum(c.accuracy for c in per) / max(n, 1) if n else 0.0,
        identity=sum(c.identity for c in per) / max(n, 1),
        placement=sum(placed) / len(placed) if placed else 1.0,
        similarity=float(np.mean(sims)) if sims else 0.0,
        found=tuple(found),
        assignment=match,
        concepts=tuple(per),
        attribute=sum(worn) / len(worn) if worn else 1.0,
    )
