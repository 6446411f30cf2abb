"""An exact judge for toy-world images: find the sprites, recognise them, check placements.

The world is procedural, so judging is segmentation plus nearest-reference matching:

1. background: per row, the median colour of the 3 leftmost and 3 rightmost columns (backdrops
   are horizontal bands and sprites never touch the side borders);
2. foreground: pixels farther than ``FG_DISTANCE`` (RGB, 0-255) from their row's background,
   holes filled; sprites are its 4-connected components of at least ``MIN_AREA`` pixels;
3. body: a component taller than a sprite wears something; its body is the bottom ``SPRITE``
   rows. The body crop is resized to SPRITE x SPRITE and compared with the reference rendering
   of every identity of the world (shape x colour x pattern): d = mean |crop - ref| / 255 with
   pixels outside each mask set to 0; the nearest reference is what the sprite *is*;
4. expected sprites are assigned to components by minimum total distance to their own
   reference (exhaustive over permutations; scenes hold a handful of sprites).

Scores (all in [0, 1]):
- accuracy: expected sprites assigned to a component recognised as their class (shape),
  divided by max(#expected, #components) — a missing or an extra sprite lowers it;
- identity: expected sprites whose component is recognised as exactly their identity
  (shape, colour and pattern), divided by #expected;
- placement: requested placements that hold between the assigned components' body centres
  (relations without a 2-D reading, e.g. "behind", are not scored; none requested = 1.0);
- similarity: mean of 1 - d over assigned expected sprites (a soft identity, 0 when missing).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image

from scenecraft.plan import Placement
from scenecraft.prompts import Clause, SceneText, Subject, scene_prompt
from scenecraft.toyworld.world import (
    COLOURS,
    CONCEPTS,
    PATTERNS,
    SHAPES,
    SIZE,
    SPRITE,
    Scene,
    Sprite,
    sprite_pixels,
)

FG_DISTANCE = 60.0  # RGB distance from the row background that counts as foreground
MIN_AREA = 60  # smallest component kept as a sprite, pixels (a sprite body is >= ~200)
NEAR = 6  # pixels of centre offset that make "left of" / "above" hold

Identity = tuple[str, str, str]  # (shape, colour, pattern)


@dataclass(frozen=True)
class ExpectedSprite:
    name: str  # concept or object name as the scene names it
    sprite: Sprite  # its identity (shape, colour, pattern); attribute is what it wears

    @property
    def identity(self) -> Identity:
        return (self.sprite.shape, self.sprite.colour, self.sprite.pattern)


@dataclass(frozen=True)
class ExpectedScene:
    """What an image should show: named sprites and placements between them."""

    sprites: tuple[ExpectedSprite, ...]
    placements: tuple[Placement, ...] = ()
    setting: str | None = None  # a world SETTINGS key, for prompts and ground-truth renders


@dataclass(frozen=True)
class Found:
    """One foreground component."""

    box: tuple[int, int, int, int]  # body box (x0, y0, x1, y1), exclusive ends
    area: int  # component pixels
    identity: Identity  # nearest reference
    distances: dict[Identity, float] = field(repr=False)  # d to every reference

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scores:
    accuracy: float
    identity: float
    placement: float
    similarity: float
    found: tuple[Found, ...] = field(repr=False)  # components, left to right
    assignment: dict[str, int] = field(default_factory=dict)  # expected name -> index in found


def expected_scene(
    concepts: Sequence[str | tuple[str, Sprite]],
    placements: Sequence[Placement | tuple[str, str, str]] = (),
    attributes: Mapping[str, str] | None = None,
    setting: str | None = None,
) -> ExpectedScene:
    """Build an ExpectedScene: concept names (keys of CONCEPTS) or (name, Sprite) objects,
    placements as plan.Placement or (subject, relation, target), attributes name -> "a crown"."""
    attributes = attributes or {}
    sprites = []
    for item in concepts:
        name, sprite = (item, CONCEPTS[item].sprite) if isinstance(item, str) else item
        sprite = Sprite(sprite.shape, sprite.colour, sprite.pattern, attributes.get(name))
        sprites.append(ExpectedSprite(name, sprite))
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
    """The world scene an ExpectedScene describes (one or two sprites, at most one placement)."""
    by_name = {s.name: s.sprite for s in expected.sprites}
    if expected.placements:
        p = expected.placements[0]
        return Scene((by_name[p.subject], by_name[p.target]), p.relation, expected.setting)
    return Scene(tuple(by_name.values()), None, expected.setting)


@cache
def references() -> dict[Identity, np.ndarray]:
    """Masked reference body of every identity: its mask's box resized to (SPRITE, SPRITE, 3),
    float in [0, 255] — the same normalisation `describe_component` applies to found sprites."""
    refs = {}
    for key in itertools.product(SHAPES, COLOURS, PATTERNS):
        rgb, mask = sprite_pixels(Sprite(*key))
        refs[key] = normalised_crop(rgb.astype(np.float64), mask, *box_of(np.argwhere(mask)))
    return refs


def box_of(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """Body box (x0, y0, x1, y1) of (y, x) pixels: a component taller than a sprite wears
    something on top, so its body is the bottom SPRITE rows."""
    ys, xs = pixels[:, 0], pixels[:, 1]
    x0, x1, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.max()) + 1
    y0 = max(int(ys.min()), y1 - SPRITE) if y1 - int(ys.min()) > SPRITE + 2 else int(ys.min())
    return x0, y0, x1, y1


def normalised_crop(
    img: np.ndarray, mask: np.ndarray, x0: int, y0: int, x1: int, y1: int
) -> np.ndarray:
    """Masked crop of a box, resized (nearest) to (SPRITE, SPRITE, 3)."""
    crop = (img * mask[..., None])[y0:y1, x0:x1]
    resized = Image.fromarray(crop.astype(np.uint8)).resize(
        (SPRITE, SPRITE), Image.Resampling.NEAREST
    )
    return np.asarray(resized, dtype=np.float64)


def foreground(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: far from the row background (median of the side columns), holes filled."""
    sides = np.concatenate([img[:, :3], img[:, -3:]], axis=1)  # (H, 6, 3)
    bg = np.median(sides, axis=1)  # (H, 3)
    fg = np.linalg.norm(img - bg[:, None, :], axis=-1) > FG_DISTANCE
    return fill_holes(fg)


def fill_holes(fg: np.ndarray) -> np.ndarray:
    """Background = non-foreground reachable from the border; everything else is foreground."""
    outside = np.zeros_like(fg)
    outside[0, :], outside[-1, :], outside[:, 0], outside[:, -1] = (
        ~fg[0],
        ~fg[-1],
        ~fg[:, 0],
        ~fg[:, -1],
    )
    while True:
        p = np.pad(outside, 1)
        grown = (p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]) & ~fg
        if (grown == outside).all():
            return ~outside
        outside = grown


def components(fg: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a mask, as (N, 2) arrays of (y, x), largest first."""
    seen = np.zeros_like(fg)
    out = []
    h, w = fg.shape
    for y0, x0 in zip(*np.nonzero(fg), strict=True):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and fg[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out.append(np.array(pixels))
    return sorted(out, key=len, reverse=True)


def describe_component(img: np.ndarray, pixels: np.ndarray) -> Found:
    """Body box, resized masked crop and its distance to every reference."""
    box = box_of(pixels)
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[pixels[:, 0], pixels[:, 1]] = True
    crop = normalised_crop(img, mask, *box)
    distances = {k: float(np.abs(crop - ref).mean() / 255.0) for k, ref in references().items()}
    best = min(distances, key=lambda k: distances[k])
    return Found(box, len(pixels), best, distances)


def find_sprites(image: Image.Image) -> list[Found]:
    """Every sprite in an image, left to right (image resized to SIZE x SIZE if needed)."""
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    img = np.asarray(image.convert("RGB"), dtype=np.float64)  # (64, 64, 3)
    comps = [c for c in components(foreground(img)) if len(c) >= MIN_AREA]
    found = [describe_component(img, c) for c in comps]
    return sorted(found, key=lambda f: f.centre)


def assign(expected: ExpectedScene, found: list[Found]) -> dict[str, int]:
    """Expected name -> component index, minimising the summed distance to own references."""
    names = [s.name for s in expected.sprites]
    ids = [s.identity for s in expected.sprites]
    k = min(len(names), len(found))
    best: tuple[float, dict[str, int]] = (float("inf"), {})
    for chosen in itertools.permutations(range(len(found)), k):
        for subset in itertools.combinations(range(len(names)), k):
            cost = sum(found[j].distances[ids[i]] for i, j in zip(subset, chosen, strict=True))
            if cost < best[0]:
                best = (cost, {names[i]: j for i, j in zip(subset, chosen, strict=True)})
    return best[1]


def holds(relation: str, a: Found, b: Found) -> bool | None:
    """Whether ``a relation b`` holds between body centres; None when not judged in 2-D."""
    (ax, ay), (bx, by) = a.centre, b.centre
    if relation == "left-of":
        return ax < bx - NEAR
    if relation == "right-of":
        return ax > bx + NEAR
    if relation in ("on-top-of", "above"):
        return ay < by - NEAR and abs(ax - bx) < SPRITE / 2
    if relation == "below":
        return ay > by + NEAR and abs(ax - bx) < SPRITE / 2
    if relation == "beside":
        return abs(ax - bx) > SPRITE / 2 and abs(ay - by) < SPRITE / 2
    return None


def judge(image: Image.Image, expected: ExpectedScene) -> Scores:
    """Score an image against what it should show (module docstring has the definitions)."""
    found = find_sprites(image)
    match = assign(expected, found)
    n = len(expected.sprites)
    classes = sum(
        found[match[s.name]].identity[0] == s.sprite.shape
        for s in expected.sprites
        if s.name in match
    )
    exact = sum(
        found[match[s.name]].identity == s.identity for s in expected.sprites if s.name in match
    )
    sims = [
        1.0 - found[match[s.name]].distances[s.identity] if s.name in match else 0.0
        for s in expected.sprites
    ]
    verdicts = []
    for p in expected.placements:
        if p.subject in match and p.target in match:
            verdicts.append(holds(p.relation, found[match[p.subject]], found[match[p.target]]))
        elif holds(p.relation, found[0], found[0]) is not None if found else True:
            verdicts.append(False)
    judged = [v for v in verdicts if v is not None]
    return Scores(
        accuracy=classes / max(n, len(found), 1),
        identity=exact / max(n, 1),
        placement=sum(judged) / len(judged) if judged else 1.0,
        similarity=float(np.mean(sims)) if sims else 0.0,
        found=tuple(found),
        assignment=match,
    )
