"""Storyboards: the contact sheet and the HTML page, opened in headless Chromium."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from scenecraft.render.engine import render
from scenecraft.render.storyboard import (
    CAPTION_H,
    CELL,
    PAD,
    TITLE_H,
    WORD_GAP,
    Panel,
    contact_sheet,
    write_storyboards,
)
from tests._fixtures_render import (
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    pixels,
    tiny_pipe,
)
from tests._optional import require_executable


def chromium_dom(page: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` after load, as headless Chromium sees it.

    Without Chromium the test is skipped with the reason shown; under SCENECRAFT_CI=1 it fails.
    """
    exe = require_executable(
        "chromium", "chromium-browser", install="apt-get install chromium (CI installs it)"
    )
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_storyboard_sheet_and_page(tmp_path: Path) -> None:
    plan = make_plan(storyboard=True)
    result = render(plan, tmp_path, pipe=tiny_pipe(), only=["tale"], batch_size=3)
    assert len(result.written) == 3
    sheet_path, page = result.storyboards
    assert sheet_path.name == "tale.png" and page.name == "tale.html"
    # contact sheet: 3 panels in 2 columns -> 2 rows; each cell shows its panel scaled to CELL
    sheet = pixels(sheet_path)
    assert sheet.shape == (PAD + 2 * (CELL + CAPTION_H + PAD), PAD + 2 * (CELL + PAD), 3)
    order = sorted(result.written, key=lambda p: p.parent.name)  # 01-duo, 02-solo, 03-duo
    for k, path in enumerate(order):
        x, y = PAD + (k % 2) * (CELL + PAD), PAD + (k // 2) * (CELL + CAPTION_H + PAD)
        cell = sheet[y : y + CELL, x : x + CELL].astype(int)
        want = np.asarray(Image.open(path).convert("RGB").resize((CELL, CELL), Image.LANCZOS))
        assert np.abs(cell - want).mean() < 6
        caption = sheet[y + CELL : y + CELL + CAPTION_H, x : x + CELL]
        assert (caption < 128).any()  # caption text drawn
    assert (
        sheet[PAD + CELL + CAPTION_H + PAD :, PAD + CELL + PAD :] == 255
    ).all()  # 4th cell empty
    # HTML: captions and prompts escaped, never raw markup
    html = page.read_text()
    assert "Arrival &lt;b&gt;&amp;&lt;/b&gt; &quot;hello&quot;" in html
    assert "panel 0: a man &amp; &lt;a dog&gt;" in html and "<a dog>" not in html
    assert html.count('src="data:image/png;base64,') == 3
    dom = chromium_dom(page, tmp_path)
    assert 'data-images="3/3"' in dom and 'data-loaded="true"' in dom
    assert dom.count("<figure") == 3
    # issue 11: 32-px panels are scaled up to their cell, with crisp pixels
    scale = float(dom.split('data-min-scale="')[1].split('"')[0])
    assert scale > 4, scale
    assert html.count('<img class="small"') == 3 and "image-rendering:pixelated" in html


def test_page_script_reports_a_broken_image(tmp_path: Path) -> None:
    plan = make_plan(storyboard=True)
    render(plan, tmp_path, pipe=tiny_pipe(), only=["tale"], batch_size=3)
    page = tmp_path / "story" / "tale.html"
    broken = page.read_text().replace('src="data:image/png;base64,', 'src="missing.png#', 1)
    page.write_text(broken)
    dom = chromium_dom(page, tmp_path)
    assert 'data-images="2/3"' in dom and 'data-loaded="false"' in dom


def test_missing_panels_are_placeholders(tmp_path: Path) -> None:
    plan = make_plan(storyboard=True)
    result = render(plan, tmp_path, pipe=tiny_pipe(), only=["tale"], batch_size=3)
    middle = next(p for p in result.written if p.parent.name == "02-solo")
    middle.unlink()
    sheet_path, page = write_storyboards(plan, tmp_path)
    sheet = pixels(sheet_path)
    x = PAD + CELL + PAD
    assert (sheet[PAD + CELL // 2, x + CELL // 2] == 200).all()  # grey placeholder
    assert page.read_text().count("not rendered") == 1
    for p in result.written:
        if p.exists():
            p.unlink()
    assert write_storyboards(plan, tmp_path) == []  # nothing on disk: no sheet


def ink_gaps(strip: np.ndarray) -> list[int]:
    """Widths of the blank column runs between inked columns of a caption strip."""
    inked = (strip < 160).any(axis=(0, 2))
    cols = np.flatnonzero(inked)
    return [int(b - a - 1) for a, b in zip(cols[:-1], cols[1:], strict=True) if b - a > 1]


def test_sheet_captions_keep_their_spaces(tmp_path: Path) -> None:
    # issue 11: PIL's default font draws a 2-px space, so "at sea" read as "atsea"
    path = tmp_path / "p.png"
    Image.new("RGB", (32, 32), "white").save(path)
    sheet = np.asarray(contact_sheet([Panel(0, "at sea", "", (path,))], 1))
    strip = sheet[PAD + CELL : PAD + CELL + CAPTION_H, PAD : PAD + CELL]
    gaps = ink_gaps(strip)  # "1." | "at" | "sea": the two widest gaps are the spaces
    assert len(gaps) >= 2 and sorted(gaps)[-2] >= WORD_GAP


def test_title_heads_the_sheet_and_the_page(tmp_path: Path) -> None:
    plan = make_plan(storyboard=True)
    board = plan.storyboards[0].model_copy(update={"title": "A <long> day"})
    plan = plan.model_copy(update={"storyboards": (board,)})
    render(plan, tmp_path, pipe=tiny_pipe(), only=["tale"], batch_size=3)
    sheet = pixels(tmp_path / "story" / "tale.png")
    assert sheet.shape[0] == TITLE_H + PAD + 2 * (CELL + CAPTION_H + PAD)
    assert (sheet[PAD : PAD + TITLE_H - 4] < 128).any()  # title text drawn above the grid
    page = (tmp_path / "story" / "tale.html").read_text()
    assert "<title>A &lt;long&gt; day</title>" in page and "<h1>A &lt;long&gt; day</h1>" in page


def test_page_draws_each_regional_panels_boxes_behind_a_switch(tmp_path: Path) -> None:
    from scenecraft.plan import Region
    from scenecraft.render.storyboard import html_page

    path = tmp_path / "p.png"
    Image.new("RGB", (64, 64), "white").save(path)
    regions = (
        Region(subject="ziggy", box=(0.0, 0.0, 0.5, 1.0), prompt="<ZIGGY> man & <dog>"),
        Region(subject="momo", box=(0.5, 0.25, 1.0, 1.0), prompt="<MOMO> dog"),
    )
    page = html_page("t", [Panel(0, "two", "man and dog", (path,), regions)], 1)
    assert page.count('<div class="box"') == 2 and 'id="show-regions"' in page
    assert 'style="left:50%;top:25%;width:50%;height:75%"' in page  # the box in % of the image
    assert "<li><b>ziggy</b> &lt;ZIGGY&gt; man &amp; &lt;dog&gt;</li>" in page  # escaped
    assert "#show-regions:checked ~ .grid .box{display:block}" in page  # hidden until switched
    plain = html_page("t", [Panel(0, "one", "a man", (path,))], 1)
    assert '<div class="box"' not in plain and "show-regions" not in plain.split("</style>")[1]
