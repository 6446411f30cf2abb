"""Attribute words after a concept's token: does a merge keep the concept as its own LoRA does?

Each of lulu, blip, kiki, momo drawn alone `wearing a hat` and `wearing a crown, on grass`
(eight prompts, one prompt each, regions off) and 3b's prompt (`kiki right of momo, blip
wearing a hat`, regions on), all after the 4-concept merge of the four, on several sets of 16
render seeds; rows: the default merge, the default with ``refine_ridge false`` (engine
revision 5's default) and each concept's own LoRA (3b: each confined to its region): the
question is how a merge's loss compares with the own LoRAs', not with 1. Per cell the identity
and (after the slash) the share of pictures where the concept wears what was asked. The judge
misreads hats the model draws darker than the world's (30, 30, 30) as ink, so hat cells
undercount (docs/loraclr.md, "A judge defect under hats").

    python benchmarks/attribute_words.py [--sets 1000,2000,3000] [--out PATH.json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from toyworld_eval import (  # noqa: E402
    FOUR,
    Case,
    adapters_pipe,
    bench_parser,
    compiled_jobs,
    confined,
    expected_scene,
    merged_pipe,
    own_pipe,
    render_case,
    run_and_write,
)

from scenecraft.plan import RenderJob  # noqa: E402
from scenecraft.toyworld.judge import judge  # noqa: E402
from scenecraft.toyworld.world import VERSION  # noqa: E402

OWN = "own LoRAs (3b: confined)"
ROWS: tuple[tuple[str, dict[str, Any] | None], ...] = (  # label, loraclr params (None: own)
    ("default merge", {}),
    ("refine_ridge false", {"refine_ridge": False}),
    (OWN, None),
)


def attribute_cases() -> list[Case]:
    """The prompts: each concept alone under a hat, under a crown on grass; 3b."""
    out = [Case(f"{n} hat", expected_scene([n], [], {n: "a hat"}, None), FOUR) for n in FOUR]
    out += [
        Case(f"{n} crown", expected_scene([n], [], {n: "a crown"}, "on grass"), FOUR) for n in FOUR
    ]
    out.append(
        Case(
            "3b",
            expected_scene(
                ["kiki", "momo", "blip"], [("kiki", "right-of", "momo")], {"blip": "a hat"}, None
            ),
            FOUR,
        )
    )
    return out


def run_row(params: dict[str, Any] | None, jobs: dict[str, list[RenderJob]]) -> dict[str, Any]:
    """case -> identity and attribute worn (shares over the case's pictures and concepts);
    ``jobs``: each case's compiled jobs, every seed set's seeds in one list."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        merged = None if params is None else merged_pipe("loraclr", params, FOUR, Path(tmp))[0]
        shared = None
        for case in attribute_cases():
            adapters = None
            if merged is not None:
                pipe = merged
            elif case.count == 1:
                pipe = own_pipe(case.scene.sprites[0].name)[0]
            else:
                shared = shared or adapters_pipe(FOUR)[0]
                pipe, adapters = shared, confined(FOUR)
            ident: list[float] = []
            worn: list[float] = []
            for im in render_case(pipe, jobs[case.label], adapters):
                scores = judge(im, case.scene)
                ident += [c.identity for c in scores.concepts]
                worn += [c.attribute for c in scores.concepts if c.attribute is not None]
            out[case.label] = {
                "identity": round(statistics.fmean(ident), 3),
                "worn": round(statistics.fmean(worn), 3) if worn else None,
            }
            print(params, case.label, out[case.label], flush=True)
    return out


def compiled(sets: list[int], n_seeds: int) -> dict[str, list[RenderJob]]:
    """Each case's jobs, compiled once for every row: one prompt (regions off) for a concept
    alone, regions on for 3b."""
    out: dict[str, list[RenderJob]] = {}
    for case in attribute_cases():
        mode = "off" if case.count == 1 else "on"
        out[case.label] = [
            job
            for first in sets  # a scene's seeds are one range: one compile per set
            for job in compiled_jobs([case], range(first, first + n_seeds), mode)[0]
        ]
    return out


def markdown(result: dict[str, Any]) -> str:
    labels = [c.label for c in attribute_cases()]
    head = (
        f"Toy world {result['world']}, 4-concept merge of {'+'.join(FOUR)}, "
        f"{result['seeds']} render seeds × sets {', '.join(map(str, result['seed_sets']))}; "
        "identity / share wearing what was asked (3b: every concept, one of them asked for a "
        "hat); `alone` = the eight one-concept prompts pooled.\n\n"
        f"| row | {' | '.join(labels)} | alone |\n|---|{'---|' * (len(labels) + 1)}\n"
    )
    lines = []
    for label, _ in ROWS:
        row = result["rows"][label]
        cells = [
            f"{row[c]['identity']:.2f} / "
            + ("–" if row[c]["worn"] is None else f"{row[c]['worn']:.2f}")
            for c in labels
        ]
        alone = statistics.fmean(row[c]["identity"] for c in labels if c != "3b")
        lines.append(f"| {label} | {' | '.join(cells)} | **{alone:.2f}** |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "attribute_words", 16, "render seeds per set", threads=2)
    parser.add_argument("--sets", default="1000,2000,3000", help="first seed of each set")
    args = parser.parse_args(argv)
    sets = [int(s) for s in args.sets.split(",")]

    def run() -> dict[str, Any]:
        jobs = compiled(sets, args.seeds)
        rows = {label: run_row(params, jobs) for label, params in ROWS}
        return {
            "world": 2,
            "weights_world": VERSION,
            "seeds": args.seeds,
            "seed_sets": sets,
            "rows": rows,
        }

    run_and_write(args, run, markdown)


if __name__ == "__main__":
    main()
