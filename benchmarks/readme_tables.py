"""Put benchmark tables into the docs, so their numbers are regenerated, never hand-edited.

A block in README.md or docs/*.md between

    <!-- results: benchmarks/results/toyworld_eval.md -->
    ...
    <!-- /results -->

is replaced by that file's content (the Markdown a benchmark wrote next to its JSON), and a block
between ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` by the output of the generator
``NAME`` in `GENERATORS` (docs/language.md's merge parameter tables, from the methods' models).

    python benchmarks/readme_tables.py           # rewrite the blocks
    python benchmarks/readme_tables.py --check   # exit 1 if a block differs from its file
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scenecraft.merge.params_doc import merge_tables  # noqa: E402

BLOCK = re.compile(r"(<!-- results: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
GENERATED = re.compile(
    r"(<!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S
)
GENERATORS: dict[str, Callable[[], str]] = {"merge-params": merge_tables}


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def refreshed(text: str, root: Path = ROOT) -> str:
    """``text`` with every results block holding its file's current content."""

    def fill(m: re.Match[str]) -> str:
        body = (root / m["path"]).read_text(encoding="utf-8").rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    def generate(m: re.Match[str]) -> str:
        return m.group(1) + GENERATORS[m["name"]]() + m.group(4)

    return GENERATED.sub(generate, BLOCK.sub(fill, text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    args = parser.parse_args(argv)
    stale = []
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        new = refreshed(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new, encoding="utf-8")
    for doc in stale:
        print(f"{'stale' if args.check else 'updated'}: {doc.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
