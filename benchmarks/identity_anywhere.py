"""Identity on any cast and any prompt: casts of one class and prompts the merge never fitted.

Issue 26 parts 2 and 3. Three casts of four toy concepts:

- distinct: lulu, blip, kiki, momo (four classes: toyworld_eval's cast);
- one-class: ziggy, zaza, mimi, roro (four circles that differ only in colour and pattern);
- mixed: ziggy, zaza, kiki, blip (two yellow circles; kiki shares ziggy's stripes).

A PROMPT SPLIT divides the world's settings, attributes and placements: the FIT set (on grass,
on a shelf, a hat, left of) and the HELD-OUT set (at sea, in the desert, under a night sky, a
crown, on top of). Every picture is asked once with FIT words and once with HELD-OUT words.
Cells, per cast: each concept alone after the 4-concept merge (regions off), and 2, 3 and 4
concepts in one picture with regions on, each merged from exactly the concepts it holds (what
the compiler does). Rows:

- ``loraclr`` (the default merge: fitted on its own default contexts, never on these prompts);
- ``loraclr + scene_prompts`` fitted on a scene file of the FIT pictures only (per merge: the
  FIT pictures it draws), judged on the FIT prompts and on the HELD-OUT ones it never saw;
- the ceilings: each concept's own LoRA alone, and in pictures with regions the concepts' own
  LoRAs confined to their regions (runtime adapters), on the same prompts and seeds.

Every cell is a share of its ceiling. Seeds: a CHOOSING set (defaults may be chosen on it) and a
HELD-OUT set never looked at while choosing; both are reported. Pictures go through scenecraft's
own compile and regional-render path (toyworld_eval's helpers).

    python benchmarks/identity_anywhere.py [--seeds 8] [--casts distinct,one-class,mixed]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from toyworld_eval import (  # noqa: E402
    Case,
    Tally,
    adapters_pipe,
    bench_parser,
    compiled_jobs,
    confined,
    merged_pipe,
    own_pipe,
    run_and_write,
    run_case,
    scene_prompts,
)

from scenecraft.toyworld import expected_prompt, expected_scene  # noqa: E402
from scenecraft.toyworld.world import VERSION  # noqa: E402

CASTS: dict[str, tuple[str, ...]] = {
    "distinct": ("lulu", "blip", "kiki", "momo"),
    "one-class": ("ziggy", "zaza", "mimi", "roro"),
    "mixed": ("ziggy", "zaza", "kiki", "blip"),
}
# the 2 and 3 in one picture of each cast (merged from exactly those concepts)
SUBSETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "distinct": (("blip", "kiki"), ("lulu", "blip", "kiki")),
    "one-class": (("ziggy", "zaza"), ("zaza", "mimi", "roro")),
    "mixed": (("ziggy", "kiki"), ("ziggy", "zaza", "kiki")),
}
# split -> (settings, attribute, placement): the words a picture of that split is asked with
SPLITS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "fit": (("on grass", "on a shelf"), "a hat", "left-of"),
    "held-out": (("at sea", "in the desert", "under a night sky"), "a crown", "on-top-of"),
}
DEFAULT, SCENE, CEILING = "loraclr", "loraclr + scene_prompts (fitted on FIT)", "ceiling"
# (row label, loraclr parameters, fitted on the FIT file's prompts)
ROWS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    (DEFAULT, {}, False),
    (SCENE, {}, True),
    ("loraclr + refine_ridge true", {"refine_ridge": True}, False),  # part 4 ablation
)
CELLS = ("alone (4 merged)", "2 in one", "3 in one", "4 in one")


def cast_cases(cast: str) -> list[Case]:
    """Every picture of one cast, both splits: labels ``cast|cell|split|what``."""
    four, out = CASTS[cast], []
    for split, (settings, attribute, relation) in SPLITS.items():
        for i, name in enumerate(four):
            attrs = {name: attribute} if i == 2 else None
            scene = expected_scene([name], attributes=attrs, setting=settings[i % len(settings)])
            out.append(Case(f"{cast}|{CELLS[0]}|{split}|{name}", scene, four))
        for names in (*SUBSETS[cast], four):
            attrs = {names[2]: attribute} if len(names) == 3 else None
            place = [(names[0], relation, names[1])]
            scene = expected_scene(list(names), place, attrs, settings[len(names) % len(settings)])
            out.append(
                Case(f"{cast}|{CELLS[len(names) - 1]}|{split}|{'+'.join(names)}", scene, names)
            )
    return out


def _seeds(first: int, n: int) -> list[int]:
    return list(range(first, first + n))


def run(
    casts: Sequence[str], seed_sets: dict[str, int], n: int, rows: Sequence[str]
) -> dict[str, Any]:
    """identity per (cast, cell, split, row, seed set): lists of per-concept identities, plus
    the ceiling's, and seconds per merge group."""
    chosen = [c for cast in casts for c in cast_cases(cast)]
    groups: dict[tuple[str, ...], list[Case]] = {}
    for c in chosen:
        groups.setdefault(c.merged, []).append(c)
    jobs = {  # seed set -> regions mode -> label -> jobs
        s: {
            m: dict(
                zip([c.label for c in chosen], compiled_jobs(chosen, _seeds(f, n), m), strict=True)
            )
            for m in ("off", "on")
        }
        for s, f in seed_sets.items()
    }
    scores: dict[str, list[float]] = {}

    def render(pipe: Any, case: Case, row: str, adapters: Any = None) -> None:
        """Every seed set in one batch; identities split back by set (image-major)."""
        mode = "off" if case.count == 1 else "on"
        batch = [j for s in seed_sets for j in jobs[s][mode][case.label]]
        tally = Tally.new()
        run_case(pipe, case, batch, tally, adapters)
        cast, cell, split, _ = case.label.split("|")
        per_set = n * case.count
        for k, s in enumerate(seed_sets):
            scores.setdefault("|".join((cast, cell, split, row, s)), []).extend(
                tally.values["identity"][k * per_set : (k + 1) * per_set]
            )

    with tempfile.TemporaryDirectory() as tmp:
        for names, group in groups.items():
            for label, params, fitted in ROWS:
                if label not in rows:
                    continue
                fit = [c for c in group if c.label.split("|")[2] == "fit"]
                prompts = scene_prompts(fit, _seeds(1000, n), "on") if fitted else None
                pipe, seconds, _ = merged_pipe("loraclr", params, names, Path(tmp), prompts)
                print(f"{label} {'+'.join(names)} merged in {seconds:.1f} s", flush=True)
                for case in group:
                    render(pipe, case, label)
            shared = None  # the ceiling: own LoRA alone; with regions, own LoRAs confined
            for case in group if CEILING in rows else ():
                if case.count == 1:
                    render(own_pipe(case.scene.sprites[0].name)[0], case, CEILING)
                else:
                    shared = shared or adapters_pipe(names)[0]
                    render(shared, case, CEILING, confined(names))
            print(f"{'+'.join(names)} done", flush=True)
    return {
        "world": 2,
        "weights_world": VERSION,
        "seeds": n,
        "seed_sets": seed_sets,
        "judge": judge_version(),
        "casts": {c: CASTS[c] for c in casts},
        "prompts": {c.label: expected_prompt(c.scene) for c in chosen},
        "scores": scores,
    }


def judge_version() -> str:
    """The last commit that changed the judge (which judge the figures used)."""
    path = Path(__file__).resolve().parent.parent / "scenecraft" / "toyworld" / "judge.py"
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h %s", "--", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def _mean(result: dict[str, Any], key: str) -> float | None:
    values = result["scores"].get(key)
    return statistics.fmean(values) if values else None


def markdown(result: dict[str, Any]) -> str:
    sets = list(result["seed_sets"])
    rows = [r[0] for r in ROWS if any(f"|{r[0]}|" in k for k in result["scores"])]
    head = (
        f"Toy world {result['world']}, {result['seeds']} render seeds per set ({', '.join(sets)}: "
        f"first seeds {', '.join(str(v) for v in result['seed_sets'].values())}). Per cell: "
        "identity on the held-out seeds (share of the ceiling on the same prompts and seeds); "
        "then the choosing seeds. Ceiling: each concept's own LoRA alone (alone), the concepts' "
        "own LoRAs confined to their regions (2/3/4 in one picture, regions on). FIT prompts: "
        f"{_words('fit')}; HELD-OUT prompts: {_words('held-out')}. Judge: "
        f"{result.get('judge', 'unknown')}.\n\n"
        f"| cast | picture | prompts | {' | '.join(rows)} | ceiling |\n"
        f"|---|---|---|{'---|' * (len(rows) + 1)}\n"
    )
    lines = []
    for cast in result["casts"]:
        for cell in CELLS:
            for split in SPLITS:
                cells = []
                for row in [*rows, CEILING]:
                    parts = []
                    for s in reversed(sets):
                        v = _mean(result, f"{cast}|{cell}|{split}|{row}|{s}")
                        c = _mean(result, f"{cast}|{cell}|{split}|{CEILING}|{s}")
                        if v is None:
                            parts.append("–")
                        elif row == CEILING or not c:
                            parts.append(f"{v:.2f}")
                        else:
                            parts.append(f"{v:.2f} ({v / c:.2f}×)")
                    cells.append(parts[0] + "; " + " ".join(parts[1:]))
                lines.append(f"| {cast} | {cell} | {split} | {' | '.join(cells)} |")
    return head + "\n".join(lines) + "\n"


def _words(split: str) -> str:
    settings, attribute, relation = SPLITS[split]
    return ", ".join([*settings, attribute, relation.replace("-", " ")])


def combined(first: dict[str, Any], *more: dict[str, Any]) -> dict[str, Any]:
    """Results of runs on the same seeds as one (later runs' cells win); their run seconds kept."""
    out = dict(first)
    out["run_seconds"] = [*first.get("run_seconds", [first.get("seconds")])]
    out.setdefault("judge", judge_version())  # runs before the result recorded it
    for part in more:
        if (part["seed_sets"], part["seeds"]) != (first["seed_sets"], first["seeds"]):
            raise SystemExit("these results were run on other seeds: rerun them whole")
        for key in ("casts", "prompts", "scores"):
            out[key] = {**out[key], **part[key]}
        out["run_seconds"] += part.get("run_seconds", [part.get("seconds")])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "identity_anywhere", 8, "render seeds per set", threads=2)
    parser.add_argument("--casts", default=",".join(CASTS), help="casts to run (comma-separated)")
    parser.add_argument("--sets", default="choosing=1000,held-out=5000", help="name=first seed")
    parser.add_argument(
        "--rows", default=f"{DEFAULT},{SCENE},{CEILING}", help="rows to run (comma-separated)"
    )
    parser.add_argument(
        "--update", action="store_true", help="add these casts' cells to the result at --out"
    )
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        default=[],
        help="render nothing: write the cells of these results (runs of other casts or rows) as one",
    )
    args = parser.parse_args(argv)
    casts = [c.strip() for c in args.casts.split(",")]
    sets = {k: int(v) for k, v in (p.split("=") for p in args.sets.split(","))}
    rows = [r.strip() for r in args.rows.split(",")]

    def go() -> dict[str, Any]:
        if args.combine:
            parts = [json.loads(p.read_text(encoding="utf-8")) for p in args.combine]
            return combined(parts[0], *parts[1:])
        result = run(casts, sets, args.seeds, rows)
        if args.update and args.out.exists():
            result = combined(json.loads(args.out.read_text(encoding="utf-8")), result)
        return result

    run_and_write(args, go, markdown)


if __name__ == "__main__":
    main()
