"""How the judge reads a picture: every pixel named, sprites cut out, each recognised by parts.

The model's pictures are not the world's: bodies a cell too wide, stripes off the world's
4-pixel phase, white ink as light as a desert sky, hats drawn near black (or dark red), crowns
as orange bars, sprites that touch. So the judge reads them as a person would, in steps that can
each be checked by looking:

1. **name every pixel** (`pixel_classes`): the nearest of its row's backdrop (the median of the
   side columns), the four body colours, the white ink, a hat's dark and a crown's orange; a
   pixel within ``BG_DISTANCE`` of its backdrop is backdrop whatever else it is near, a
   hat-dark one within ``HAT_BG_DISTANCE`` too (a night sky's noise). White ink is ink even
   where the backdrop is nearly as light (the desert's sky), because it is nearer ink;
2. **cut out sprites** (`find_sprites`): 4-connected components of body-coloured, ink and
   crown pixels (never hat-dark ones: a hat is not body), holes filled; a crown's orange rows
   and a hat's blended rim on top of a body are trimmed off (`trim_attribute`); a component
   holding two body colours in two large parts side by side is split by colour (a pink circle
   standing on a purple square); one that fits no shape well is cut at the row or column where
   both parts are plausible sprites that fit shapes better (a red star on a red triangle); a
   piece no taller than a hat standing on a larger body is worn, not a sprite;
3. **recognise by parts** (`recognise`): shape = the body mask (ink and holes included) resized
   to each shape's reference box, cost 1 - IoU + the difference of solidities (area / convex
   hull; star references also grown a pixel: the model draws stars fat), so a body a cell too
   wide still fits its shape; colour = the median of the body-coloured pixels, cost its
   distance to each colour / 255; pattern = the ink share of the body and how far ink runs
   along its rows (a stripe crosses the body, a spot is a 4-pixel run), where ink is a light
   pixel inside the rim nearer white than the body's own colour; cost their distance to the
   same figures of each pattern's reference at the best shape and its size. An identity's
   distance is the sum of the three; nearest = what the sprite *is*; on a world rendering
   every part costs exactly 0;
4. **what it wears** (`worn_attribute`): hat-dark or crown-orange pixels in the 8 rows above the
   body, centred on it (a hat is dark pixels *above* the body's coloured pixels, never ink).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image

from scenecraft.toyworld.world import (
    ATTRIBUTES,
    COLOURS,
    INK,
    PATTERNS,
    SHAPES,
    SIZE,
    Sprite,
    erode,
    shape_mask,
    sprite_pixels,
)

BG_DISTANCE = 15.0  # RGB distance from the row backdrop within which a pixel is backdrop
MIN_AREA = 60  # smallest body kept as a sprite, pixels (a 20-px star is ~150)
MIN_COLOURED = 30  # body-coloured pixels a sprite needs (ink alone is no sprite)
HAT_BG_DISTANCE = 30.0  # hat-dark this near the backdrop is backdrop (world hat: 35 from night)
ATTRIBUTE_PIXELS = 12  # attribute pixels above a body that make it wear something
REF_SIZES = range(10, 45)  # sprite sides the references are rendered at
HAT_ROWS = 10  # a piece no taller than this on top of a body is worn, not a sprite
COLOUR_SPLIT_OVERLAP = 0.3  # boxes of two colours overlapping more: one sprite, not two
SPLIT_COST = 0.25  # shape cost above which a one-colour component is tried as two sprites
INK_MIN = 120.0  # every channel of an ink pixel is at least this
GROW = {"star": (0, 1)}  # star references also grown a pixel (the model draws them fat)
SOLIDITY = 1.0  # weight of the solidity's difference in a shape's cost
PATTERN_SHARE = 1.0  # weight of the ink share's difference in a pattern's cost
PATTERN_RUN = 1.5  # weight of the ink runs' difference
SPLIT_GAIN = 0.1  # how much better both parts must fit than the whole

Identity = tuple[str, str, str]  # (shape, colour, pattern)

# pixel classes: 0 backdrop, 1..4 body colours, 5 ink, 6 hat, 7 crown
BACKDROP, INK_CLASS, HAT_CLASS, CROWN_CLASS = 0, 5, 6, 7
_COLOUR_NAMES = tuple(COLOURS)
_PALETTE = np.array(
    [*COLOURS.values(), INK, ATTRIBUTES["a hat"], ATTRIBUTES["a crown"]], dtype=np.float64
)  # (7, 3): classes 1..7


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


# --- pixels ------------------------------------------------------------------------------------


def row_background(img: np.ndarray) -> np.ndarray:
    """(H, 3): per row, the median colour of the side columns."""
    sides = np.concatenate([img[:, :3], img[:, -3:]], axis=1)  # (H, 6, 3)
    return np.asarray(np.median(sides, axis=1))


def pixel_classes(img: np.ndarray) -> np.ndarray:
    """(H, W) int: each pixel's nearest class (module docstring, step 1)."""
    bg = row_background(img)[:, None, :]  # (H, 1, 3)
    d_bg = np.linalg.norm(img - bg, axis=-1)  # (H, W)
    d = np.linalg.norm(img[..., None, :] - _PALETTE, axis=-1)  # (H, W, 7)
    nearest = d.argmin(axis=-1) + 1
    backdrop = (d_bg <= BG_DISTANCE) | (d_bg <= d.min(axis=-1))
    backdrop |= (nearest == HAT_CLASS) & (d_bg <= HAT_BG_DISTANCE)  # a night sky's noise
    return np.where(backdrop, BACKDROP, nearest)


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


def foreground(img: np.ndarray) -> np.ndarray:
    """(H, W) bool: body-coloured, ink or crown pixels, holes filled (hats are not body)."""
    cls = pixel_classes(img)
    return fill_holes((cls != BACKDROP) & (cls != HAT_CLASS))


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


# --- references ----------------------------------------------------------------------------------


@cache
def _box_dims(shape: str, size: int) -> tuple[int, int]:
    ys, xs = np.nonzero(shape_mask(shape, size))
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


@cache
def _ref_mask(shape: str, size: int, grow: int = 0) -> np.ndarray:
    """A shape's mask cropped to its box; ``grow`` > 0: dilated that many pixels first (the
    model draws stars fat: arms thickened, the notches between them filled in part)."""
    m = np.pad(shape_mask(shape, size), grow)
    for _ in range(grow):
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    ys, xs = np.nonzero(m)
    return m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@cache
def _ref_pattern(shape: str, pattern: str, size: int) -> tuple[float, float]:
    """The pattern figures of a world rendering of (shape, pattern) at a side."""
    rgb, mask = sprite_pixels(Sprite(shape, "red", pattern), size)
    ink = mask & (rgb == np.array(INK, dtype=np.uint8)).all(axis=-1)
    return pattern_figures(mask, ink)


def _sizes_for(shape: str, w: int, h: int) -> list[int]:
    """Sprite sides whose mask box best matches a (w, h) body box (within a pixel of the best)."""
    errors = {
        s: abs(_box_dims(shape, s)[0] - w) + abs(_box_dims(shape, s)[1] - h) for s in REF_SIZES
    }
    best = min(errors.values())
    return [s for s, e in errors.items() if e <= best + 1]


# --- recognising a body -------------------------------------------------------------------------


def pattern_figures(mask: np.ndarray, ink: np.ndarray) -> tuple[float, float]:
    """(ink share of the body, how far ink runs along its rows: per row holding ink, the longest
    ink run / the row's body width less its 2-pixel rims, averaged with the rows' ink counts as
    weights): stripes cross the body (~1), spots are short (~0.3); a stray light pixel weighs
    little."""
    area = int(mask.sum())
    if area == 0 or not ink.any():
        return 0.0, 0.0
    runs, weights = [], []
    for row_mask, row_ink in zip(mask, ink, strict=True):
        if not row_ink.any():
            continue
        inner = max(int(row_mask.sum()) - 4, 1)
        padded = np.concatenate([[0], row_ink.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))
        longest = int((edges[1::2] - edges[::2]).max())
        runs.append(min(longest / inner, 1.0))
        weights.append(int(row_ink.sum()))
    return float(ink.sum() / area), float(np.average(runs, weights=weights))


def solidity(mask: np.ndarray) -> float:
    """Area / the area of its convex hull (pixel corners): a star's points leave gaps (~0.6),
    a circle, square or triangle fills its hull (~1)."""
    ys, xs = np.nonzero(mask)
    corners = {
        (x + dx, y + dy)
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True)
        for dx in (0, 1)
        for dy in (0, 1)
    }
    hull = _hull(sorted(corners))
    area = 0.5 * abs(
        sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1], strict=True))
    )
    return float(min(len(xs) / max(area, 1.0), 1.0))


def _hull(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Convex hull of sorted points (Andrew's monotone chain), counter-clockwise."""

    def half(pts: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for p in pts:
            while (
                len(out) >= 2
                and (
                    (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                    - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
                )
                <= 0
            ):
                out.pop()
            out.append(p)
        return out

    lower, upper = half(points), half(points[::-1])
    return lower[:-1] + upper[:-1]


@cache
def _ref_solidity(shape: str, size: int, grow: int = 0) -> float:
    return solidity(_ref_mask(shape, size, grow))


def shape_costs(mask: np.ndarray) -> dict[str, tuple[float, int]]:
    """shape -> (1 - IoU of the body mask resized to its reference box + the difference of
    their solidities, that reference's side)."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    solid = solidity(crop)
    out = {}
    for shape in SHAPES:
        best = (2.0, 0)
        for grow in GROW.get(shape, (0,)):
            for size in _sizes_for(shape, w - 2 * grow, h - 2 * grow):
                ref = _ref_mask(shape, size, grow)
                resized = np.asarray(
                    Image.fromarray(crop).resize(
                        (ref.shape[1], ref.shape[0]), Image.Resampling.NEAREST
                    )
                )
                iou = (resized & ref).sum() / max((resized | ref).sum(), 1)
                cost = 1.0 - float(iou) + SOLIDITY * abs(solid - _ref_solidity(shape, size, grow))
                best = min(best, (cost, size))
        out[shape] = best
    return out


def body_colour_and_ink(
    img: np.ndarray, cls: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The body's colour (median of its body-coloured pixels) and its ink: light pixels inside
    the rim, nearer the white ink than that colour along the line between them (so a faint
    stripe, pink on a red body, is ink; dark or blue noise never is)."""
    coloured = mask & (cls >= 1) & (cls <= len(COLOURS))
    median = np.median(img[coloured if coloured.any() else mask], axis=0)
    axis = np.array(INK, dtype=np.float64) - median
    t = ((img - median) @ axis) / max(float(axis @ axis), 1.0)
    light = img.min(axis=-1) >= INK_MIN
    return median, erode(mask, 1) & light & (t > 0.5)


def recognise(img: np.ndarray, cls: np.ndarray, mask: np.ndarray) -> dict[Identity, float]:
    """Distance of a body (``mask``: its filled pixels) to every identity (module docstring)."""
    median, ink = body_colour_and_ink(img, cls, mask)
    colour_cost = {
        name: float(np.linalg.norm(median - np.array(rgb)) / 255.0) for name, rgb in COLOURS.items()
    }
    share, run = pattern_figures(mask, ink)
    shapes = shape_costs(mask)
    best_shape = min(shapes, key=lambda k: shapes[k])
    pattern_cost = {}  # against the references of the best-fitting shape: parts stay separate
    for pattern in PATTERNS:
        ref_share, ref_run = _ref_pattern(best_shape, pattern, shapes[best_shape][1])
        pattern_cost[pattern] = PATTERN_SHARE * abs(share - ref_share) + PATTERN_RUN * abs(
            run - ref_run
        )
    return {
        (shape, colour, pattern): cost + colour_cost[colour] + pattern_cost[pattern]
        for shape, (cost, _) in shapes.items()
        for colour in _COLOUR_NAMES
        for pattern in PATTERNS
    }


# --- cutting out sprites ------------------------------------------------------------------------


def _mask_of(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[pixels[:, 0], pixels[:, 1]] = True
    return m


def trim_attribute(cls: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask less its top rows that belong to what the sprite wears: the rows down to the
    last of its first ``HAT_ROWS`` where crown-orange is at least 30 % of the row (a crown drawn
    touching its wearer, its rim blended into body colours), when the body below holds little
    orange; then rows where hat-dark pixels across the mask's columns outnumber the mask's own
    (the blended rim of a hat). Unchanged when that would leave too little."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    out = mask.copy()
    share = [float((cls[y][mask[y]] == CROWN_CLASS).mean()) for y in rows]
    crowned = [k for k in range(min(HAT_ROWS, len(rows))) if share[k] >= 0.3]
    if crowned and np.mean(share[crowned[-1] + 1 :] or [1.0]) < 0.2:
        out[rows[: crowned[-1] + 1]] = False
    for y in rows:
        if not out[y].any():
            continue
        hat = int((cls[y, cols[0] : cols[-1] + 1] == HAT_CLASS).sum())
        if hat <= int(out[y].sum()):
            break
        out[y] = False
    return out if out.sum() >= MIN_AREA else mask


def split_by_colour(cls: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Two sprites of different colours touching: each colour's largest connected part, when
    two colours each hold a large one, grown back over the ink and crown pixels nearest it."""
    parts = []
    for k in range(1, len(COLOURS) + 1):
        comps = components(mask & (cls == k))
        if comps and len(comps[0]) >= MIN_AREA:
            parts.append(_mask_of(comps[0], mask.shape))
    if len(parts) < 2:
        return [mask]
    parts = sorted(parts, key=lambda m: -int(m.sum()))[:2]
    if _box_overlap(*parts) > COLOUR_SPLIT_OVERLAP:  # one sprite of an in-between colour
        return [mask]
    ys, xs = np.nonzero(mask)
    cents = [np.argwhere(p).mean(axis=0) for p in parts]
    out = [np.zeros_like(mask) for _ in parts]
    for y, x in zip(ys, xs, strict=True):
        owner = next((i for i, p in enumerate(parts) if p[y, x]), None)
        if owner is None:
            owner = int(np.argmin([np.hypot(y - c[0], x - c[1]) for c in cents]))
        out[owner][y, x] = True
    return [fill_holes(m) for m in out]


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """The overlap of two masks' boxes, as a share of the smaller box."""
    boxes = []
    for m in (a, b):
        ys, xs = np.nonzero(m)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
    return inter / max(smaller, 1)


def _plausible(mask: np.ndarray) -> bool:
    """Whether a part could be a whole sprite: at least 12 px each way, sides within 1:1.6
    (resized to a reference box, any flat slice of a square would fit a square)."""
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    return min(h, w) >= 12 and max(h, w) <= 1.6 * min(h, w)


def split_by_shape(mask: np.ndarray) -> list[np.ndarray]:
    """A one-colour component that fits no shape well: cut at the narrowest row (a stack) or
    column (side by side) in its middle half, kept when both parts fit shapes better."""
    whole = min(c for c, _ in shape_costs(mask).values())
    if whole <= SPLIT_COST:
        return [mask]
    best: tuple[float, list[np.ndarray]] = (whole, [mask])
    for axis in (0, 1):
        profile = mask.sum(axis=1 - axis)
        idx = np.flatnonzero(profile)
        lo, hi = idx[0], idx[-1]
        span = hi - lo
        for cut in range(lo + span // 4, hi - span // 4 + 1):
            a, b = mask.copy(), mask.copy()
            if axis == 0:
                a[cut:], b[:cut] = False, False
            else:
                a[:, cut:], b[:, :cut] = False, False
            if min(a.sum(), b.sum()) < MIN_AREA or not (_plausible(a) and _plausible(b)):
                continue
            cost = max(min(c for c, _ in shape_costs(m).values()) for m in (a, b))
            if cost < min(best[0], whole - SPLIT_GAIN, SPLIT_COST):
                best = (cost, [a, b])
    return best[1]


def worn_attribute(cls: np.ndarray, box: tuple[int, int, int, int]) -> str | None:
    """What the sprite with this body box wears: hat-dark or crown-orange pixels in the 8 rows
    above the body, within 8 columns of its centre."""
    x0, y0, x1, _ = box
    cx = (x0 + x1) // 2
    top, left, right = max(0, y0 - 8), max(0, cx - 8), min(cls.shape[1], cx + 8)
    if top >= y0:
        return None
    patch = cls[top:y0, left:right]
    counts = {
        "a hat": int((patch == HAT_CLASS).sum()),
        "a crown": int((patch == CROWN_CLASS).sum()),
    }

    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] >= ATTRIBUTE_PIXELS else None


def describe(img: np.ndarray, cls: np.ndarray, mask: np.ndarray) -> Found | None:
    """A body mask as a Found sprite; None when too small or without body colour."""
    coloured = mask & (cls >= 1) & (cls <= len(COLOURS))
    if mask.sum() < MIN_AREA or coloured.sum() < MIN_COLOURED:
        return None
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    distances = recognise(img, cls, mask)
    best = min(distances, key=lambda k: distances[k])
    return Found(box, int(mask.sum()), best, distances, worn_attribute(cls, box))


def find_sprites(image: Image.Image) -> list[Found]:
    """Every sprite in an image, left to right (image resized to SIZE x SIZE if needed)."""
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    img = np.asarray(image.convert("RGB"), dtype=np.float64)  # (64, 64, 3)
    cls = pixel_classes(img)
    fg = fill_holes((cls != BACKDROP) & (cls != HAT_CLASS))
    found = []
    for comp in components(fg):
        if len(comp) < MIN_AREA:
            continue
        mask = trim_attribute(cls, _mask_of(comp, fg.shape))
        for part in split_by_colour(cls, mask):
            for piece in split_by_shape(part):
                if (f := describe(img, cls, piece)) is not None:
                    found.append(f)
    return sorted((f for f in found if not worn(f, found)), key=lambda f: f.centre)


def worn(f: Found, found: list[Found]) -> bool:
    """Whether a found piece is something another sprite wears: no taller than a hat, standing
    on (or within 4 rows above) a larger body's top, over its middle (a crown drawn yellow)."""
    x0, y0, x1, y1 = f.box
    if y1 - y0 > HAT_ROWS:
        return False
    cx = (x0 + x1) / 2
    return any(
        g.area > f.area and 0 <= g.box[1] - y1 <= 4 and g.box[0] <= cx <= g.box[2]
        for g in found
        if g is not f
    )
