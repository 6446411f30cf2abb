"""How far the toy-world judge agrees with the labelled validation set (pictures labelled by eye).

Reads ``tests/data/judge_validation/`` (324 pictures of the toy model's own output rendered by
benchmarks/judge_labelset.py, labelled by eye) and reports the judge's per-sprite identity
agreement with the labels (`scenecraft.toyworld.agreement`): overall and per failure mode, on
the fitting part (seeds 7000, 7001: the pictures looked at while the judge was fixed) and the
held-out part (seed 7002: never looked at picture by picture), plus attribute agreement and,
for the fitting part only, each disagreement in words.

``--judge-file`` measures another judge: a Python file defining ``find_sprites(image)`` (e.g.
the judge before issue 26, ``git show 00fd856:scenecraft/toyworld/judge.py``).

    python benchmarks/judge_agreement.py [--out benchmarks/results/judge_agreement.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from scenecraft.files import atomic_write_text
from scenecraft.toyworld.agreement import load, measure
from scenecraft.toyworld.judge import Found, find_sprites

FOLDER = Path(__file__).parent.parent / "tests" / "data" / "judge_validation"
PARTS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "fitting": lambda e: not e["held_out"],
    "held out": lambda e: e["held_out"],
    "all": lambda e: True,
}


def judge_from(path: Path) -> Callable[[Image.Image], list[Found]]:
    """``find_sprites`` of the judge defined in a Python file."""
    spec = importlib.util.spec_from_file_location("other_judge", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.find_sprites  # type: ignore[no-any-return]


def run(folder: Path, judge: Callable[[Image.Image], list[Found]]) -> dict[str, Any]:
    pictures = load(folder)
    out: dict[str, Any] = {
        "pictures": len(pictures),
        "labelled_sprites": sum(len(lab["sprites"]) for _, lab in pictures),
        "unsure_sprites": sum(
            s["identity"] == "unsure" for _, lab in pictures for s in lab["sprites"]
        ),
        "parts": {},
    }
    for name, keep in PARTS.items():
        tally, problems = measure(folder, judge, keep)
        out["parts"][name] = tally.summary()
        if name == "fitting":
            out["fitting_disagreements"] = {str(k): v for k, v in problems.items()}
    return out


def markdown(result: dict[str, Any]) -> str:
    modes = [m for m in result["parts"]["all"] if m != "attribute"]
    head = "| part | " + " | ".join(modes) + " | attribute |\n|---|" + "---|" * (len(modes) + 1)
    rows = []
    for part, summary in result["parts"].items():
        cells = [
            f"{summary[m]['agreement']:.2f} ({summary[m]['agree']}/{summary[m]['units']})"
            if m in summary
            else "–"
            for m in [*modes, "attribute"]
        ]
        rows.append(f"| {part} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--judge-file", type=Path, help="measure find_sprites from this file")
    parser.add_argument("--judge-name", help="what --judge-file is, for the result")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/judge_agreement.json"))
    args = parser.parse_args(argv)
    judge = judge_from(args.judge_file) if args.judge_file else find_sprites
    start = time.perf_counter()
    result = run(args.folder, judge)
    result["judge"] = args.judge_name or str(args.judge_file or "scenecraft.toyworld.judge")
    result["seconds"] = round(time.perf_counter() - start, 1)
    table = markdown(result)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
