"""Storyboards: a contact sheet PNG and a self-contained HTML page per storyboard.

Panels appear in order, ``columns`` per row; each cell shows the panel's first image with its
caption (PIL's default font). The HTML page inlines every panel image as a ``data:`` URI, so it
can be mailed or archived as one file, and lists each panel's caption and prompt (escaped); a
"show regions" switch draws each regional panel's boxes, labelled, over its images (what
`scenecraft layout` draws before rendering), and the captions list the region prompts.
Panels whose images are not on disk yet are drawn as grey placeholders.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from scenecraft.plan import Region, RenderJob, RenderPlan, StoryboardSpec

# the wrappers: a full disk or read-only folder is `output-unwritable`, as for the images
from scenecraft.render.paths import atomic_write, atomic_write_text, confined, image_path
from scenecraft.render.png import png_size

CELL = 256  # longest side of a panel in the contact sheet, pixels
CAPTION_H = 18  # caption strip under each panel, pixels
PAD = 8  # gap between cells and around the sheet, pixels
TITLE_H = 22  # title strip above the grid when the storyboard has a `title`, pixels
WORD_GAP = 4  # least pixels between caption words (PIL's default font has a 2-px space)


@dataclass(frozen=True)
class Panel:
    index: int  # 0-based panel index
    caption: str  # caption as written (may be empty)
    prompt: str  # prompt of the panel's first job
    images: tuple[Path, ...]  # images on disk, in job order
    regions: tuple[Region, ...] = ()  # the regions of the panel's first job (regional sampling)


def collect_panels(plan: RenderPlan, board: StoryboardSpec, out: Path, suffix: str) -> list[Panel]:
    jobs: dict[str, RenderJob] = {j.id: j for j in plan.jobs}
    panels = []
    for spec in sorted(board.panels, key=lambda p: p.index):
        pj = [jobs[i] for i in spec.job_ids if i in jobs]
        # a PNG of the job's size only (its header, read before any decoding): a foreign
        # picture there (a 13,300x13,300 one) is drawn as "not rendered", never decoded
        paths = [image_path(out, j, suffix) for j in pj]
        sizes = [(j.width, j.height) for j in pj]
        panels.append(
            Panel(
                spec.index,
                spec.caption or "",
                pj[0].prompt if pj else "",
                tuple(p for p, size in zip(paths, sizes, strict=True) if png_size(p) == size),
                pj[0].regions if pj else (),
            )
        )
    return panels


def contact_sheet(panels: list[Panel], columns: int, title: str | None = None) -> Any:
    """The sheet as a PIL image: a grid of ``columns`` cells, caption strip under each, and a
    title strip above the grid when ``title`` is given."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    font = ImageFont.load_default()
    cols = max(1, min(columns, len(panels) or 1))
    rows = max(1, -(-len(panels) // cols))
    cell_w, cell_h = CELL, CELL + CAPTION_H
    top = TITLE_H if title else 0
    width = PAD + cols * (cell_w + PAD)
    sheet = Image.new("RGB", (width, top + PAD + rows * (cell_h + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        big = ImageFont.load_default(size=14) if hasattr(font, "font_variant") else font
        _draw_words(draw, (PAD, PAD + 2), _fit(draw, title, big, width - 2 * PAD), big)
    for k, panel in enumerate(panels):
        x = PAD + (k % cols) * (cell_w + PAD)
        y = top + PAD + (k // cols) * (cell_h + PAD)
        thumb = None
        if panel.images:
            try:
                with Image.open(panel.images[0]) as im:
                    thumb = ImageOps.contain(im.convert("RGB"), (CELL, CELL))  # up or down
            except Exception:  # a damaged panel image: drawn as missing, rendered on a re-run
                thumb = None
        if thumb is not None:
            sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
        else:
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=(200, 200, 200))
            draw.text((x + 6, y + 6), "not rendered", fill=(80, 80, 80), font=font)
        text = panel_label(panel.index, panel.caption)
        _draw_words(draw, (x + 2, y + CELL + 3), _fit(draw, text, font, CELL - 4), font)
    return sheet


def _space(draw: Any, font: Any) -> float:
    return max(float(draw.textlength(" ", font=font)), WORD_GAP)


def _text_width(draw: Any, text: str, font: Any) -> float:
    words = text.split(" ")
    gaps = _space(draw, font) * (len(words) - 1)
    return sum(float(draw.textlength(w, font=font)) for w in words) + gaps


def _draw_words(draw: Any, at: tuple[float, float], text: str, font: Any) -> None:
    """Draw ``text`` word by word, at least WORD_GAP pixels apart, so spaces stay visible."""
    x, y = at
    for word in text.split(" "):
        if word:
            draw.text((x, y), word, fill="black", font=font)
        x += float(draw.textlength(word, font=font)) + _space(draw, font)


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """Truncate ``text`` with an ellipsis so it fits ``width`` pixels."""
    if _text_width(draw, text, font) <= width:
        return text
    while text and _text_width(draw, text + "…", font) > width:
        text = text[:-1]
    return text + "…"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
  document.body.setAttribute("data-loaded", ok === imgs.length ? "true" : "false");
  var scales = imgs.filter(function (i) { return i.naturalWidth > 0; })
    .map(function (i) { return i.getBoundingClientRect().width / i.naturalWidth; });
  document.body.setAttribute("data-min-scale",
    scales.length ? Math.min.apply(null, scales).toFixed(2) : "0");
});
"""


def _img_class(path: Path) -> str:
    """``small`` for images under a cell's size: the page scales them up without blurring."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return ' class="small"' if max(im.size) < CELL else ""
    except OSError:
        return ""


def _boxes(regions: tuple[Region, ...]) -> str:
    """Each region as a labelled box over the image, in % of its size (hidden until the page's
    "show regions" switch is on)."""
    out = []
    for r in regions:
        x0, y0, x1, y1 = (100 * v for v in r.box)
        out.append(
            f'<div class="box" data-subject="{html.escape(r.subject)}" style="left:{x0:g}%;'
            f'top:{y0:g}%;width:{x1 - x0:g}%;height:{y1 - y0:g}%">'
            f"<span>{html.escape(r.subject)}</span></div>"
        )
    return "".join(out)


_NUMBERED = re.compile(r"\s*\d+\s*[.):]")  # "1. Market day", "2) ...", "3: ..."


def panel_label(index: int, caption: str) -> str:
    """The caption under panel ``index`` (0-based): numbered ``"1. caption"`` unless the caption
    already starts with a number, as the docs' own examples do (``panel market "1. Market day"``)."""
    if _NUMBERED.match(caption):
        return caption.strip()
    return f"{index + 1}. {caption}".strip()


def html_page(title: str, panels: list[Panel], columns: int) -> str:
    """One self-contained page: a CSS grid of panels, captions and prompts escaped; images fill
    their cell (small ones scaled up with crisp pixels); regional panels carry their boxes."""
    cells = []
    for panel in panels:
        boxes = _boxes(panel.regions)
        imgs = (
            "".join(
                f'<div class="frame"><img{_img_class(p)} src="{_data_uri(p)}" '
                f'alt="{html.escape(panel.caption or p.stem)}">{boxes}</div>'
                for p in panel.images
            )
            or '<div class="missing">not rendered</div>'
        )
        regions = "".join(
            f"<li><b>{html.escape(r.subject)}</b> {html.escape(r.prompt)}</li>"
            for r in panel.regions
        )
        cells.append(
            f'<figure data-panel="{panel.index}">{imgs}<figcaption>'
            f"<b>{html.escape(panel_label(panel.index, panel.caption))}</b>"
            f'<p class="prompt">{html.escape(panel.prompt)}</p>'
            + (f'<ul class="regions">{regions}</ul>' if regions else "")
            + "</figcaption></figure>"
        )
    switch = (
        '<input type="checkbox" id="show-regions"><label for="show-regions"> show regions</label>'
        if any(p.regions for p in panels)
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>"
        f"body{{font-family:sans-serif;margin:16px}}"
        f".grid{{display:grid;grid-template-columns:repeat({max(1, columns)},1fr);gap:12px}}"
        "figure{margin:0}img{width:100%;height:auto;display:block}"
        "img.small{image-rendering:pixelated}"
        ".prompt{color:#555;font-size:12px}.missing{background:#ccc;padding:40px}"
        ".frame{position:relative}.box{display:none;position:absolute;box-sizing:border-box;"
        "border:2px solid #e6007a;color:#fff;font-size:11px}"
        ".box span{background:#e6007a;padding:0 3px}"
        "#show-regions:checked ~ .grid .box{display:block}"
        ".regions{color:#555;font-size:12px;padding-left:16px;margin:0}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{switch}"
        f'<div class="grid">{"".join(cells)}</div><script>{_SCRIPT}</script></body></html>\n'
    )


def write_storyboards(
    plan: RenderPlan, out_dir: str | Path, *, adapters: bool = False
) -> list[Path]:
    """Write ``<stem>/<storyboard>.png`` and ``.html`` for every storyboard with an image on disk."""
    out = Path(out_dir)
    suffix = ".adapters" if adapters else ""
    stem = Path(plan.file).stem or "scene"
    written: list[Path] = []
    for board in plan.storyboards:
        panels = collect_panels(plan, board, out, suffix)
        if not any(p.images for p in panels):
            continue
        png = confined(out, stem, board.name + suffix + ".png")
        sheet = contact_sheet(panels, board.columns, board.title)
        meta = {
            "storyboard": board.name,
            "title": board.title,
            "panels": [[str(i) for i in p.images] for p in panels],
        }
        atomic_write(png, _sheet_writer(sheet, meta))
        page = confined(out, stem, board.name + suffix + ".html")
        atomic_write_text(page, html_page(board.title or board.name, panels, board.columns))
        written += [png, page]
    return written


def _sheet_writer(sheet: Any, meta: dict[str, Any]) -> Callable[[IO[bytes]], None]:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("scenecraft", json.dumps(meta))
    return lambda f: sheet.save(f, format="PNG", pnginfo=info)
