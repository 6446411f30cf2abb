"""loraclr's merge settings against render-seed noise: each variant on several seed sets.

The toy-world cases of benchmarks/toyworld_eval.py that decide a merge default — each of lulu,
blip, kiki, momo alone after their 4-concept merge, the two pairs and the same-class pair with
regions on, the two 4-concept pictures with regions on — rendered by loraclr merges that differ
in one setting, on several disjoint sets of 16 render seeds. A change is worth a default only
if it holds on every set; the spread between sets is the noise (±0.08 for a concept alone).

Variants: the image-side ``fallback`` (``linear``: the sum of the concepts' updates, the default
until 2026-12-01; ``average``: their mean, the default since) × ``scene_prompts`` off / on; the
default with ``sequential false`` (the text encoder fitted on each concept's own encoder's
inputs, the engine before 2026-12-02's layer-by-layer fit); and
``continuations 32`` (opt-in) merged with merge seeds 0, 1, 2 (the seed draws its phrases, so
each is another merge: the spread between them is the draw's, beside the render seeds'). The
ceiling row draws each concept alone with its own LoRA on the same seeds, so "alone" is also
given as a share of it (merge fidelity's target: ≥ 0.9× the own-LoRA ceiling).

    python benchmarks/merge_variants.py [--sets 1000,2000,3000] [--out benchmarks/results/merge_variants.json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from toyworld_eval import (  # noqa: E402
    Case,
    Tally,
    bench_parser,
    cases,
    compiled_jobs,
    merged_pipe,
    own_pipe,
    run_and_write,
    run_case,
    scene_prompts,
)

from scenecraft.toyworld.world import VERSION  # noqa: E402

LABELS = (
    "lulu alone",
    "blip alone",
    "kiki alone",
    "momo alone",
    "2a",
    "2b",
    "hard pair",
    "4a",
    "4b",
)
COLUMNS = {  # column -> the cases it pools
    "alone (4 merged)": ("lulu alone", "blip alone", "kiki alone", "momo alone"),
    "2 in one": ("2a", "2b"),
    "same-class pair": ("hard pair",),
    "4 in one": ("4a", "4b"),
}
CEILING = "own LoRA (ceiling)"  # each concept alone drawn by its own LoRA, same seeds
ALONE = "alone (4 merged)"
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fallback average, sequential false", {"fallback": "average", "sequential": False}),
    ("fallback linear", {"fallback": "linear"}),
    ("fallback average", {"fallback": "average"}),
    ("fallback linear + scene_prompts", {"fallback": "linear", "scene_prompts": True}),
    ("fallback average + scene_prompts", {"fallback": "average", "scene_prompts": True}),
    *(
        (f"continuations 32, merge seed {seed}", {"continuations": 32, "seed": seed})
        for seed in (0, 1, 2)
    ),
)


def run_set(first_seed: int, n_seeds: int) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> column -> identity / placement means over one seed set."""
    seeds = list(range(first_seed, first_seed + n_seeds))
    chosen = [c for c in cases() if c.label in LABELS]
    groups: dict[tuple[str, ...], list[Case]] = {}
    for c in chosen:
        groups.setdefault(c.merged, []).append(c)
    jobs = {
        mode: dict(zip([c.label for c in chosen], compiled_jobs(chosen, seeds, mode), strict=True))
        for mode in ("off", "on")
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, stages in VARIANTS:
            tallies: dict[str, Tally] = {}
            for names, group in groups.items():
                prompts = scene_prompts(group, seeds) if stages.get("scene_prompts") else None
                rest = {k: v for k, v in stages.items() if k != "scene_prompts"}
                pipe, _, _ = merged_pipe("loraclr", {}, names, Path(tmp), prompts, rest)
                for case in group:
                    mode = "off" if case.count == 1 else "on"
                    run_case(
                        pipe,
                        case,
                        jobs[mode][case.label],
                        tallies.setdefault(case.label, Tally.new()),
                    )
            out[label] = {col: _pool(tallies, labels) for col, labels in COLUMNS.items()}
            print(first_seed, label, out[label], flush=True)
    tallies = {}
    for case in chosen:
        if case.count == 1:
            pipe, _ = own_pipe(case.scene.sprites[0].name)
            run_case(
                pipe, case, jobs["off"][case.label], tallies.setdefault(case.label, Tally.new())
            )
    out[CEILING] = {ALONE: _pool(tallies, COLUMNS[ALONE])}
    print(first_seed, CEILING, out[CEILING], flush=True)
    return out


def _pool(tallies: dict[str, Tally], labels: Sequence[str]) -> dict[str, float]:
    ident = [v for lab in labels for v in tallies[lab].values["identity"]]
    place = [v for lab in labels for v in tallies[lab].values["placement"]]
    return {
        "identity": round(statistics.fmean(ident), 3),
        **({"placement": round(statistics.fmean(place), 3)} if place else {}),
    }


def markdown(result: dict[str, Any]) -> str:
    sets = result["seed_sets"]
    head = (
        f"loraclr on toy world {result['world']}, {result['seeds']} render seeds per set, "
        f"seed sets starting at {', '.join(map(str, sets))} (first = toyworld_eval's); per "
        "cell identity (/ placement in the region) on each set, then the mean; alone also as a "
        "share of the own-LoRA ceiling on the same seeds.\n\n"
        f"| variant | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}\n"
    )
    lines = []
    ceiling = statistics.fmean(result["sets"][str(s)][CEILING][ALONE]["identity"] for s in sets)
    for label in [*(v[0] for v in VARIANTS), CEILING]:
        cells = []
        for col in COLUMNS:
            if col not in result["sets"][str(sets[0])][label]:
                cells.append("–")
                continue
            per = [result["sets"][str(s)][label][col] for s in sets]
            ident = " / ".join(f"{p['identity']:.2f}" for p in per)
            mean = statistics.fmean(p["identity"] for p in per)
            cell = f"{ident} → **{mean:.2f}**"
            if col == ALONE and label != CEILING:
                cell += f" ({mean / ceiling:.2f}× the ceiling)"
            if "placement" in per[0]:
                pmean = statistics.fmean(p["placement"] for p in per)
                cell += f" (in region {pmean:.2f})"
            cells.append(cell)
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append(_seed_mean(result, ceiling))
    return head + "\n".join(lines) + "\n"


def _seed_mean(result: dict[str, Any], ceiling: float) -> str:
    """One row: the continuations variants' means, pooled over their merge seeds (± the spread
    between the merge seeds' means)."""
    sets = result["seed_sets"]
    labels = [v[0] for v in VARIANTS if v[0].startswith("continuations")]
    cells = []
    for col in COLUMNS:
        per_seed = [
            statistics.fmean(result["sets"][str(s)][lab][col]["identity"] for s in sets)
            for lab in labels
        ]
        mean, spread = statistics.fmean(per_seed), statistics.pstdev(per_seed)
        cell = f"**{mean:.2f}** ± {spread:.2f}"
        if col == ALONE:
            cell += f" ({mean / ceiling:.2f}× the ceiling)"
        cells.append(cell)
    return f"| continuations 32, mean over merge seeds (± their spread) | {' | '.join(cells)} |"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "merge_variants", 16, "render seeds per set", threads=2)
    parser.add_argument("--sets", default="1000,2000,3000", help="first seed of each set")
    args = parser.parse_args(argv)
    sets = [int(s) for s in args.sets.split(",")]

    def run() -> dict[str, Any]:
        return {
            "world": 2,
            "weights_world": VERSION,
            "seeds": args.seeds,
            "seed_sets": sets,
            "sets": {str(s): run_set(s, args.seeds) for s in sets},
        }

    run_and_write(args, run, markdown)


if __name__ == "__main__":
    main()
