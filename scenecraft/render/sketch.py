"""Layout sketches: each scene's regions drawn as labelled boxes, before anything renders.

``scenecraft layout FILE`` writes ``OUT/<file>/<scene>/layout.png`` per scene: the canvas at
the scene's aspect ratio, one coloured box per region (its subject and prompt written inside),
the global prompt underneath. No model is loaded and torch is never imported: a user sees the
composition on any machine.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from scenecraft.files import atomic_write
from scenecraft.plan import RenderJob, RenderPlan
from scenecraft.render.paths import confined
from scenecraft.render.selection import select_jobs

LONG_SIDE = 512  # sketch size in pixels along the longer side of the canvas
CAPTION = 64  # pixels under the canvas for the global prompt
COLOURS = ((230, 80, 80), (70, 130, 230), (60, 170, 90), (230, 160, 40), (160, 90, 210))


def sketch(job: RenderJob) -> Image.Image:
    """The regions of ``job`` on its canvas (a single prompt when it has none)."""
    scale = LONG_SIDE / max(job.width, job.height)
    w, h = round(job.width * scale), round(job.height * scale)
    image = Image.new("RGB", (w, h + CAPTION), (245, 245, 245))
    draw = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.load_default()
    draw.rectangle((0, 0, w - 1, h - 1), outline=(120, 120, 120))
    for i, region in enumerate(job.regions):
        colour = COLOURS[i % len(COLOURS)]
        x0, y0, x1, y1 = region.box
        box = (x0 * w + 2, y0 * h + 2, x1 * w - 3, y1 * h - 3)
        draw.rectangle(box, fill=(*colour, 40), outline=(*colour, 255), width=3)
        width_chars = max(8, int((box[2] - box[0]) / 6.5))
        text = "\n".join([region.subject, *textwrap.wrap(region.prompt, width_chars)[:6]])
        draw.multiline_text((box[0] + 6, box[1] + 6), text, fill=(30, 30, 30), font=font)
    caption = ("global: " if job.regions else "prompt: ") + job.prompt
    draw.multiline_text(
        (6, h + 6),
        "\n".join(textwrap.wrap(caption, int(w / 6.5))[:4]),
        fill=(30, 30, 30),
        font=font,
    )
    return image


def sketch_path(out_dir: Path, job: RenderJob) -> Path:
    stem = Path(job.file).stem or "scene"
    return confined(out_dir, stem, job.scene, "layout.png")


def write_sketches(plan: RenderPlan, out_dir: str | Path, only: Iterable[str] = ()) -> list[Path]:
    """One sketch per scene (its first job: every job of a scene has the same layout)."""
    out = Path(out_dir)
    written: list[Path] = []
    seen: set[str] = set()
    for job in select_jobs(plan, only):
        if job.scene in seen:
            continue
        seen.add(job.scene)
        path = sketch_path(out, job)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = sketch(job)
        atomic_write(path, lambda f, im=image: im.save(f, format="PNG"))  # type: ignore[misc]
        written.append(path)
    return written
