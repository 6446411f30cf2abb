"""A real LSP client (pygls' own) driving `scenecraft lsp` over stdio, for tests/test_lsp*.py.

One server process serves the whole test session (started on ``python -m scenecraft.cli lsp``);
each test opens its own documents in a temporary folder (the ``files`` fixture). Without pygls
the ``lsp`` fixture skips (``pip install "scenecraft[lsp]"``); under ``SCENECRAFT_CI=1`` it fails.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._optional import missing

if importlib.util.find_spec("pygls") is not None:
    from lsprotocol import types as t
    from pygls.lsp.client import LanguageClient
    from pygls.uris import from_fs_path

ROOT = Path(__file__).parent.parent
ZIGGY_LORA = ROOT / "scenecraft" / "toyworld" / "weights" / "loras" / "ziggy.safetensors"
WAIT_S = 15.0

LIB = """\
concept blip {
  token "<BLIP>"
  class "square"
}
"""

MAIN = f"""\
# a park and the sea
model "runwayml/stable-diffusion-v1-5" family sd15
include "lib.scene"

concept ziggy {{
  token "<ZIGGY>"
  class "circle"
  lora "{ZIGGY_LORA}"
}}

merge loraclr {{
  margin 0.5
}}

defaults {{
  sampler "DDIM"
  seeds 1..2
}}

scene park {{
  setting "in a park"
  ziggy left of blip
}}

scene sea {{
  setting "at sea"
  ziggy wears "a hat"
}}

storyboard day {{
  panel park "first"
  panel sea "second"
}}
"""


class Session:
    """The client, its event loop and the diagnostics the server published, by URI."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = LanguageClient("scenecraft-tests", "1")
        self.diagnostics: dict[str, list[Any]] = {}
        self.versions: dict[str, int] = {}

        @self.client.feature(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def _published(params: Any) -> None:
            self.diagnostics[params.uri] = list(params.diagnostics)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, WAIT_S))

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.run(self.client.start_io(sys.executable, "-m", "scenecraft.cli", "lsp", env=env))
        caps = t.ClientCapabilities(
            general=t.GeneralClientCapabilities(position_encodings=[t.PositionEncodingKind.Utf8])
        )
        result = self.run(
            self.client.initialize_async(t.InitializeParams(capabilities=caps, process_id=None))
        )
        self.capabilities = result.capabilities
        self.client.initialized(t.InitializedParams())

    def stop(self) -> None:
        try:
            self.run(self.client.shutdown_async(None))
            self.client.exit(None)
            self.run(self.client.stop())
        finally:
            self.loop.close()

    def open(self, path: Path, text: str) -> str:
        uri = from_fs_path(str(path))
        self.diagnostics.pop(uri, None)
        self.versions[uri] = 1
        lang = "scene-j2" if path.suffix == ".j2" else "scene"
        self.client.text_document_did_open(
            t.DidOpenTextDocumentParams(t.TextDocumentItem(uri, lang, 1, text))
        )
        return uri

    def change(self, uri: str, text: str) -> None:
        self.versions[uri] += 1
        self.client.text_document_did_change(
            t.DidChangeTextDocumentParams(
                t.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
                [t.TextDocumentContentChangeWholeDocument(text=text)],
            )
        )

    def wait_for(self, uri: str, ok: Callable[[list[Any]], bool]) -> list[Any]:
        """The diagnostics of ``uri`` once ``ok`` holds (fails after WAIT_S)."""

        async def poll() -> list[Any]:
            while True:
                found = self.diagnostics.get(uri)
                if found is not None and ok(found):
                    return found
                await asyncio.sleep(0.02)

        try:
            return self.run(poll())  # type: ignore[no-any-return]
        except TimeoutError:
            pytest.fail(f"no such diagnostics for {uri}: {self.diagnostics.get(uri)}")

    def doc(self, uri: str) -> Any:
        return t.TextDocumentIdentifier(uri=uri)


@pytest.fixture(scope="session")
def lsp() -> Iterator[Session]:
    if importlib.util.find_spec("pygls") is None:
        missing('python module pygls is not installed; pip install "scenecraft[lsp]"')
    session = Session()
    session.start()
    yield session
    session.stop()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "lib.scene").write_text(LIB)
    (tmp_path / "main.scene").write_text(MAIN)
    return tmp_path


def pos(text: str, needle: str, offset: int = 0, nth: int = 0) -> Any:
    """The LSP position of the ``nth`` ``needle`` in ``text`` (plus ``offset`` characters)."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    at += offset
    line = text.count("\n", 0, at)
    return t.Position(line, at - (text.rfind("\n", 0, at) + 1))
