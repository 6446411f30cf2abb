"""How far the judge agrees with pictures labelled by eye (the validation set of issue 26).

The labelled set (``tests/data/judge_validation/``: pictures of the toy model's own output,
``manifest.json`` saying how each was rendered, ``labels.json`` what each shows, labelled by
eye) is read here and the judge's sprites compared with the labels, picture by picture:

- a *unit* is a labelled sprite (not ``unsure``) or a sprite the judge found beyond the
  picture's labelled count (an extra); units are what agreement is a share of;
- per picture, labelled and found identities are matched one to one by identity (a multiset
  intersection: order and position play no part); a labelled sprite agrees when it is matched;
- a found sprite beyond the picture's labelled count (sure and unsure) is an extra, each a
  disagreeing unit (a misread sprite is one disagreement: its label, not also an extra);
- attribute agreement: over matched sprites whose labelled attribute is sure, whether the
  judge reads the same attribute (a hat, a crown or none).

Each unit belongs to the failure modes its picture or sprite has (``MODES``): a patterned
sprite on a light backdrop, a picture whose placement makes sprites touch (on top of, beside),
a hat, a crown, a spotted sprite (whose body box the model often draws a cell too wide); a unit
in none of them is ``other``. Agreement is reported overall, per mode, and on the fitting and
held-out seeds separately.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from scenecraft.toyworld.judge import Found, find_sprites

MODES = ("light backdrop patterns", "touching sprites", "hats", "crowns", "spotted", "other")
LIGHT = ("in the desert", None)  # backdrops lighter than the world's ink is far from
TOUCHING = ("on-top-of", "beside")
UNSURE = "unsure"


@dataclass
class Tally:
    """Agreeing units of all units, per mode and overall."""

    agree: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)
    attribute_agree: int = 0
    attribute_total: int = 0

    def add(self, modes: Iterable[str], ok: bool) -> None:
        for mode in (*modes, "all"):
            self.total[mode] += 1
            self.agree[mode] += ok

    def share(self, mode: str = "all") -> float | None:
        return self.agree[mode] / self.total[mode] if self.total[mode] else None

    def summary(self) -> dict[str, Any]:
        return {
            mode: {"agreement": round(s, 4), "agree": self.agree[mode], "units": self.total[mode]}
            for mode in ("all", *MODES)
            if (s := self.share(mode)) is not None
        } | {
            "attribute": {
                "agreement": round(self.attribute_agree / max(self.attribute_total, 1), 4),
                "agree": self.attribute_agree,
                "units": self.attribute_total,
            }
        }


def words(found: Found) -> str:
    """A found sprite's identity as labels write it: ``yellow striped circle``."""
    shape, colour, pattern = found.identity
    return f"{colour} {pattern} {shape}"


def load(folder: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(manifest entry, label) per picture, in index order."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["pictures"]
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))["pictures"]
    by_index = {p["index"]: p for p in labels}
    return [(m, by_index[m["index"]]) for m in manifest]


def sprite_modes(entry: dict[str, Any], identity: str | None, attribute: str | None) -> list[str]:
    """The failure modes a unit of this picture belongs to (``identity``: its labelled words,
    None for an extra sprite the judge found)."""
    modes = []
    pattern = identity.split()[1] if identity else None
    asked = set(entry.get("attributes", {}).values())
    if entry["setting"] in LIGHT and (pattern is None or pattern != "plain"):
        modes.append("light backdrop patterns")
    if any(p[1] in TOUCHING for p in entry["placements"]):
        modes.append("touching sprites")
    if attribute == "a hat" or (attribute is None and "a hat" in asked):
        modes.append("hats")
    if attribute == "a crown" or (attribute is None and "a crown" in asked):
        modes.append("crowns")
    if pattern == "spotted":
        modes.append("spotted")
    return modes or ["other"]


def score_picture(
    entry: dict[str, Any], label: dict[str, Any], found: list[Found], tally: Tally
) -> list[str]:
    """Add one picture's units to ``tally``; the disagreements, in words."""
    sure = [s for s in label["sprites"] if s["identity"] != UNSURE]
    left = Counter(words(f) for f in found)
    by_words: dict[str, list[Found]] = {}
    for f in found:
        by_words.setdefault(words(f), []).append(f)
    problems = []
    for s in sure:
        ok = left[s["identity"]] > 0
        tally.add(sprite_modes(entry, s["identity"], s["attribute"]), ok)
        if not ok:
            problems.append(f"missed {s['identity']}")
            continue
        left[s["identity"]] -= 1
        f = by_words[s["identity"]].pop(0)
        if s["attribute"] != UNSURE:
            tally.attribute_total += 1
            tally.attribute_agree += f.attribute == s["attribute"]
            if f.attribute != s["attribute"]:
                problems.append(f"{s['identity']} wears {f.attribute} (label {s['attribute']})")
    unmatched = sorted(left.elements())
    if unmatched:
        problems.append(f"read as {', '.join(unmatched)}")
    for _ in range(len(found) - len(label["sprites"])):  # more sprites found than drawn
        tally.add(sprite_modes(entry, None, None), False)
    return problems


def measure(
    folder: Path,
    judge: Callable[[Image.Image], list[Found]] = find_sprites,
    keep: Callable[[dict[str, Any]], bool] = lambda entry: True,
) -> tuple[Tally, dict[int, list[str]]]:
    """The judge's agreement with the labels over the pictures ``keep`` chooses; the
    disagreements per picture index."""
    tally = Tally()
    problems = {}
    for entry, label in load(folder):
        if not keep(entry):
            continue
        with Image.open(folder / entry["file"]) as im:
            found = judge(im.convert("RGB"))
        if wrong := score_picture(entry, label, found, tally):
            problems[entry["index"]] = wrong
    return tally, problems
