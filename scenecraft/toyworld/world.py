"""The toy world: a procedural 64x64 renderer of sprite scenes and their captions.

A scene holds one or two sprites (shape, colour, pattern, optional hat or crown) in a setting,
and at most one placement between them. Layouts use a few fixed slots (left / right halves,
centre, stacked) so that position binding is learnable by a tiny model. Every caption is
written by `scenecraft.prompts.scene_prompt`, the compiler's own English, e.g.
``red striped star left of <BLIP> circle, on grass``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from scenecraft.prompts import Clause, SceneText, Subject, scene_prompt

SIZE = 64  # image side, pixels
SPRITE = 24  # sprite body side, pixels (bounding box); slots keep it on the 4-pixel latent grid
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

# sprite centres (x, y) per slot
SLOTS: dict[str, tuple[int, int]] = {
    "centre": (32, 40),
    "left": (16, 40),
    "right": (48, 40),
    "bottom": (32, 48),
    "top": (32, 20),
}
JITTER = 0  # max random shift of a sprite, pixels (0: slots stay on the latent grid)


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
        """What the prompt calls it: ``<ZIGGY> star`` or ``red striped star``."""
        if self.token:
            return f"{self.token} {self.shape}"
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return f"{self.colour} {pattern}{self.shape}"


@dataclass(frozen=True)
class Scene:
    """One or two sprites, an optional placement ``sprites[0] relation sprites[1]``, a setting."""

    sprites: tuple[Sprite, ...]
    relation: str | None = None  # one of RELATIONS, or None (sprites listed)
    setting: str | None = None  # a SETTINGS key, or None (plain grey)
    swap: bool = False  # for "beside" / listed pairs: draw sprites[0] on the right


def scene_text(scene: Scene) -> SceneText:
    """The compiler-side description of a scene (subjects named s0, s1)."""
    subjects = tuple(
        Subject(f"s{i}", s.words, (("wears", s.attribute),) if s.attribute else ())
        for i, s in enumerate(scene.sprites)
    )
    clauses: tuple[Clause, ...] = ()
    if scene.relation and len(subjects) == 2:
        clauses = (Clause("s0", scene.relation, ("s1",), is_placement=True),)
    return SceneText(subjects=subjects, clauses=clauses, setting=scene.setting)


def caption(scene: Scene) -> str:
    """The scene's caption in the compiler's English (`scene_prompt`)."""
    return scene_prompt(scene_text(scene))


def slots(scene: Scene) -> list[str]:
    """Slot name of each sprite."""
    if len(scene.sprites) == 0:
        return []
    if len(scene.sprites) == 1:
        return ["centre"]
    if scene.relation == "on-top-of":
        return ["top", "bottom"]
    if scene.relation == "left-of":
        return ["left", "right"]
    if scene.relation == "right-of":
        return ["right", "left"]
    return ["right", "left"] if scene.swap else ["left", "right"]


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


def sprite_pixels(sprite: Sprite) -> tuple[np.ndarray, np.ndarray]:
    """The sprite body: RGB (SPRITE, SPRITE, 3) uint8 and its mask (SPRITE, SPRITE) bool."""
    mask = shape_mask(sprite.shape)
    rgb = np.zeros((SPRITE, SPRITE, 3), dtype=np.uint8)
    rgb[mask] = COLOURS[sprite.colour]
    inner = erode(mask, 2)  # patterns keep a 2-pixel body-coloured rim
    yy, xx = np.mgrid[0:SPRITE, 0:SPRITE]
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


def render(scene: Scene, seed: int = 0) -> Image.Image:
    """Draw a scene; ``seed`` only drives the small position jitter."""
    rng = random.Random(seed)
    img = background(scene.setting)
    for sprite, slot in zip(scene.sprites, slots(scene), strict=True):
        cx, cy = SLOTS[slot]
        cx += rng.randint(-JITTER, JITTER)
        cy += rng.randint(-JITTER, JITTER) if slot != "bottom" else 0
        rgb, mask = sprite_pixels(sprite)
        x0, y0 = cx - SPRITE // 2, cy - SPRITE // 2
        img[y0 : y0 + SPRITE, x0 : x0 + SPRITE][mask] = rgb[mask]
        if sprite.attribute:
            draw_attribute(img, sprite.attribute, cx, y0)
    return Image.fromarray(img)


def random_sprite(rng: random.Random, attribute_p: float = 0.2) -> Sprite:
    """A sprite with uniformly drawn shape, colour and pattern."""
    attribute = rng.choice(list(ATTRIBUTES)) if rng.random() < attribute_p else None
    return Sprite(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(PATTERNS), attribute)


def random_scene(rng: random.Random, pair_p: float = 0.7, first: Sprite | None = None) -> Scene:
    """A random scene; ``first`` fixes sprite 0 (used for concept data)."""
    a = first or random_sprite(rng)
    setting = rng.choice([None, *SETTINGS])
    if rng.random() >= pair_p:
        return Scene((a,), setting=setting)
    b = random_sprite(rng)
    while (b.shape, b.colour, b.pattern) == (a.shape, a.colour, a.pattern):
        b = random_sprite(rng)
    relation = rng.choice([*RELATIONS, None])
    sprites = (a, b) if first or rng.random() < 0.5 else (b, a)
    if relation == "on-top-of":  # stacked sprites leave no room for hats
        sprites = (replace(sprites[0], attribute=None), replace(sprites[1], attribute=None))
    return Scene(sprites, relation, setting, swap=rng.random() < 0.5)


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
        """The concept as a captioned sprite: ``<ZIGGY> star``."""
        return replace(self.sprite, attribute=attribute, token=self.token)


CONCEPTS: dict[str, Concept] = {
    # ziggy and zaza: same class and colour, differing only in pattern (the hard pair)
    "ziggy": Concept("<ZIGGY>", "circle", Sprite("circle", "yellow", "striped")),
    "zaza": Concept("<ZAZA>", "circle", Sprite("circle", "yellow", "spotted")),
    "blip": Concept("<BLIP>", "square", Sprite("square", "purple", "spotted")),
    "kiki": Concept("<KIKI>", "triangle", Sprite("triangle", "red", "striped")),
    "momo": Concept("<MOMO>", "star", Sprite("star", "red", "plain")),
}
