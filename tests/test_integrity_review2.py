"""Integrity, round two (issue 32), the review server: a failed ratings save answers an error and
changes nothing, JSON depth is bounded, the listen backlog is real, stalled connections time out,
a foreign Origin cannot rate."""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scenecraft.review import catalog
from scenecraft.review.server import ReviewServer
from tests.test_review import rate, request, run_dir, stored  # noqa: F401  (fixture)


@pytest.fixture
def server(run_dir: Path) -> Iterator[ReviewServer]:  # noqa: F811
    srv = ReviewServer(run_dir, 0, timeout=0.5).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_failed_save_answers_500_and_leaves_the_rating_unchanged(
    server: ReviewServer,
    run_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert rate(server, image="story/duo/1.png", concept="momo", identity=4)[0] == 200

    def read_only(path: Path, text: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(catalog, "atomic_write_text", read_only)
    status, body = rate(server, image="story/duo/1.png", concept="momo", identity=1)
    assert status == 500 and "Permission denied" in body["error"]
    status, new = rate(server, image="story/solo/2.png", keep=True)  # a new entry: not kept
    assert status == 500
    ratings = json.loads(request(server, "GET", "/api/ratings")[1])["images"]
    assert ratings["story/duo/1.png"]["identity"] == {"momo": 4}  # memory = the file
    assert "story/solo/2.png" not in ratings
    assert stored(run_dir) == ratings
    monkeypatch.undo()
    assert rate(server, image="story/duo/2.png", keep=False)[0] == 200
    assert stored(run_dir)["story/duo/1.png"]["identity"] == {"momo": 4}
    assert "story/solo/2.png" not in stored(run_dir)


@pytest.mark.parametrize("body", [b"[" * 30_000, b'{"a":' * 10_000], ids=["arrays", "objects"])
def test_deeply_nested_json_is_400(
    server: ReviewServer,
    run_dir: Path,  # noqa: F811
    body: bytes,
) -> None:
    status, answer = request(server, "POST", "/api/rate", body)  # under the 64 KiB cap
    assert status == 400 and "nested deeper" in json.loads(answer)["error"]
    # brackets inside strings do not count; the server still answers
    text = json.dumps({"image": "story/duo/1.png" + "[" * 100, "keep": True}).encode()
    assert request(server, "POST", "/api/rate", text)[0] == 400  # unknown image, not depth
    assert rate(server, image="story/duo/1.png", keep=True)[0] == 200


def test_listen_backlog_queues_60_pending_connections(run_dir: Path) -> None:  # noqa: F811
    """Connections the server has not accepted yet wait in the backlog (the stdlib's 5
    made the 7th connect wait for a SYN retry, and resets under 50 parallel posts)."""
    srv = ReviewServer(run_dir, 0)  # listening, not serving: nothing is accepted
    sockets = []
    try:
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=1.0)
            sockets.append(s)
    finally:
        for s in sockets:
            s.close()
        srv.server_close()
    assert len(sockets) == 60


def test_50_parallel_posts_all_answered(server: ReviewServer, run_dir: Path) -> None:  # noqa: F811
    images = [i.id for i in server.catalog.items]
    results: list[int] = []

    def post(k: int) -> None:
        status, _ = rate(server, image=images[k % len(images)], keep=bool(k % 2))
        results.append(status)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 50


def _stalled_post(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(
        f"POST /api/rate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
    )
    return s


def test_stalled_posts_are_dropped_after_the_timeout(server: ReviewServer) -> None:
    before = threading.active_count()
    stalled = [_stalled_post(server.port) for _ in range(20)]
    time.sleep(0.2)
    assert threading.active_count() >= before + 20  # one handler thread each, waiting
    start = time.perf_counter()
    for s in stalled:
        assert s.recv(1) == b""  # the server closed it (a 5 s client timeout would raise)
        s.close()
    assert time.perf_counter() - start < 3
    deadline = time.perf_counter() + 3
    while threading.active_count() > before and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    assert rate(server, image="story/duo/1.png", keep=True)[0] == 200  # still serving


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("http://evil.example", 403),
        ("null", 403),
        ("http://127.0.0.1:1", 403),  # another port is another origin
        (None, 200),  # curl, scripts
        ("self", 200),  # the page itself
    ],
)
def test_foreign_origin_cannot_rate(
    server: ReviewServer,
    run_dir: Path,  # noqa: F811
    origin: str | None,
    status: int,
) -> None:
    headers: dict[str, Any] = {}
    if origin == "self":
        headers["Origin"] = f"http://127.0.0.1:{server.port}"
    elif origin is not None:
        headers["Origin"] = origin
    body = {"image": "story/duo/1.png", "keep": True}
    got, _ = request(server, "POST", "/api/rate", body, headers=headers)
    assert got == status
    assert (run_dir / "ratings.json").exists() == (status == 200)
