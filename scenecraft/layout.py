"""Layouts: where each subject of a scene goes, as a box on a normalised canvas.

Pure Python (no torch): the checker, the compiler, the layout sketch, the regional sampler and
the toy world's judge all read boxes from here. A box is ``(x0, y0, x1, y1)`` in fractions of
the canvas, origin top left, x to the right, y down.

Derivation (``derive``), for the subjects of one scene in order of mention:
  1. subjects with an explicit area (``ziggy at left half``) keep it;
  2. the others are grouped into *stacks*: a vertical relation (above, below, on top of, in
     front of, behind) puts two subjects in one stack, ordered top to bottom (what is in front
     sits lower, nearer the viewer);
  3. stacks are ordered left to right by ``left of`` / ``right of`` (a topological order; ties
     keep the order of mention, so unplaced subjects stand side by side as they are named);
  4. the stacks share the free width of the canvas (the widest stretch no explicit box covers):
     ``row`` puts them side by side, ``column`` one under the other, ``grid`` in rows of
     ceil(sqrt(n)); ``auto`` is ``grid`` for four or more stacks when that keeps every left/right
     placement, else ``row``. Inside a stack the members split the height.
Cycles (``a left of b``, ``b left of c``, ``c left of a``) have no layout: ``find_cycle`` lets
the checker report them before anything is derived.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), fractions of the canvas

LAYOUTS = ("auto", "row", "column", "grid")

# named areas: `ziggy at left half`, `blip at top right`, `kiki at center`
AREAS: dict[str, Box] = {
    "full": (0.0, 0.0, 1.0, 1.0),
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "left half": (0.0, 0.0, 0.5, 1.0),
    "right half": (0.5, 0.0, 1.0, 1.0),
    "top half": (0.0, 0.0, 1.0, 0.5),
    "bottom half": (0.0, 0.5, 1.0, 1.0),
    "left third": (0.0, 0.0, 1 / 3, 1.0),
    "middle third": (1 / 3, 0.0, 2 / 3, 1.0),
    "right third": (2 / 3, 0.0, 1.0, 1.0),
    "top left": (0.0, 0.0, 0.5, 0.5),
    "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0),
    "bottom right": (0.5, 0.5, 1.0, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
    "centre": (0.25, 0.25, 0.75, 0.75),
}

# relation -> (axis, sign) in the scene: x left to right, y top to bottom, z near to far; sign -1
# means the subject comes first on that axis (`a left of b`: a has the smaller x). Two
# placements of one pair with opposite signs on one axis contradict each other (the checker).
RELATIONS: dict[str, tuple[str, int]] = {
    "left-of": ("x", -1),
    "right-of": ("x", 1),
    "above": ("y", -1),
    "on-top-of": ("y", -1),
    "below": ("y", 1),
    "in-front-of": ("z", -1),
    "behind": ("z", 1),
}


def canvas_axis(relation: str) -> tuple[str, int]:
    """A relation's axis on the 2-D canvas: depth becomes height, the nearer subject lower."""
    axis, sign = RELATIONS[relation]
    return ("y", -sign) if axis == "z" else (axis, sign)


AXES = {rel: canvas_axis(rel) for rel in RELATIONS}  # relation -> (canvas axis, sign)
STACKING = {"above", "on-top-of", "below", "behind", "in-front-of"}

Placement = tuple[str, str, str]  # (subject, relation, target)


def edges(placements: Iterable[Placement], axis: str) -> list[tuple[str, str]]:
    """(first, second) pairs on one axis: ``a left of b`` gives ``(a, b)`` on x."""
    out = []
    for a, rel, b in placements:
        if rel in AXES and AXES[rel][0] == axis:
            out.append((a, b) if AXES[rel][1] < 0 else (b, a))
    return out


def find_cycle(pairs: Sequence[tuple[str, str]]) -> list[str] | None:
    """A cycle in the order ``pairs`` asks for (as names, first repeated last), or None."""
    graph: dict[str, list[str]] = {}
    for a, b in pairs:
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in list(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def _topo(nodes: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Nodes in an order that keeps every (a before b) pair; ties keep ``nodes``' order."""
    rank = {x: i for i, x in enumerate(nodes)}
    indeg = dict.fromkeys(nodes, 0)
    after: dict[str, list[str]] = {x: [] for x in nodes}
    for a, b in set(pairs):
        if a in rank and b in rank and a != b:
            after[a].append(b)
            indeg[b] += 1
    ready = sorted((x for x in nodes if indeg[x] == 0), key=rank.__getitem__)
    out: list[str] = []
    while ready:
        x = ready.pop(0)
        out.append(x)
        for y in after[x]:
            indeg[y] -= 1
            if indeg[y] == 0:
                ready.append(y)
                ready.sort(key=rank.__getitem__)
    out += [x for x in nodes if x not in out]  # a cycle (reported by the checker) keeps order
    return out


def _stacks(names: Sequence[str], placements: Sequence[Placement]) -> list[list[str]]:
    """Subjects joined by a vertical relation share a stack; each stack ordered top to bottom."""
    parent = {x: x for x in names}

    def root(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, rel, b in placements:
        if rel in STACKING and a in parent and b in parent:
            parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for x in names:
        groups.setdefault(root(x), []).append(x)
    vertical = edges(placements, "y")
    return [_topo(g, vertical) for g in groups.values()]


def _free_span(explicit: Iterable[Box]) -> tuple[float, float]:
    """The widest stretch of x that no explicit box covers (the whole width if none)."""
    spans = sorted((b[0], b[2]) for b in explicit)
    best, cursor = (0.0, 0.0), 0.0
    for x0, x1 in [*spans, (1.0, 1.0)]:
        if x0 - cursor > best[1] - best[0]:
            best = (cursor, x0)
        cursor = max(cursor, x1)
    return best if best[1] - best[0] >= 0.2 else (0.0, 1.0)


def _grid_keeps_order(order: Sequence[list[str]], pairs: Sequence[tuple[str, str]]) -> bool:
    cols = math.ceil(math.sqrt(len(order)))
    column = {x: i % cols for i, stack in enumerate(order) for x in stack}
    return all(column[a] < column[b] for a, b in pairs if a in column and b in column)


def derive(
    names: Sequence[str],
    placements: Sequence[Placement] = (),
    explicit: dict[str, Box] | None = None,
    mode: str = "auto",
) -> dict[str, Box]:
    """A box for every name (see the module docstring); boxes rounded to 4 decimals."""
    explicit = dict(explicit or {})
    free = [x for x in names if x not in explicit]
    boxes: dict[str, Box] = dict(explicit)
    if free:
        stacks = _stacks(free, placements)
        first = {stack[0]: stack for stack in stacks}
        by_name = {x: stack[0] for stack in stacks for x in stack}
        horizontal = edges(placements, "x")
        stack_pairs = [
            (by_name[a], by_name[b])
            for a, b in horizontal
            if a in by_name and b in by_name and by_name[a] != by_name[b]
        ]
        order = [first[x] for x in _topo([s[0] for s in stacks], stack_pairs)]
        if mode == "auto":
            grid = len(order) >= 4 and _grid_keeps_order(order, horizontal)
            mode = "grid" if grid else "row"
        x_lo, x_hi = _free_span(explicit.values())
        for stack, cell in zip(order, _cells(len(order), mode, x_lo, x_hi), strict=True):
            cx0, cy0, cx1, cy1 = cell
            h = (cy1 - cy0) / len(stack)
            for k, name in enumerate(stack):
                boxes[name] = (cx0, cy0 + k * h, cx1, cy0 + (k + 1) * h)
    return {x: tuple(round(v, 4) for v in boxes[x]) for x in names}  # type: ignore[misc]


def _cells(count: int, mode: str, x_lo: float, x_hi: float) -> list[Box]:
    width = x_hi - x_lo
    if mode == "column":
        return [(x_lo, i / count, x_hi, (i + 1) / count) for i in range(count)]
    if mode == "grid":
        cols = math.ceil(math.sqrt(count))
        rows = math.ceil(count / cols)
        return [
            (
                x_lo + (i % cols) * width / cols,
                (i // cols) / rows,
                x_lo + (i % cols + 1) * width / cols,
                (i // cols + 1) / rows,
            )
            for i in range(count)
        ]
    return [
        (x_lo + i * width / count, 0.0, x_lo + (i + 1) * width / count, 1.0) for i in range(count)
    ]


def centre(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def holds(relation: str, a: Box, b: Box) -> bool:
    """Whether boxes ``a`` and ``b`` satisfy ``a relation b`` (relations without an axis hold)."""
    if relation not in AXES:
        return True
    axis, sign = AXES[relation]
    i = 0 if axis == "x" else 1
    ca, cb = centre(a)[i], centre(b)[i]
    return ca < cb if sign < 0 else ca > cb


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (0: apart, 1: one inside the other)."""
    inter = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    smaller = min(area(a), area(b))
    return area(inter) / smaller if smaller > 0 else 0.0
