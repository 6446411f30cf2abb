"""The toy world: a procedural 64x64 renderer of sprite scenes and their captions.

World 2 (``version=2``): a scene holds one to four sprites (shape,
colour, pattern, optional hat or crown) in a setting, and placements between disjoint pairs of
them (``A left of B``, ``C on top of D``). Where the sprites go is *drawn*, not looked up: the
seed picks each sprite's size (20, 24 or 28 px; 20 or 24 with three or more sprites) and
position, on the 4-pixel latent grid, such that every placement holds, no two sprites (hats
included) come within 4 pixels of each other and the side borders stay clear (the judge reads
the backdrop there). Same prompt, different seed: different boxes.

World 2 is the world the shipped weights were trained on (``VERSION``). World 1
(``version=1``): one or two 24-px sprites on fixed slots, the first wave's world, kept for
reproducing its figures (docs/toyworld.md).

Every caption is written by `scenecraft.prompts.scene_prompt`, the compiler's own English, e.g.
``red striped star left of <BLIP> square, yellow circle and pink square, on grass``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from scenecraft.prompts import Clause, SceneText, Subject, anonymous, region_prompt, scene_prompt

VERSION = 2  # the world the shipped weights were trained on (1: fixed slots; 2: drawn layouts)
SIZE = 64  # image side, pixels
SPRITE = 24  # world 1's sprite side, pixels; world 2's middle size
SIZES = (20, 24, 28)  # world 2 sprite sides, pixels (multiples of the 4-pixel latent cell)
CROWDED_SIZES = (20, 24)  # sizes when a scene holds three or four sprites
GRID = 4  # sprite boxes start on this pixel grid (the VAE's latent cell)
MARGIN = 4  # clear columns at the left and right borders (the judge reads the backdrop there)
GAP = 4  # minimum clear pixels between two sprites (their hats included)
HAT = 8  # rows an attribute needs above its wearer
STACK_GAP = 4  # rows between a sprite and the one it stands on ("on top of")
MAX_SPRITES = 4
INK = (245, 245, 245)  # pattern colour (stripes, spots)

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (250, 210, 40),
    "purple": (140, 60, 200),
    "pink": (250, 130, 200),
}
PATTERNS = ("plain", "striped", "spotted")
ATTRIBUTES: dict[str, tuple[int, int, int]] = {
    "a crown": (255, 170, 0),
    "a hat": (30, 30, 30),
}
RELATIONS = ("left-of", "right-of", "on-top-of", "beside")

# setting prompt text -> list of (first row, colour) bands, top to bottom
SETTINGS: dict[str, list[tuple[int, tuple[int, int, int]]]] = {
    "on grass": [(0, (160, 210, 245)), (40, (70, 160, 60))],
    "at sea": [(0, (200, 225, 245)), (30, (30, 90, 170))],
    "under a night sky": [(0, (15, 20, 60))],
    "in the desert": [(0, (250, 235, 200)), (36, (215, 175, 110))],
    "on a shelf": [(0, (120, 80, 50)), (24, (80, 50, 30)), (28, (120, 80, 50)), (50, (80, 50, 30))],
}
PLAIN_BACKGROUND: list[tuple[int, tuple[int, int, int]]] = [(0, (200, 200, 200))]

# world 1: sprite centres (x, y) per slot
SLOTS: dict[str, tuple[int, int]] = {
    "centre": (32, 40),
    "left": (16, 40),
    "right": (48, 40),
    "bottom": (32, 48),
    "top": (32, 20),
}

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, exclusive ends
Placement = tuple[int, str, int]  # (subject index, RELATIONS entry, target index)


@dataclass(frozen=True)
class Sprite:
    """One sprite; ``token`` set means the caption names it as ``<TOKEN> shape``."""

    shape: str  # one of SHAPES
    colour: str  # a COLOURS key
    pattern: str = "plain"  # one of PATTERNS
    attribute: str | None = None  # an ATTRIBUTES key, worn on top
    token: str | None = None  # concept trigger token, e.g. "<ZIGGY>"

    @property
    def words(self) -> str:
        """What the prompt calls it: ``<ZIGGY> circle`` or ``red striped star``."""
        if self.token:
            return f"{self.token} {self.shape}"
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return f"{self.colour} {pattern}{self.shape}"

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.pattern)


@dataclass(frozen=True)
class Scene:
    """Up to four sprites, placements between disjoint pairs of them, a setting."""

    sprites: tuple[Sprite, ...]
    placements: tuple[Placement, ...] = ()  # (i, relation, j): sprites[i] relation sprites[j]
    setting: str | None = None  # a SETTINGS key, or None (plain grey)


def pair(a: Sprite, relation: str, b: Sprite, setting: str | None = None) -> Scene:
    """``a relation b`` as a two-sprite scene."""
    return Scene((a, b), ((0, relation, 1),), setting)


def scene_text(scene: Scene) -> SceneText:
    """The compiler-side description of a scene (subjects named s0, s1, ...)."""
    subjects = tuple(
        Subject(f"s{i}", s.words, (("wears", s.attribute),) if s.attribute else ())
        for i, s in enumerate(scene.sprites)
    )
    clauses = tuple(
        Clause(f"s{i}", relation, (f"s{j}",), is_placement=True)
        for i, relation, j in scene.placements
    )
    return SceneText(subjects=subjects, clauses=clauses, setting=scene.setting)


def caption(scene: Scene) -> str:
    """The scene's caption in the compiler's English (`scene_prompt`)."""
    return scene_prompt(scene_text(scene))


def region_prompts(scene: Scene) -> tuple[str, list[str]]:
    """What the compiler writes for the scene with `regions on`: the global prompt (every
    sprite by its shape) and, per sprite, its region prompt (that sprite described, then the
    global prompt)."""
    text = scene_text(scene)
    plain = {f"s{i}": s.shape for i, s in enumerate(scene.sprites)}
    regions = [region_prompt(text, plain, f"s{i}") for i in range(len(scene.sprites))]
    return scene_prompt(anonymous(text, plain)), regions


# --- geometry: shared by the layout sampler and the judge ----------------------------------------

NEAR = 6  # pixels of centre offset that make "left of" / "above" hold


def centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    return (x0 + x1) / 2, (y0 + y1) / 2


def relation_holds(relation: str, a: tuple[float, ...], b: tuple[float, ...]) -> bool | None:
    """Whether ``a relation b`` holds between two body boxes; None when not judged in 2-D.

    left of / right of: centres at least NEAR apart horizontally; on top of: above, centres
    within half the narrower width horizontally, and at most 12 rows between a's bottom and b's
    top (stacked, not floating); above / below: centres NEAR apart vertically; beside: centres
    more than half a sprite apart horizontally and less than half a sprite vertically."""
    (ax, ay), (bx, by) = centre(a[:4]), centre(b[:4])  # type: ignore[arg-type]
    half = min(a[2] - a[0], b[2] - b[0]) / 2
    if relation == "left-of":
        return ax < bx - NEAR
    if relation == "right-of":
        return ax > bx + NEAR
    if relation == "on-top-of":
        return ay < by - NEAR and abs(ax - bx) < half and -2 <= b[1] - a[3] <= 12
    if relation == "above":
        return ay < by - NEAR
    if relation == "below":
        return ay > by + NEAR
    if relation == "beside":
        return abs(ax - bx) > SPRITE / 2 and abs(ay - by) < SPRITE / 2
    return None


def _clear(a: Box, b: Box, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def reach(box: Box, sprite: Sprite) -> Box:
    """The box with its wearer's hat or crown."""
    return (box[0], box[1] - HAT, box[2], box[3]) if sprite.attribute else box


def layout(scene: Scene, seed: int = 0, version: int = VERSION) -> list[Box]:
    """Each sprite's body box for this seed (world 2: drawn; world 1: fixed slots)."""
    if version == 1:
        return [
            (cx - SPRITE // 2, cy - SPRITE // 2, cx + SPRITE // 2, cy + SPRITE // 2)
            for cx, cy in (SLOTS[s] for s in slots_v1(scene))
        ]
    rng = random.Random(seed)
    n = len(scene.sprites)
    sizes: tuple[int, ...] = CROWDED_SIZES if n >= 3 else SIZES
    for attempt in range(200):
        if attempt == 100:  # rare crowded draws: fall back to the smallest size
            sizes = (min(SIZES),)
        boxes = _draw(scene, rng, sizes)
        if boxes is not None:
            return boxes
    raise ValueError(f"no layout fits this scene: {caption(scene)!r}")


def _draw(scene: Scene, rng: random.Random, sizes: tuple[int, ...]) -> list[Box] | None:
    """One attempt: place sprites one at a time, each uniformly among the grid positions that
    keep it clear of those placed and satisfy its placements with them; None on a dead end."""
    n = len(scene.sprites)
    side = [rng.choice(sizes) for _ in range(n)]
    stacked = {i: j for i, rel, j in scene.placements if rel == "on-top-of"}
    # stacks first (tallest units), then the rest in a random order
    order = [j for j in stacked.values()] + [i for i in stacked]
    rest = [i for i in range(n) if i not in order]
    rng.shuffle(rest)
    boxes: dict[int, Box] = {}
    for i in order + rest:
        s = side[i]
        if i in stacked and stacked[i] in boxes:  # stands on its target, centred on it
            below = boxes[stacked[i]]
            x0 = (below[0] + below[2]) // 2 - s // 2
            x0 -= x0 % GRID
            candidates = [(x0, below[1] - STACK_GAP - s)]
        else:
            top = HAT if scene.sprites[i].attribute else 0
            candidates = [
                (x, y)
                for x in range(MARGIN, SIZE - MARGIN - s + 1, GRID)
                for y in range(top, SIZE - s + 1, GRID)
            ]
        fits = [c for c in candidates if _fits(scene, boxes, i, (c[0], c[1], c[0] + s, c[1] + s))]
        if not fits:
            return None
        x, y = rng.choice(fits)
        boxes[i] = (x, y, x + s, y + s)
    return [boxes[i] for i in range(n)]


def _fits(scene: Scene, boxes: dict[int, Box], i: int, box: Box) -> bool:
    """Whether sprite i at ``box`` stays on the canvas, clear of the placed sprites, and keeps
    its placements with them."""
    mine = reach(box, scene.sprites[i])
    if mine[0] < MARGIN or mine[2] > SIZE - MARGIN or mine[1] < 0 or mine[3] > SIZE:
        return False
    stacks = {(a, b) for a, rel, b in scene.placements if rel == "on-top-of"}
    for j, other in boxes.items():
        gap = STACK_GAP if (i, j) in stacks or (j, i) in stacks else GAP
        if not _clear(mine, reach(other, scene.sprites[j]), gap):
            return False
    for a, relation, b in scene.placements:
        if a == i and b in boxes and relation_holds(relation, box, boxes[b]) is False:
            return False
        if b == i and a in boxes and relation_holds(relation, boxes[a], box) is False:
            return False
    return True


def slots_v1(scene: Scene) -> list[str]:
    """World 1: slot name of each sprite."""
    if len(scene.sprites) == 0:
        return []
    if len(scene.sprites) == 1:
        return ["centre"]
    relation = scene.placements[0][1] if scene.placements else None
    flip = bool(scene.placements) and scene.placements[0][0] == 1
    names = {"on-top-of": ["top", "bottom"], "right-of": ["right", "left"]}.get(
        relation or "", ["left", "right"]
    )
    return names[::-1] if flip else names


# --- drawing ------------------------------------------------------------------------------------


def shape_mask(shape: str, size: int = SPRITE) -> np.ndarray:
    """Boolean (size, size) mask of a shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    c = size / 2
    if shape == "circle":
        return bool_(((xx - c) ** 2 + (yy - c) ** 2) <= c**2)
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":
        # apex at top centre, base along the bottom
        return bool_(np.abs(xx - c) <= yy / 2)
    if shape == "star":
        r = np.hypot(xx - c, yy - c) / c
        theta = np.arctan2(yy - c, xx - c) + np.pi / 2
        # five points: radius oscillates between 0.45 and 1.0
        limit = 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 3
        return bool_(r <= limit)
    raise ValueError(f"unknown shape {shape!r}")


def bool_(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=bool)


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour binary erosion, ``steps`` times (pixels outside count as empty)."""
    m = mask.copy()
    for _ in range(steps):
        p = np.pad(m, 1, constant_values=False)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


def sprite_pixels(sprite: Sprite, size: int = SPRITE) -> tuple[np.ndarray, np.ndarray]:
    """The sprite body: RGB (size, size, 3) uint8 and its mask (size, size) bool."""
    mask = shape_mask(sprite.shape, size)
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    rgb[mask] = COLOURS[sprite.colour]
    inner = erode(mask, 2)  # patterns keep a 2-pixel body-coloured rim
    yy, xx = np.mgrid[0:size, 0:size]
    if sprite.pattern == "striped":
        ink = inner & ((yy // 4) % 2 == 1)
    elif sprite.pattern == "spotted":
        ink = inner & ((yy // 4) % 2 == 1) & ((xx // 4) % 2 == 1)
    else:
        ink = np.zeros_like(mask)
    rgb[ink] = INK
    return rgb, mask


def background(setting: str | None) -> np.ndarray:
    """The setting's backdrop, (SIZE, SIZE, 3) uint8."""
    bands = SETTINGS[setting] if setting else PLAIN_BACKGROUND
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for row, colour in bands:
        img[row:] = colour
    return img


def draw_attribute(img: np.ndarray, attribute: str, cx: int, top: int) -> None:
    """A crown (three points) or a hat (brim + crown) standing on row ``top``."""
    colour = ATTRIBUTES[attribute]
    if attribute == "a crown":
        img[top - 3 : top, cx - 6 : cx + 6] = colour
        for dx in (-6, -1, 4):
            img[top - 6 : top - 3, cx + dx : cx + dx + 2] = colour
    else:
        img[top - 2 : top, cx - 7 : cx + 7] = colour
        img[top - 7 : top - 2, cx - 4 : cx + 4] = colour


def render(scene: Scene, seed: int = 0, version: int = VERSION) -> Image.Image:
    """Draw a scene; ``seed`` draws the layout (world 2)."""
    return render_with_boxes(scene, seed, version)[0]


def render_with_boxes(
    scene: Scene, seed: int = 0, version: int = VERSION
) -> tuple[Image.Image, list[Box]]:
    """Draw a scene and return each sprite's body box."""
    img = background(scene.setting)
    boxes = layout(scene, seed, version)
    for sprite, (x0, y0, x1, _) in zip(scene.sprites, boxes, strict=True):
        rgb, mask = sprite_pixels(sprite, x1 - x0)
        img[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = rgb[mask]
        if sprite.attribute:
            draw_attribute(img, sprite.attribute, (x0 + x1) // 2, y0)
    return Image.fromarray(img), boxes


# --- random scenes --------------------------------------------------------------------------------


def random_sprite(rng: random.Random, attribute_p: float = 0.2) -> Sprite:
    """A sprite with uniformly drawn shape, colour and pattern."""
    attribute = rng.choice(list(ATTRIBUTES)) if rng.random() < attribute_p else None
    return Sprite(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(PATTERNS), attribute)


COUNT_WEIGHTS = (0.25, 0.3, 0.25, 0.2)  # world 2: share of scenes with 1, 2, 3, 4 sprites


def random_scene(
    rng: random.Random, first: Sprite | None = None, version: int = VERSION, n: int | None = None
) -> Scene:
    """A random scene; ``first`` fixes sprite 0 (used for concept data), ``n`` the count."""
    if version == 1:
        return _random_scene_v1(rng, first, n)
    if n is None:
        n = rng.choices(range(1, MAX_SPRITES + 1), COUNT_WEIGHTS)[0]
    sprites = [first or random_sprite(rng)]
    while len(sprites) < n:
        b = random_sprite(rng)
        if all(b.identity != s.identity for s in sprites):
            sprites.append(b)
    if first is None:
        rng.shuffle(sprites)
    setting = rng.choice([None, *SETTINGS])
    # placements between disjoint pairs (0, 1) and (2, 3), each present with probability 0.6
    placements: list[Placement] = []
    stacked = False  # a stack takes most of the canvas height: then every placed pair stacks
    for i in range(0, n - 1, 2):
        if rng.random() < 0.6:
            relation = "on-top-of" if stacked else rng.choice(RELATIONS)
            if relation == "on-top-of" and placements and not stacked:
                continue  # a stack beside a side-by-side pair does not fit 64 pixels
            stacked = relation == "on-top-of"
            top, under = (i, i + 1) if rng.random() < 0.5 else (i + 1, i)
            placements.append((top, relation, under))
            if relation == "on-top-of":  # stacked sprites leave no room for hats
                sprites[top] = replace(sprites[top], attribute=None)
                sprites[under] = replace(sprites[under], attribute=None)
    return Scene(tuple(sprites), tuple(placements), setting)


def _random_scene_v1(rng: random.Random, first: Sprite | None, n: int | None) -> Scene:
    a = first or random_sprite(rng)
    setting = rng.choice([None, *SETTINGS])
    if n == 1 or (n is None and rng.random() >= 0.7):
        return Scene((a,), setting=setting)
    b = random_sprite(rng)
    while b.identity == a.identity:
        b = random_sprite(rng)
    relation = rng.choice([*RELATIONS, None])
    sprites = (a, b) if first or rng.random() < 0.5 else (b, a)
    if relation == "on-top-of":
        sprites = (replace(sprites[0], attribute=None), replace(sprites[1], attribute=None))
    places: tuple[Placement, ...] = ((0, relation, 1),) if relation else ()
    return Scene(sprites, places, setting)


def words() -> tuple[str, ...]:
    """Every word a caption can use (for the tokenizer's vocabulary)."""
    text = " ".join(
        [*SHAPES, *COLOURS, *PATTERNS, *ATTRIBUTES, *SETTINGS, "wearing", "and", "of", "top"]
        + ["left", "right", "beside", "on", "with"]
    )
    return tuple(sorted(set(text.split())))


@dataclass(frozen=True)
class Concept:
    """A concept of the toy world: its trigger token, class noun and the sprite it stands for."""

    token: str  # trigger token, a whole token in the shipped tokenizer
    class_noun: str  # the class word that follows the token in prompts
    sprite: Sprite  # the identity: shape, colour, pattern (token unset)

    def as_sprite(self, attribute: str | None = None) -> Sprite:
        """The concept as a captioned sprite: ``<ZIGGY> circle``."""
        return replace(self.sprite, attribute=attribute, token=self.token)


CONCEPTS: dict[str, Concept] = {
    # ziggy and zaza: same class and colour, differing only in pattern (the hard pair)
    "ziggy": Concept("<ZIGGY>", "circle", Sprite("circle", "yellow", "striped")),
    "zaza": Concept("<ZAZA>", "circle", Sprite("circle", "yellow", "spotted")),
    "blip": Concept("<BLIP>", "square", Sprite("square", "purple", "spotted")),
    "kiki": Concept("<KIKI>", "triangle", Sprite("triangle", "red", "striped")),
    "momo": Concept("<MOMO>", "star", Sprite("star", "red", "plain")),
    # lulu: a fourth class next to blip, kiki and momo, so four concepts need not hold the pair
    "lulu": Concept("<LULU>", "circle", Sprite("circle", "pink", "plain")),
    # mimi and roro: with ziggy and zaza a cast of four circles that differ only in colour and
    # pattern, as people differ in face and hair (one class noun, shared patterns and colours)
    "mimi": Concept("<MIMI>", "circle", Sprite("circle", "purple", "striped")),
    "roro": Concept("<RORO>", "circle", Sprite("circle", "red", "spotted")),
}
