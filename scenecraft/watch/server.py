"""The live page's HTTP server: stdlib ``ThreadingHTTPServer`` on 127.0.0.1 only.

Routes (everything else is 404):

  GET /             the page (page.html)
  GET /api/state    the `LiveState` as JSON: status, diagnostics, sections of cells
  GET /events       server-sent events: ``event: state`` with the new version after every change
  GET /image/<n>    the n-th cell's image, while it is ready or stale (never a missing one)

URLs carry indexes, never paths. Requests must name the server itself in ``Host`` (no DNS
rebinding). Images are read whole from files the renderer wrote atomically.
"""

from __future__ import annotations

import json
import queue
import threading
from http import HTTPStatus
from importlib import resources

from scenecraft.localhttp import LocalHandler, LocalServer
from scenecraft.watch.state import LiveState

KEEPALIVE_S = 15.0  # a comment line on an idle event stream, so dead clients are noticed


class LiveServer(LocalServer):
    """Serves one `LiveState` until ``stop()``."""

    def __init__(self, state: LiveState, port: int = 0) -> None:
        self.state = state
        self.page = resources.files("scenecraft.watch").joinpath("page.html").read_bytes()
        self.stopping = threading.Event()
        super().__init__(port, _Handler)

    def stop(self) -> None:
        self.stopping.set()  # ends the event streams
        super().stop()


class _Handler(LocalHandler):
    server: LiveServer
    server_version = "scenecraft-watch"

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, b'{"error": "not found"}', "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_ok():
            self._send(HTTPStatus.FORBIDDEN, b'{"error": "unexpected Host"}', "application/json")
            return
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/state":
            body = json.dumps(self.server.state.snapshot()).encode()
            self._send(HTTPStatus.OK, body, "application/json; charset=utf-8")
        elif path == "/events" and self.command == "GET":
            self._events()
        elif path.startswith("/image/"):
            self._image(path.removeprefix("/image/"))
        else:
            self._not_found()

    do_HEAD = do_GET

    def _image(self, text: str) -> None:
        n = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else -1
        file = self.server.state.image_path(n)
        try:
            data = file.read_bytes() if file is not None else None
        except OSError:
            data = None
        if data is None:
            self._not_found()
        else:
            self._send(HTTPStatus.OK, data, "image/png")

    def _events(self) -> None:
        """One ``state`` event now and after every change, until the client or server stops."""
        srv = self.server
        q = srv.state.subscribe()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._event(srv.state.version)
            while not srv.stopping.is_set():
                try:
                    version = q.get(timeout=0.5)
                except queue.Empty:
                    self._keepalive()
                    continue
                while not q.empty():  # a burst of changes: announce the newest only
                    version = q.get_nowait()
                self._event(version)
        except (ConnectionError, OSError):
            pass  # the page was closed or reloaded
        finally:
            srv.state.unsubscribe(q)

    def _event(self, version: int) -> None:
        self.wfile.write(f"event: state\ndata: {json.dumps({'version': version})}\n\n".encode())
        self.wfile.flush()
        self._idle = 0.0

    def _keepalive(self) -> None:
        self._idle = getattr(self, "_idle", 0.0) + 0.5
        if self._idle >= KEEPALIVE_S:
            self.wfile.write(b": keepalive\n\n")
            self.wfile.flush()
            self._idle = 0.0
