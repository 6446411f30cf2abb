"""Refresh the examples in docs/errors.md from the catalogue snapshots.

Each entry of docs/errors.md names its example input (``Example (`tests/catalogue/X.scene`):``)
followed by a ```text block; this replaces every such block with ``X.expected``. The prose
around the examples is left alone. Run after `SCENECRAFT_UPDATE_SNAPSHOTS=1 pytest ...`:

    python tests/catalogue/refresh_errors_doc.py
"""

from __future__ import annotations

import re
from pathlib import Path

CATALOGUE = Path(__file__).parent
ERRORS_MD = CATALOGUE.parent.parent / "docs" / "errors.md"
EXAMPLE = re.compile(
    r"(Example \(`tests/catalogue/(?P<entry>[^`]+)`\):\n\n```text\n)(?P<body>.*?)(\n```)", re.S
)


def snapshot(entry: str) -> str:
    stem = entry.removesuffix(".j2").removesuffix(".scene")
    return (CATALOGUE / f"{stem}.expected").read_text(encoding="utf-8").rstrip("\n")


def refreshed(text: str) -> str:
    return EXAMPLE.sub(lambda m: m.group(1) + snapshot(m.group("entry")) + m.group(4), text)


def main() -> None:
    text = ERRORS_MD.read_text(encoding="utf-8")
    new = refreshed(text)
    if new != text:
        ERRORS_MD.write_text(new, encoding="utf-8")
        print(f"updated {ERRORS_MD}")


if __name__ == "__main__":
    main()
