"""The rating page's HTTP server: stdlib ``ThreadingHTTPServer`` on 127.0.0.1 only.

Routes (everything else is 404):

  GET  /                  the page (page.html)
  GET  /api/items         the images to rate, their concepts and reference URLs, and the ratings
  GET  /api/ratings       the ratings file as stored
  POST /api/rate          one rating, JSON: {"image", "concept", "identity": 1..5 | null}
                          or {"image", "keep": true | false | null}; answers the image's entry
  GET  /image/<n>         the n-th image of the catalog
  GET  /ref/<n>           the n-th reference picture the manifests name

URLs carry indexes, never paths, so nothing outside the catalog can be asked for; the catalog
keeps only images whose resolved path lies inside OUT and references that are image files.
Requests must name the server itself in ``Host`` (no DNS rebinding); POSTs must be JSON (no
cross-site form posts), nested at most `MAX_DEPTH` deep, and an ``Origin`` header, when sent,
must be this server's (a page elsewhere cannot rate). Ratings are written atomically after every
change; a change that cannot be written (a read-only folder, a full disk) is answered 500 and
leaves the ratings in memory as they were. The listen backlog is `BACKLOG` and every connection
times out after `CONNECTION_TIMEOUT` seconds of silence, so a stalled client holds its thread
that long at most.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import re
import threading
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

from scenecraft.localhttp import HOST, LocalHandler, LocalServer
from scenecraft.review.catalog import (
    Catalog,
    RatingError,
    apply_rating,
    load_catalog,
    load_ratings,
    save_ratings,
)

MAX_BODY = 64 * 1024
MAX_DEPTH = 32  # nesting of a POSTed JSON body (a rating is 1 deep)
BACKLOG = 128  # pending connections the OS queues (the stdlib's 5 reset parallel posts)
CONNECTION_TIMEOUT = 10.0  # seconds a connection may stay silent
_JSON_TOKENS = re.compile(rb'\\.|"|[\[\]{}]', re.S)


def too_deep(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects more than ``limit`` deep (strings skipped);
    checked before parsing, so 30,000 ``[`` never reach the recursive decoder."""
    depth = 0
    in_string = False
    for m in _JSON_TOKENS.finditer(data):
        token = m.group()
        if in_string:
            in_string = token != b'"'
        elif token == b'"':
            in_string = True
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def page_html() -> str:
    return resources.files("scenecraft.review").joinpath("page.html").read_text(encoding="utf-8")


class ReviewServer(LocalServer):
    """Serves one output folder's catalog until ``shutdown()``."""

    request_queue_size = BACKLOG

    def __init__(
        self, out_dir: str | Path, port: int = 0, timeout: float = CONNECTION_TIMEOUT
    ) -> None:
        self.connection_timeout = timeout
        self.catalog: Catalog = load_catalog(out_dir)
        self.ratings = load_ratings(self.catalog.root)
        self.lock = threading.Lock()
        self.page = page_html()
        super().__init__(port, _Handler)

    def items_json(self) -> dict[str, Any]:
        """What the page needs; the method is left out (the raters are blind to it)."""
        cat = self.catalog
        with self.lock:
            ratings = json.loads(json.dumps(self.ratings))
        return {
            "root": str(cat.root),
            "items": [
                {
                    "id": item.id,
                    "image": f"/image/{n}",
                    "scene": item.scene,
                    "storyboard": item.storyboard,
                    "seed": item.seed,
                    "prompt": item.prompt,
                    "concepts": [
                        {
                            "name": c.name,
                            "references": [f"/ref/{r}" for r in c.references],
                            "missing": list(c.missing),
                        }
                        for c in item.concepts
                    ],
                }
                for n, item in enumerate(cat.items)
            ],
            "ratings": {
                k: {f: v for f, v in e.items() if f != "method"}
                for k, e in ratings["images"].items()
                if isinstance(e, dict)
            },
        }

    def rate(self, body: Any) -> dict[str, Any]:
        """Apply one rating to a copy, write it, then keep it: a failed write (OSError) leaves
        the ratings in memory as they were, like the file."""
        with self.lock:
            changed = copy.deepcopy(self.ratings)
            entry = apply_rating(self.catalog, changed, body)
            save_ratings(self.catalog.root, changed)
            self.ratings = changed
        return {k: v for k, v in entry.items() if k != "method"}  # blind, as in items_json


class _Handler(LocalHandler):
    server: ReviewServer
    server_version = "scenecraft-review"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.connection_timeout)  # a stalled client gives up

    # -- helpers
    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _origin_ok(self) -> bool:
        """No ``Origin`` (curl, scripts) or this server's own (the page itself)."""
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        return origin in {
            f"http://{HOST}:{self.server.port}",
            f"http://localhost:{self.server.port}",
        }

    def _file(self, path: Path) -> None:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            data = path.read_bytes()
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        self._send(HTTPStatus.OK, data, ctype)

    @staticmethod
    def _index(text: str, size: int) -> int | None:
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            return None
        n = int(text)
        return n if n < size else None

    # -- routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return
        path = self.path.split("?", 1)[0]
        srv = self.server
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, srv.page.encode(), "text/html; charset=utf-8")
        elif path == "/api/items":
            self._json(HTTPStatus.OK, srv.items_json())
        elif path == "/api/ratings":
            with srv.lock:
                self._json(HTTPStatus.OK, srv.ratings)
        elif path.startswith("/image/"):
            n = self._index(path.removeprefix("/image/"), len(srv.catalog.items))
            if n is None:
                self._error(HTTPStatus.NOT_FOUND, "not found")
            else:
                self._file(srv.catalog.items[n].path)
        elif path.startswith("/ref/"):
            n = self._index(path.removeprefix("/ref/"), len(srv.catalog.references))
            if n is None:
                self._error(HTTPStatus.NOT_FOUND, "not found")
            else:
                self._file(srv.catalog.references[n])
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return
        if not self._origin_ok():
            self._error(HTTPStatus.FORBIDDEN, "foreign Origin")
            return
        if self.path != "/api/rate":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._error(HTTPStatus.BAD_REQUEST, "bad Content-Length")
            return
        data = self.rfile.read(length)
        if too_deep(data):
            self._error(HTTPStatus.BAD_REQUEST, f"JSON nested deeper than {MAX_DEPTH}")
            return
        try:
            entry = self.server.rate(json.loads(data))
        except (ValueError, RecursionError, RatingError) as exc:  # RatingError: a ValueError
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except OSError as exc:  # the ratings file cannot be written: nothing changed
            reason = exc.strerror or str(exc)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot save the ratings: {reason}")
            return
        self._json(HTTPStatus.OK, entry)
