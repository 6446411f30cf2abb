"""`scenecraft review`: the catalog, the HTTP API (and what it refuses), the summary, the page
driven in headless Chromium (real clicks through the DevTools protocol), the toy references."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from scenecraft.cli import main
from scenecraft.render.outputs import Manifest, write_png
from scenecraft.review.catalog import load_catalog, method_of
from scenecraft.review.server import ReviewServer
from tests import _cdp
from tests._optional import missing

ROOT = Path(__file__).parent.parent


def needs_chromium() -> None:
    """Skip with the reason where no browser is installed, but fail under SCENECRAFT_CI=1
    (the shared rule of tests/_optional.py)."""
    if _cdp.chromium_path() is None:
        missing("chromium is not installed (apt-get install chromium)")


def test_the_browser_guard_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_cdp, "chromium_path", lambda: None)
    monkeypatch.delenv("SCENECRAFT_CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        needs_chromium()
    monkeypatch.setenv("SCENECRAFT_CI", "1")
    with pytest.raises(pytest.fail.Exception, match="SCENECRAFT_CI=1"):
        needs_chromium()


# ------------------------------------------------------------------------------ fixtures


def _png(path: Path, colour: tuple[int, int, int], size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def _image(out: Path, rel: str, scene: str, seed: int, method: str, mode: str) -> dict[str, Any]:
    """One PNG written the way the render engine writes it (same chunks, same fields)."""
    job = {
        "id": f"{scene}-{seed}",
        "file": "/scenes/story.scene",
        "scene": scene,
        "prompt": f"<ZIGGY> man {'and <MOMO> dog ' if scene == 'duo' else ''}on grass",
        "seed": seed,
        "concepts": ["ziggy", "momo"] if scene == "duo" else ["ziggy"],
        "storyboard": None,
    }
    provenance = {
        "version": 1,
        "key": f"k-{rel}",
        "job": job,
        "seed": seed,
        "merge_method": method,
        "mode": mode,
    }
    write_png(out / rel, Image.new("RGB", (32, 32), (seed * 40, 90, 20)), "params", provenance)
    return {"key": provenance["key"], "job": job["id"], "scene": scene, "seed": seed, "n": 0}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """OUT with a merged (loraclr) run and an adapters run of scenes `duo` and `solo`, their
    manifests naming reference pictures that lie outside OUT (as real references do)."""
    out = tmp_path / "out"
    refs = {
        "ziggy": [str(_png(tmp_path / "refs" / "ziggy.png", (250, 210, 40)))],
        "momo": [
            str(_png(tmp_path / "refs" / "momo-1.png", (220, 40, 40))),
            str(_png(tmp_path / "refs" / "momo-2.jpg", (200, 30, 30))),
        ],
    }
    concepts = {
        n: {"tokens": [f"<{n.upper()}>"], "class": None, "references": r} for n, r in refs.items()
    }
    (tmp_path / "secret.txt").write_text("not for the page")
    for suffix, method, mode in (("", "loraclr", "merged"), (".adapters", "loraclr", "adapters")):
        manifest = Manifest(out / "story" / f"manifest{suffix}.json", {"concepts": concepts})
        for scene in ("duo", "solo"):
            for seed in (1, 2):
                rel = f"story/{scene}/{seed}{suffix}.png"
                manifest.record(rel, _image(out, rel, scene, seed, method, mode))
        manifest.save()
    return out


@pytest.fixture
def server(run_dir: Path) -> Iterator[ReviewServer]:
    srv = ReviewServer(run_dir, 0).start()
    try:
        yield srv
    finally:
        srv.stop()


def request(
    srv: ReviewServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """A raw request: the path goes out exactly as given (no client-side normalising)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def rate(srv: ReviewServer, **body: Any) -> tuple[int, Any]:
    status, data = request(srv, "POST", "/api/rate", body)
    return status, json.loads(data)


def stored(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "ratings.json").read_text())["images"])


# ------------------------------------------------------------------------------- catalog


def test_catalog_reads_manifests_and_provenance(run_dir: Path) -> None:
    cat = load_catalog(run_dir)
    assert len(cat.items) == 8 and cat.problems == []
    by_id = {i.id: i for i in cat.items}
    duo = by_id["story/duo/1.png"]
    assert (duo.scene, duo.method, duo.mode, duo.seed) == ("duo", "loraclr", "merged", 1)
    assert by_id["story/duo/1.adapters.png"].method == "adapters"
    assert [c.name for c in duo.concepts] == ["ziggy", "momo"]
    names = {c.name: [cat.references[r].name for r in c.references] for c in duo.concepts}
    assert names == {"ziggy": ["ziggy.png"], "momo": ["momo-1.png", "momo-2.jpg"]}
    assert len(cat.references) == 3  # shared across images, listed once
    # blind order: within a scene, the two methods are interleaved by a fixed hash, not grouped
    assert [i.scene for i in cat.items] == ["duo"] * 4 + ["solo"] * 4
    assert method_of({"merge_method": "ties", "mode": "merged"}) == "ties"
    regional = {"merge_method": "loraclr", "mode": "merged", "regions": [{"concept": "ziggy"}]}
    assert method_of(regional) == "loraclr + regions"
    assert method_of({**regional, "mode": "adapters"}) == "adapters + regions"
    assert method_of({"merge_method": "loraclr", "mode": "merged", "regions": []}) == "loraclr"


def test_engine_manifest_names_the_concepts_references(tmp_path: Path) -> None:
    """The real render engine records each concept's references; the catalog finds them."""
    from scenecraft.render.engine import render
    from tests._fixtures_render import make_plan, tiny_pipe

    ref = _png(tmp_path / "refs" / "ziggy.png", (250, 210, 40))
    plan = make_plan(seeds=(1,), scenes=("duo",))
    concepts = list(plan.merge.concepts)
    concepts[0] = concepts[0].model_copy(update={"references": (str(ref),)})
    merge = plan.merge.model_copy(update={"concepts": tuple(concepts)})
    plan = plan.model_copy(update={"merge": merge})
    render(plan, tmp_path / "out", pipe=tiny_pipe())
    manifest = json.loads((tmp_path / "out" / "story" / "manifest.json").read_text())
    assert manifest["concepts"]["ziggy"]["references"] == [str(ref)]
    assert manifest["concepts"]["momo"]["references"] == []
    cat = load_catalog(tmp_path / "out")
    (item,) = cat.items
    assert (item.scene, item.method, item.mode) == ("duo", "none", "base")
    assert [cat.references[r] for r in item.concepts[0].references] == [ref.resolve()]
    assert item.concepts[1].references == ()


# ----------------------------------------------------------------------------------- API


def test_api_items_images_and_references(server: ReviewServer) -> None:
    status, body = request(server, "GET", "/api/items")
    data = json.loads(body)
    assert status == 200 and len(data["items"]) == 8 and data["ratings"] == {}
    assert all("method" not in item for item in data["items"])  # raters are blind to it
    first = data["items"][0]
    status, png = request(server, "GET", first["image"])
    assert status == 200 and png == server.catalog.items[0].path.read_bytes()
    ref_url = first["concepts"][0]["references"][0]
    status, ref = request(server, "GET", ref_url)
    assert (
        status == 200 and ref == server.catalog.references[int(ref_url.split("/")[-1])].read_bytes()
    )
    status, page = request(server, "GET", "/")
    assert status == 200 and b"scenecraft review" in page


def test_api_writes_ratings_atomically(server: ReviewServer, run_dir: Path) -> None:
    status, entry = rate(server, image="story/duo/1.png", concept="momo", identity=4)
    assert status == 200 and entry["identity"] == {"momo": 4} and "method" not in entry
    assert rate(server, image="story/duo/1.png", keep=False)[0] == 200
    assert rate(server, image="story/duo/1.png", concept="momo", identity=2)[0] == 200
    saved = stored(run_dir)["story/duo/1.png"]
    assert saved["identity"] == {"momo": 2} and saved["keep"] is False
    assert (saved["scene"], saved["method"], saved["concepts"]) == (
        "duo",
        "loraclr",
        ["ziggy", "momo"],
    )
    # clearing a rating
    assert rate(server, image="story/duo/1.png", concept="momo", identity=None)[0] == 200
    assert stored(run_dir)["story/duo/1.png"]["identity"] == {}
    # many raters at once: every rating lands, the file stays whole, no temp files remain
    images = [i.id for i in server.catalog.items]
    threads = [
        threading.Thread(
            target=rate,
            args=(server,),
            kwargs={"image": i, "concept": "ziggy", "identity": 1 + k % 5},
        )
        for k, i in enumerate(images)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    saved_all = stored(run_dir)
    assert {i: saved_all[i]["identity"]["ziggy"] for i in images} == {
        i: 1 + k % 5 for k, i in enumerate(images)
    }
    assert sorted(p.name for p in run_dir.iterdir()) == ["ratings.json", "story"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"image": "story/duo/1.png", "concept": "ziggy", "identity": 6}, 400),
        ({"image": "story/duo/1.png", "concept": "ziggy", "identity": 0}, 400),
        ({"image": "story/duo/1.png", "concept": "ziggy", "identity": True}, 400),
        ({"image": "story/duo/1.png", "concept": "ziggy", "identity": 2.5}, 400),
        ({"image": "story/solo/1.png", "concept": "momo", "identity": 3}, 400),  # not in solo
        ({"image": "story/duo/9.png", "concept": "ziggy", "identity": 3}, 400),
        ({"image": "story/duo/1.png", "keep": "yes"}, 400),
        ({"image": "story/duo/1.png"}, 400),
        (["story/duo/1.png"], 400),
    ],
)
def test_api_refuses_bad_ratings(
    server: ReviewServer, run_dir: Path, body: Any, status: int
) -> None:
    got, data = request(server, "POST", "/api/rate", body)
    assert got == status and "error" in json.loads(data)
    assert not (run_dir / "ratings.json").exists()


def test_api_refuses_foreign_hosts_and_form_posts(server: ReviewServer, run_dir: Path) -> None:
    body = {"image": "story/duo/1.png", "keep": True}
    assert request(server, "GET", "/api/items", headers={"Host": "evil.example:80"})[0] == 403
    assert (
        request(server, "POST", "/api/rate", body, headers={"Host": f"evil.example:{server.port}"})[
            0
        ]
        == 403
    )
    form = b"image=story/duo/1.png&keep=true"
    assert (
        request(
            server,
            "POST",
            "/api/rate",
            form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )[0]
        == 415
    )
    assert request(server, "POST", "/api/rate", b"{not json")[0] == 400
    assert request(server, "POST", "/api/items", body)[0] == 404
    assert not (run_dir / "ratings.json").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/image/../../secret.txt",
        "/image/..%2f..%2fsecret.txt",
        "/image/%2e%2e/%2e%2e/secret.txt",
        "/image/0/../../../secret.txt",
        "/image/-1",
        "/image/8",
        "/image/1e0",
        "/image/%30",
        "/ref/3",
        "/ref/../secret.txt",
        "/ref/0/..",
        "//etc/passwd",
        "/story/duo/1.png",
        "/ratings.json",
        "/../secret.txt",
        "/page.html",
    ],
)
def test_no_path_traversal(server: ReviewServer, path: str) -> None:
    status, body = request(server, "GET", path)
    assert status == 404, (path, status)
    assert b"not for the page" not in body


def test_manifest_cannot_smuggle_files_in(tmp_path: Path, run_dir: Path) -> None:
    """Entries that point outside OUT (by `..` or by a symlink), and references that are not
    image files, are left out of the catalog, so no URL can reach them."""
    outside = tmp_path / "outside.png"
    _image(tmp_path, "outside.png", "duo", 1, "loraclr", "merged")
    (run_dir / "story" / "link.png").symlink_to(outside)
    manifest_path = run_dir / "story" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["images"]["../../outside.png"] = {}
    manifest["images"]["story/link.png"] = {}
    manifest["images"]["/etc/passwd"] = {}
    manifest["concepts"]["ziggy"]["references"] = [str(tmp_path / "secret.txt"), "/etc/passwd"]
    manifest_path.write_text(json.dumps(manifest))
    cat = load_catalog(run_dir)
    assert all(i.path.is_relative_to(run_dir.resolve()) for i in cat.items)
    assert {"../../outside.png", "story/link.png", "/etc/passwd"}.isdisjoint(
        i.id for i in cat.items
    )
    assert len(cat.problems) == 3
    assert all(p.suffix in {".png", ".jpg"} for p in cat.references)
    duo = next(i for i in cat.items if i.id == "story/duo/1.png")
    assert duo.concepts[0].references == () and len(duo.concepts[0].missing) == 2


def test_ratings_survive_a_restart(run_dir: Path) -> None:
    first = ReviewServer(run_dir, 0).start()
    try:
        assert rate(first, image="story/solo/2.png", concept="ziggy", identity=5)[0] == 200
    finally:
        first.stop()
    second = ReviewServer(run_dir, 0).start()
    try:
        data = json.loads(request(second, "GET", "/api/items")[1])
        assert data["ratings"]["story/solo/2.png"]["identity"] == {"ziggy": 5}
        assert "method" not in data["ratings"]["story/solo/2.png"]  # blind
        assert rate(second, image="story/solo/2.png", keep=True)[0] == 200
    finally:
        second.stop()
    assert stored(run_dir)["story/solo/2.png"]["identity"] == {"ziggy": 5}
    assert stored(run_dir)["story/solo/2.png"]["keep"] is True


# -------------------------------------------------------------------------------- summary


def test_summary_mean_and_std_per_method_and_scene(
    server: ReviewServer, run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for image, concept, value in [
        ("story/duo/1.png", "ziggy", 5),
        ("story/duo/1.png", "momo", 3),
        ("story/duo/2.png", "ziggy", 4),  # loraclr duo: 5, 3, 4 -> 4.00 ± 0.82
        ("story/solo/1.png", "ziggy", 2),  # loraclr solo: 2 -> 2.00 ± 0.00
        ("story/duo/1.adapters.png", "ziggy", 1),
        ("story/duo/1.adapters.png", "momo", 3),  # adapters duo: 1, 3 -> 2.00 ± 1.00
    ]:
        assert rate(server, image=image, concept=concept, identity=value)[0] == 200
    assert rate(server, image="story/duo/1.png", keep=True)[0] == 200
    assert rate(server, image="story/duo/2.png", keep=False)[0] == 200
    assert main(["review", str(run_dir), "--summary"]) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["method", "scene", "identity", "(1-5)", "n", "images", "kept", "rejected"]
    assert lines[2:] == [
        ["adapters", "duo", "2.00", "±", "1.00", "2", "1", "0", "0"],
        ["loraclr", "duo", "4.00", "±", "0.82", "3", "2", "1", "1"],
        ["loraclr", "solo", "2.00", "±", "0.00", "1", "1", "0", "0"],
        ["loraclr", "(all)", "3.50", "±", "1.12", "4", "3", "1", "1"],
    ]
    assert main(["review", str(run_dir), "--summary", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["method"] == "loraclr" and rows[1]["n"] == 3 and abs(rows[1]["mean"] - 4) < 1e-9


def test_summary_without_ratings_and_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["review", str(tmp_path), "--summary"]) == 0
    captured = capsys.readouterr()
    assert "no ratings yet" in captured.out and "no ratings yet" in captured.err
    assert main(["review", str(tmp_path / "nope")]) == 2
    assert "review-folder-not-found" in capsys.readouterr().err


def test_cli_port_0_prints_the_url_and_never_imports_torch(run_dir: Path) -> None:
    """`scenecraft review OUT --port 0` with torch made unimportable: it serves anyway."""
    code = (
        "import sys; sys.modules['torch'] = None; from scenecraft.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "review", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert first.startswith("8 image(s) to rate"), (
            first,
            proc.stderr.read() if proc.poll() else "",
        )
        url = second.split()[1]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/api/items")
        assert len(json.loads(conn.getresponse().read())["items"]) == 8
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_binds_loopback_only(server: ReviewServer) -> None:
    assert server.server_address[0] == "127.0.0.1"


# ------------------------------------------------------------------------- the page, clicked


def test_page_in_chromium_clicks_ratings_and_shows_them_after_reload(
    server: ReviewServer, run_dir: Path, tmp_path: Path
) -> None:
    needs_chromium()
    browser = _cdp.Browser(server.url, tmp_path / "chromium-profile")
    try:
        browser.wait_for("document.body.dataset.ready === 'true'")
        assert browser.eval("document.querySelectorAll('section.item').length") == 8
        ids = browser.eval("[...document.querySelectorAll('section.item')].map(s => s.dataset.id)")
        assert ids == [i.id for i in server.catalog.items]
        first, second = ids[0], ids[1]
        # reference pictures loaded in the page (naturalWidth > 0 only for a decoded image)
        assert browser.wait_for(
            "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        concepts = [c.name for c in server.catalog.items[0].concepts]
        s0, s1 = 'section[data-index="0"]', 'section[data-index="1"]'
        wanted = {concepts[0]: 4, concepts[-1]: 2}
        browser.click(f'{s0} [data-concept="{concepts[0]}"] input[data-rating="4"]')
        browser.click(f'{s0} [data-concept="{concepts[-1]}"] input[data-rating="2"]')
        browser.click(f'{s0} input[data-keep="keep"]')
        browser.click(f'{s1} input[data-keep="reject"]')
        saves = 4 if len(concepts) > 1 else 3
        browser.wait_for(
            f"document.body.dataset.saves === '{saves}' && document.body.dataset.pending === '0'"
        )
        assert "data-error" not in browser.eval("document.getElementById('status').outerHTML")
        saved = stored(run_dir)
        assert saved[first]["identity"] == wanted and saved[first]["keep"] is True
        assert saved[second]["keep"] is False and saved[second]["identity"] == {}
        # reload: the page shows the earlier ratings
        browser.reload()
        browser.wait_for("document.body.dataset.ready === 'true'")
        checked = browser.eval(
            "[...document.querySelectorAll('input:checked')].map(i =>"
            " [i.closest('section').dataset.id, i.dataset.rating || i.dataset.keep,"
            "  (i.closest('[data-concept]') || {dataset: {}}).dataset.concept || null])"
        )
        expected = [[first, str(v), c] for c, v in wanted.items()]
        expected += [[first, "keep", None], [second, "reject", None]]
        assert sorted(checked, key=str) == sorted(expected, key=str)
        assert browser.eval(f"document.querySelector('{s0}').dataset.keep") == "true"
    finally:
        browser.close()


# ------------------------------------------------------------------ the toy world's references


def test_toyworld_references_are_the_ground_truth_sprites() -> None:
    from scenecraft.toyworld.references import MARGIN, reference_image
    from scenecraft.toyworld.world import CONCEPTS, SPRITE, sprite_pixels

    folder = ROOT / "scenes" / "toyworld-references"
    for name, concept in CONCEPTS.items():
        path = folder / f"{name}.png"
        assert path.is_file(), f"run: python -m scenecraft.toyworld.references {folder}"
        with Image.open(path) as im:
            shipped = np.asarray(im.convert("RGB"))
        assert np.array_equal(shipped, np.asarray(reference_image(name))), (
            f"{path} is stale; run: python -m scenecraft.toyworld.references {folder}"
        )
        rgb, mask = sprite_pixels(concept.sprite)
        body = shipped[MARGIN : MARGIN + SPRITE, MARGIN : MARGIN + SPRITE]
        assert np.array_equal(body[mask], rgb[mask])


def test_toyworld_scene_names_its_references() -> None:
    from scenecraft.api import load

    plan = load(ROOT / "scenes" / "toyworld.scene").plan
    for c in plan.merge.concepts:
        assert [Path(r).name for r in c.references] == [f"{c.name}.png"]
        assert Path(c.references[0]).is_file()


def test_a_busy_port_is_a_diagnostic(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["review", str(run_dir), "--port", str(port)]) == 2
    assert "error[review-port-busy]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["review", str(run_dir), "--port", "70000"])  # argparse: usage error, exit 2
