"""What the rating page shows and stores: the images of a run, their concepts' references, ratings.

The catalog is read from the run's manifests (``OUT/<file stem>/manifest*.json``: every image the
run recorded, and under ``concepts`` each concept's ``references``) and from each PNG's
``scenecraft`` provenance chunk (the job: scene, seed, prompt, concepts; the merge method and the
render mode). Nothing here imports torch: the page must open on a machine that only has images.

Ratings live in ``OUT/ratings.json`` (written atomically, temp + ``os.replace``)::

    {"version": 1, "images": {"<image path relative to OUT>": {
        "scene": "duo", "method": "loraclr", "concepts": ["ziggy", "momo"],
        "identity": {"ziggy": 4, "momo": 2}, "keep": true, "updated": "2026-12-01T15:04:05Z"}}}

``method`` is the merge method from the provenance; images rendered with ``--adapters`` are
method ``adapters`` (runtime LoRA adapters, no merge), images of ``merge none`` are ``none``;
`` + regions`` is appended for images sampled with regions (e.g. ``loraclr + regions``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenecraft.files import atomic_write_text
from scenecraft.render.png import read_png_metadata

RATINGS_FILE = "ratings.json"
RATINGS_VERSION = 1
REFERENCE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


@dataclass(frozen=True)
class ConceptRefs:
    name: str
    references: tuple[int, ...]  # indexes into Catalog.references
    missing: tuple[str, ...] = ()  # named in the manifest but not a readable image file


@dataclass(frozen=True)
class Item:
    """One rendered image to rate."""

    id: str  # path relative to OUT, POSIX
    path: Path  # resolved, inside OUT
    scene: str
    method: str  # merge method, or "adapters"
    mode: str  # "merged", "base", "adapters"
    seed: int
    prompt: str
    concepts: tuple[ConceptRefs, ...]
    storyboard: str | None = None


@dataclass
class Catalog:
    root: Path  # OUT, resolved
    items: list[Item] = field(default_factory=list)
    references: list[Path] = field(default_factory=list)  # every reference file a manifest names
    problems: list[str] = field(default_factory=list)  # entries skipped, for the CLI to show

    def item(self, item_id: str) -> Item | None:
        return next((i for i in self.items if i.id == item_id), None)


def inside(root: Path, path: Path) -> Path | None:
    """``path`` resolved (symlinks followed) if it lies inside ``root`` and is a file, else None."""
    try:
        resolved = path.resolve()
    except (OSError, ValueError):
        return None
    if root not in resolved.parents or not resolved.is_file():
        return None
    return resolved


def method_of(provenance: dict[str, Any]) -> str:
    """``loraclr``, ``ties``, …; ``adapters`` for runtime adapters; `` + regions`` appended when
    the image was sampled regionally (its provenance lists regions)."""
    if provenance.get("mode") == "adapters":
        method = "adapters"
    else:
        method = str(provenance.get("merge_method") or "none")
    return method + " + regions" if provenance.get("regions") else method


def _is_image(path: Path) -> bool:
    if path.suffix.lower() not in REFERENCE_SUFFIXES:
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def load_catalog(out_dir: str | Path) -> Catalog:
    """Every image the run's manifests record (existing, inside OUT, with provenance)."""
    root = Path(out_dir).resolve()
    cat = Catalog(root)
    ref_index: dict[Path, int] = {}
    seen: set[str] = set()
    for manifest_path in sorted(root.glob("*/manifest*.json")):
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            cat.problems.append(f"{manifest_path}: unreadable manifest ({exc})")
            continue
        if not isinstance(manifest, dict) or not isinstance(manifest.get("images"), dict):
            cat.problems.append(f"{manifest_path}: not a scenecraft manifest")
            continue
        raw = manifest.get("concepts")
        concepts: dict[str, Any] = raw if isinstance(raw, dict) else {}
        for rel in sorted(manifest["images"]):
            if rel in seen:
                continue
            path = inside(root, root / rel)
            if path is None:
                cat.problems.append(f"{rel}: missing, or outside {root}")
                continue
            try:
                prov = read_png_metadata(path).scenecraft or {}
            except Exception:
                prov = {}
            job = prov.get("job")
            if not isinstance(job, dict):
                cat.problems.append(f"{rel}: no scenecraft provenance")
                continue
            names = [str(c) for c in job.get("concepts") or ()]
            crefs = []
            for name in names:
                found = concepts.get(name)
                spec: dict[str, Any] = found if isinstance(found, dict) else {}
                indexes: list[int] = []
                missing: list[str] = []
                for ref in spec.get("references") or ():
                    ref_path = Path(str(ref))
                    if not ref_path.is_absolute():  # as written, relative to the scene file
                        ref_path = Path(str(manifest.get("plan_file", ""))).parent / ref_path
                    ref_path = ref_path.resolve()
                    if ref_path not in ref_index:
                        if not _is_image(ref_path):
                            missing.append(str(ref))
                            continue
                        ref_index[ref_path] = len(cat.references)
                        cat.references.append(ref_path)
                    indexes.append(ref_index[ref_path])
                crefs.append(ConceptRefs(name, tuple(indexes), tuple(missing)))
            seen.add(rel)
            cat.items.append(
                Item(
                    id=rel,
                    path=path,
                    scene=str(job.get("scene", "?")),
                    method=method_of(prov),
                    mode=str(prov.get("mode", "?")),
                    seed=_int(prov.get("seed", job.get("seed"))),
                    prompt=str(job.get("prompt", "")),
                    concepts=tuple(crefs),
                    storyboard=job.get("storyboard"),
                )
            )
    cat.items.sort(key=lambda i: (i.scene, i.storyboard or "", _blind_order(i.id)))
    return cat


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _blind_order(item_id: str) -> str:
    """A fixed shuffle within a scene, so a rater does not see the methods in blocks."""
    import hashlib

    return hashlib.sha256(item_id.encode()).hexdigest()


# -------------------------------------------------------------------------------- ratings


class RatingError(ValueError):
    """A rating the page should not have sent (unknown image or concept, out of range)."""


def ratings_path(root: Path) -> Path:
    return root / RATINGS_FILE


def load_ratings(root: Path) -> dict[str, Any]:
    """The ratings file, or an empty one (a missing or unreadable file starts afresh)."""
    try:
        data = json.loads(ratings_path(root).read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("images"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"version": RATINGS_VERSION, "images": {}}


def apply_rating(cat: Catalog, ratings: dict[str, Any], body: Any) -> dict[str, Any]:
    """Validate one rating (``{"image", "concept", "identity"}`` or ``{"image", "keep"}``),
    merge it into ``ratings`` and return the image's entry. Raises RatingError."""
    if not isinstance(body, dict):
        raise RatingError("expected a JSON object")
    image = body.get("image")
    item = cat.item(image) if isinstance(image, str) else None
    if item is None:
        raise RatingError("unknown image")
    entry = ratings["images"].setdefault(item.id, {})
    entry.update(scene=item.scene, method=item.method, concepts=[c.name for c in item.concepts])
    entry.setdefault("identity", {})
    if "identity" in body:
        concept, value = body.get("concept"), body["identity"]
        if concept not in entry["concepts"]:
            raise RatingError("unknown concept for this image")
        if value is None:
            entry["identity"].pop(concept, None)
        elif isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5:
            entry["identity"][concept] = value
        else:
            raise RatingError("identity must be an integer from 1 to 5 (or null to clear)")
    elif "keep" in body:
        if body["keep"] is not None and not isinstance(body["keep"], bool):
            raise RatingError("keep must be true, false or null")
        entry["keep"] = body["keep"]
    else:
        raise RatingError("expected `identity` (with `concept`) or `keep`")
    entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return dict(entry)


def save_ratings(root: Path, ratings: dict[str, Any]) -> None:
    data = {**ratings, "version": RATINGS_VERSION}
    data["images"] = dict(sorted(data["images"].items()))
    atomic_write_text(ratings_path(root), json.dumps(data, indent=2) + "\n")


# -------------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Row:
    method: str
    scene: str  # "(all)" for a method's total
    n: int  # identity ratings
    mean: float
    std: float  # population standard deviation of the ratings
    images: int  # images with at least one rating or a keep/reject
    kept: int
    rejected: int


def _row(method: str, scene: str, entries: list[dict[str, Any]]) -> Row:
    values = [
        v
        for e in entries
        for v in (e.get("identity") or {}).values()
        if isinstance(v, int) and 1 <= v <= 5
    ]
    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else math.nan
    kept = sum(1 for e in entries if e.get("keep") is True)
    rejected = sum(1 for e in entries if e.get("keep") is False)
    return Row(method, scene, n, mean, std, len(entries), kept, rejected)


def summarize(ratings: dict[str, Any]) -> list[Row]:
    """Mean ± std of the identity ratings per method and scene, then per method."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in ratings.get("images", {}).values():
        if not isinstance(entry, dict):
            continue
        key = (str(entry.get("method", "?")), str(entry.get("scene", "?")))
        groups.setdefault(key, []).append(entry)
    rows = []
    for method in sorted({m for m, _ in groups}):
        scenes = sorted(s for m, s in groups if m == method)
        rows += [_row(method, s, groups[(method, s)]) for s in scenes]
        if len(scenes) > 1:
            rows.append(_row(method, "(all)", [e for s in scenes for e in groups[(method, s)]]))
    return rows


def format_summary(rows: list[Row]) -> str:
    if not rows:
        return "no ratings yet"
    head = ("method", "scene", "identity (1-5)", "n", "images", "kept", "rejected")
    body = [
        (
            r.method,
            r.scene,
            "-" if not r.n else f"{r.mean:.2f} ± {r.std:.2f}",
            str(r.n),
            str(r.images),
            str(r.kept),
            str(r.rejected),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *body)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
