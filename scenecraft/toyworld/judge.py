"""An exact judge for toy-world images: find every sprite, recognise it, check where it is.

The world is procedural, so judging is segmentation plus nearest-reference matching, with no
fixed slots (world 2 draws sprites anywhere, at several sizes):

1. background: per row, the median colour of the 3 leftmost and 3 rightmost columns (backdrops
   are horizontal bands and sprites never touch the side borders);
2. foreground: pixels farther than ``FG_DISTANCE`` (RGB, 0-255) from their row's background,
   holes filled; sprites are its 4-connected components of at least ``MIN_AREA`` body pixels;
3. body and attribute: pixels nearer a hat's or crown's colour than any body colour are the
   attribute, the rest the body; the attribute a sprite wears is read in the rows just above its
   body (pixels nearer the attribute's colour than the row's backdrop, so a dark hat counts on a
   dark sky too);
4. identity: the masked body crop is compared with the reference rendering of every identity of
   the world (shape x colour x pattern) at the sizes whose mask box matches the body box best:
   d = mean |crop - ref| / 255, the crop resized to the reference's box; nearest = what it *is*;
5. expected sprites are assigned to found sprites one to one by minimum total distance to their
   own reference (exhaustive; scenes hold at most four sprites), never by position, so a swap
   shows up as wrong placements, a duplicate as a wrong identity, an extra sprite as lower
   accuracy.

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
from functools import cache

import numpy as np
from PIL import Image

from scenecraft.plan import Placement
from scenecraft.prompts import Clause, SceneText, Subject, scene_prompt
from scenecraft.toyworld.world import (
    ATTRIBUTES,
    COLOURS,
    CONCEPTS,
    INK,
    PATTERNS,
    SHAPES,
    SIZE,
    Scene,
    Sprite,
    relation_holds,
    shape_mask,
    sprite_pixels,
)

FG_DISTANCE = 60.0  # RGB distance from the row background that counts as foreground
MIN_AREA = 60  # smallest body kept as a sprite, pixels (a 20-px star is ~150)
ATTRIBUTE_DISTANCE = 50.0  # RGB distance within which a pixel takes an attribute's colour
ATTRIBUTE_PIXELS = 12  # attribute-coloured pixels above a body that make it wear something
MAX_FOUND = 8  # largest components considered for the assignment
REF_SIZES = range(10, 45)  # sprite sides the references are rendered at

Identity = tuple[str, str, str]  # (shape, colour, pattern)
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
class Found:
    """One sprite found in an image."""

    box: tuple[int, int, int, int]  # body box (x0, y0, x1, y1), exclusive ends
    area: int  # body pixels
    identity: Identity  # nearest reference
    distances: dict[Identity, float] = field(repr=False)  # d to every reference
    attribute: str | None = None  # what it wears: an ATTRIBUTES key or None

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


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


# --- references -----------------------------------------------------------------------------------


@cache
def _reference(identity: Identity, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Masked reference body of an identity at a sprite side: the crop of its mask's box,
    float (h, w, 3) in [0, 255], and that box's (w, h)."""
    rgb, mask = sprite_pixels(Sprite(*identity), size)
    ys, xs = np.nonzero(mask)
    crop = (rgb.astype(np.float64) * mask[..., None])[
        ys.min() : ys.max() + 1, xs.min() : xs.max() + 1
    ]
    return crop, (crop.shape[1], crop.shape[0])


@cache
def _box_dims(shape: str, size: int) -> tuple[int, int]:
    ys, xs = np.nonzero(shape_mask(shape, size))
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def _sizes_for(shape: str, w: int, h: int) -> list[int]:
    """Sprite sides whose mask box best matches a (w, h) body box (within a pixel of the best)."""
    errors = {
        s: abs(_box_dims(shape, s)[0] - w) + abs(_box_dims(shape, s)[1] - h) for s in REF_SIZES
    }
    best = min(errors.values())
    return [s for s, e in errors.items() if e <= best + 1]


def references() -> dict[Identity, np.ndarray]:
    """Every identity's reference body at the world's middle size (for inspection)."""
    return {k: _reference(k, 24)[0] for k in itertools.product(SHAPES, COLOURS, PATTERNS)}


# --- finding sprites ------------------------------------------------------------------------------


def row_background(img: np.ndarray) -> np.ndarray:
    """(H, 3): per row, the median colour of the side columns."""
    sides = np.concatenate([img[:, :3], img[:, -3:]], axis=1)  # (H, 6, 3)
    return np.asarray(np.median(sides, axis=1))


def foreground(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: far from the row background, holes filled."""
    bg = row_background(img)
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


_BODY_COLOURS = np.array([*COLOURS.values(), INK], dtype=np.float64)  # (5, 3)
_ATTR_COLOURS = np.array(list(ATTRIBUTES.values()), dtype=np.float64)  # (2, 3)


def _attribute_pixels(pixels_rgb: np.ndarray) -> np.ndarray:
    """(N,) bool: pixels nearer an attribute colour than any body colour, and near it."""
    d_body = np.linalg.norm(pixels_rgb[:, None] - _BODY_COLOURS[None], axis=-1).min(axis=1)
    d_attr = np.linalg.norm(pixels_rgb[:, None] - _ATTR_COLOURS[None], axis=-1).min(axis=1)
    return np.asarray((d_attr < d_body) & (d_attr < ATTRIBUTE_DISTANCE))


def worn_attribute(img: np.ndarray, box: tuple[int, int, int, int]) -> str | None:
    """What the sprite with this body box wears: attribute-coloured pixels (nearer the
    attribute's colour than the row backdrop) in the 8 rows above the body, centred on it."""
    x0, y0, x1, _ = box
    cx = (x0 + x1) // 2
    top, left, right = max(0, y0 - 8), max(0, cx - 8), min(img.shape[1], cx + 8)
    if top >= y0:
        return None
    patch = img[top:y0, left:right]  # (h, w, 3)
    bg = row_background(img)[top:y0][:, None, :]
    counts = {}
    for name, colour in ATTRIBUTES.items():
        c = np.array(colour, dtype=np.float64)
        d = np.linalg.norm(patch - c, axis=-1)
        near = (d < ATTRIBUTE_DISTANCE) & (d < np.linalg.norm(patch - bg, axis=-1))
        counts[name] = int(near.sum())
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] >= ATTRIBUTE_PIXELS else None


def describe_component(img: np.ndarray, pixels: np.ndarray) -> Found | None:
    """Split a component into body and attribute, recognise the body; None if no body."""
    attr = _attribute_pixels(img[pixels[:, 0], pixels[:, 1]])
    body = pixels[~attr]
    if len(body) < MIN_AREA:
        return None
    y0, x0 = body.min(axis=0)
    y1, x1 = body.max(axis=0) + 1
    # attribute-coloured pixels inside the body box belong to the body (e.g. orange-ish yellow)
    inside = (pixels[:, 0] >= y0) & (pixels[:, 0] < y1) & (pixels[:, 1] >= x0) & (pixels[:, 1] < x1)
    body = pixels[inside]
    box = (int(x0), int(y0), int(x1), int(y1))
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[body[:, 0], body[:, 1]] = True
    crop = (img * mask[..., None])[y0:y1, x0:x1]  # (h, w, 3)
    w, h = int(x1 - x0), int(y1 - y0)
    distances: dict[Identity, float] = {}
    for shape in SHAPES:
        resized: dict[tuple[int, int], np.ndarray] = {}
        for size in _sizes_for(shape, w, h):
            dims = _box_dims(shape, size)
            if dims not in resized:
                resized[dims] = np.asarray(
                    Image.fromarray(crop.astype(np.uint8)).resize(dims, Image.Resampling.NEAREST),
                    dtype=np.float64,
                )
            for colour in COLOURS:
                for pattern in PATTERNS:
                    key = (shape, colour, pattern)
                    ref, _ = _reference(key, size)
                    d = float(np.abs(resized[dims] - ref).mean() / 255.0)
                    distances[key] = min(d, distances.get(key, d))
    best = min(distances, key=lambda k: distances[k])
    return Found(box, len(body), best, distances, worn_attribute(img, box))


def find_sprites(image: Image.Image) -> list[Found]:
    """Every sprite in an image, left to right (image resized to SIZE x SIZE if needed)."""
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    img = np.asarray(image.convert("RGB"), dtype=np.float64)  # (64, 64, 3)
    comps = [c for c in components(foreground(img)) if len(c) >= MIN_AREA]
    found = [f for c in comps if (f := describe_component(img, c)) is not None]
    return sorted(found, key=lambda f: f.centre)


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
