"""Which side of a merge costs pictures with regions: the text side or the image side (issues 8, 14).

The cases and merges of benchmarks/toyworld_eval.py (loraclr, each case merged from the
concepts it holds; the single-concept cases from the 4-concept merge), rendered with regions on
(single-concept prompts: one prompt, as the compiler writes them), judged by the toy judge. The
LoRAs' modules fall into two sides:

- text side: the text encoder and the UNet's cross-attention to_k / to_v (every projection that
  reads prompt tokens: what LoRACLR's stages 1-2 merge);
- image side: every other UNet module the LoRAs touch (self-attention, to_q, to_out: what the
  merge's `fallback` covers unless its spatial stage is on: the mean of the updates).

Each side is either MERGED (the loraclr merge's W*) or OWN: each concept's own LoRA for that side,
loaded as a runtime adapter and confined to the concept's region (`confined_adapters`: region
prompts encoded with only their concept's adapter, its UNet output added inside its box only);
in a single-concept picture OWN is that concept's adapter alone. merged / merged is toyworld_eval's
`loraclr + regions` row, own / own its `adapters confined` row.

    python benchmarks/region_ablation.py [--seeds 16] [--out benchmarks/results/region_ablation.json]
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))

from toyworld_eval import (  # noqa: E402
    FOUR,
    Case,
    Tally,
    bench_parser,
    cases,
    compiled_jobs,
    confined,
    merged_pipe,
    row_name,
    run_and_write,
    run_case,
    summary,
)

from scenecraft.merge import features as F  # noqa: E402
from scenecraft.sdparts import cross_attention_kv  # noqa: E402
from scenecraft.toyworld import load_toyworld_pipeline, lora_path  # noqa: E402
from scenecraft.toyworld.world import VERSION  # noqa: E402

SIDES = ("merged", "own")
ROWS = ("1 in one image", "2 in one image", "3 in one image", "4 in one image")
HARD = "same class (hard pair)"


def module_of(key: str) -> str:
    """The module path a LoRA file key belongs to (`unet.….to_k.lora.down.weight` -> `unet.….to_k`)."""
    return key.split(".lora")[0]


def text_side(pipe: Any) -> Any:
    """Predicate on module paths: reads prompt tokens (text encoder, cross-attention K/V)."""
    kv = cross_attention_kv(pipe.unet, "unet.")
    return lambda path: path.startswith(F.TEXT_PREFIXES) or path in kv


def side_pipe(
    names: tuple[str, ...], text: str, image: str, cache: Path, base: Any
) -> tuple[Any, bool]:
    """The toy pipeline for one (text side, image side) choice, and whether adapters are loaded.

    MERGED sides keep the loraclr merge's weights; OWN sides get the base weights back (read
    from ``base``, an unmerged toy pipeline) and each concept's own LoRA for that side as an
    adapter named after the concept."""
    pipe, _, _ = merged_pipe("loraclr", {}, names, cache)
    own = {"text": text == "own", "image": image == "own"}
    if not any(own.values()):
        return pipe, False
    is_text = text_side(pipe)

    def wanted(path: str) -> bool:
        return own["text"] if is_text(path) else own["image"]

    files = {n: load_file(str(lora_path(n))) for n in names}
    paths = sorted({module_of(k) for sd in files.values() for k in sd if wanted(module_of(k))})
    w0 = F.resolve_modules(base, paths)
    mine = F.resolve_modules(pipe, paths)
    with torch.no_grad():  # the merge's W* -> W0 where the own LoRAs take over
        for p in paths:
            F.weight_matrix(mine[p]).copy_(F.weight_matrix(w0[p]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT: "multiple adapters" is what this wants
        for n, sd in files.items():
            part = {k: v for k, v in sd.items() if wanted(module_of(k))}
            pipe.load_lora_weights(part, adapter_name=n)
    return pipe, True


def run_group(
    pipe: Any,
    adapters: bool,
    names: tuple[str, ...],
    chosen: Sequence[Case],
    jobs: dict[str, list[Any]],
    tallies: dict[str, Tally],
) -> None:
    """Render and judge every case of one merge group with one side choice."""
    for case in chosen:
        tally = tallies.setdefault(row_name(case), Tally.new())
        if case.count == 1:
            if adapters:
                pipe.set_adapters([case.scene.sprites[0].name], [1.0])
            run_case(pipe, case, jobs["off"][case.label], tally)
        else:
            if adapters:
                pipe.set_adapters(list(names), [1.0] * len(names))
            run_case(
                pipe, case, jobs["on"][case.label], tally, confined(names) if adapters else None
            )


def evaluate(n_seeds: int) -> dict[str, Any]:
    seeds = list(range(1000, 1000 + n_seeds))
    all_cases = cases()
    groups: dict[tuple[str, ...], list[Case]] = {}
    for c in all_cases:
        groups.setdefault(c.merged, []).append(c)
    jobs = {
        mode: {
            c.label: js
            for c, js in zip(all_cases, compiled_jobs(all_cases, seeds, mode), strict=True)
        }
        for mode in ("off", "on")
    }
    rows = []
    base = load_toyworld_pipeline()  # the W0 every OWN side goes back to
    with tempfile.TemporaryDirectory() as tmp:
        for text in SIDES:
            for image in SIDES:
                tallies: dict[str, Tally] = {}
                for names, chosen in groups.items():
                    pipe, adapters = side_pipe(names, text, image, Path(tmp), base)
                    run_group(pipe, adapters, names, chosen, jobs, tallies)
                row: dict[str, Any] = {"text": text, "image": image}
                for name, t in tallies.items():
                    row[name] = {
                        "identity": summary(t.values["identity"]),
                        "placement": summary(t.values["placement"])
                        if t.values["placement"]
                        else None,
                        "identity_by_concept": t.row()["identity_by_concept"],
                    }
                rows.append(row)
                print(_line(row), flush=True)
    return {
        "world": 2,
        "weights_world": VERSION,
        "seeds": n_seeds,
        "merge": "loraclr",
        "single_concepts_merged": list(FOUR),
        "rows": rows,
    }


def _cell(row: dict[str, Any], name: str) -> str:
    r = row.get(name)
    if r is None:
        return "—"
    ident = f"{r['identity']['mean']:.2f}"
    return ident if r["placement"] is None else f"{ident} / {r['placement']['mean']:.2f}"


def _line(row: dict[str, Any]) -> str:
    cells = " | ".join(_cell(row, n) for n in (*ROWS, HARD))
    return f"| {row['text']} | {row['image']} | {cells} |"


def markdown(result: dict[str, Any]) -> str:
    head = (
        f"loraclr, toy world {result['world']}, {result['seeds']} seeds per prompt; identity "
        "(/ placement in the concept's region) per concept. Text side: text encoder + "
        "cross-attention K/V; image side: every other UNet module. own = each concept's own "
        "LoRA for that side, confined to its region (alone in a single-concept picture).\n\n"
        "| text side | image side | 1 alone (4 merged) | 2 in one | 3 in one | 4 in one "
        "| same-class pair |\n|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(_line(r) for r in result["rows"]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "region_ablation", 16, "seeds per prompt", threads=2)
    args = parser.parse_args(argv)
    run_and_write(args, lambda: evaluate(args.seeds), markdown)


if __name__ == "__main__":
    main()
