"""Reference pictures of the toy concepts: each concept's ground-truth sprite, drawn by the world.

These are what `scenecraft review` shows beside a rendered image (the concepts' ``references``
in scenes/toyworld.scene point at them). Each is the sprite alone, on the world's plain grey
backdrop, with a small margin; no hat or crown (those are attributes, not identity).

    python -m scenecraft.toyworld.references scenes/toyworld-references

rewrites them (a test checks that the shipped files are what the world draws now).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from scenecraft.files import atomic_write
from scenecraft.toyworld.world import CONCEPTS, PLAIN_BACKGROUND, SPRITE, sprite_pixels

MARGIN = 4  # pixels around the sprite


def reference_image(name: str) -> Image.Image:
    """The concept's sprite on plain grey, (SPRITE + 2 * MARGIN) pixels square."""
    rgb, mask = sprite_pixels(CONCEPTS[name].sprite)
    side = SPRITE + 2 * MARGIN
    tile = np.zeros((side, side, 3), dtype=np.uint8)
    tile[:] = PLAIN_BACKGROUND[0][1]
    tile[MARGIN : MARGIN + SPRITE, MARGIN : MARGIN + SPRITE][mask] = rgb[mask]
    return Image.fromarray(tile)


def write_references(folder: Path) -> list[Path]:
    """``folder/<concept>.png`` for every toy concept, written atomically."""

    paths = []
    for name in sorted(CONCEPTS):
        path = folder / f"{name}.png"
        image = reference_image(name)

        def save(f: IO[bytes], image: Image.Image = image) -> None:
            image.save(f, format="PNG")

        atomic_write(path, save)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("scenes/toyworld-references"))
    args = parser.parse_args(argv)
    for path in write_references(args.folder):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
