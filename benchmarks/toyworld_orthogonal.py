"""Orthogonal Adaptation on the toy world: orthogonal LoRAs summed, and refined by LoRACLR.

Po et al. (CVPR 2024) train each concept's LoRA with its down-projection A frozen to rows
mutually orthogonal to every other concept's (``python -m scenecraft.toyworld.train_lora NAME
--orthogonal INDEX``), so the LoRAs can be summed with little interference; LoRACLR's paper
(Table 1, supplementary §2) refines such a sum further. Rows, on the prompts of
benchmarks/toyworld_eval.py (imported, not copied), regions off, judged exactly:

- 1 in one image: each of lulu, blip, kiki, momo alone, drawn by the 4-concept merge —
  shipped (non-orthogonal) LoRAs linear / loraclr, orthogonal LoRAs linear / loraclr — and
  each concept's own LoRA alone (shipped and orthogonal: the ceilings);
- 2 in one image: the benchmark's two pair prompts, each merged from its two concepts.

    python benchmarks/toyworld_orthogonal.py --orthogonal-dir scenecraft/toyworld/weights/orthogonal
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toyworld_eval import (  # noqa: E402
    FOUR,
    METRICS,
    Case,
    Tally,
    _cell,
    cases,
    compiled_jobs,
    run_case,
)

from scenecraft.merge.api import merge  # noqa: E402
from scenecraft.merge.apply import apply_merge  # noqa: E402
from scenecraft.plan import BaseModelSpec, ConceptSpec, MergeSpec  # noqa: E402
from scenecraft.toyworld import (  # noqa: E402
    BASE_DIR,
    CONCEPTS,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    LORA_DIR,
    expected_prompt,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.world import VERSION  # noqa: E402

ORTHOGONAL_DIR = Path(__file__).resolve().parent.parent / "scenecraft/toyworld/weights/orthogonal"


def merged(method: str, names: tuple[str, ...], lora_dir: Path, cache: Path) -> tuple[Any, float]:
    """The toy base with ``names``' LoRAs from ``lora_dir`` merged by scenecraft's own code."""
    pipe = load_toyworld_pipeline()
    concepts = tuple(
        ConceptSpec(
            name=n,
            tokens=(CONCEPTS[n].token,),
            lora=str(lora_dir / f"{n}.safetensors"),
            class_noun=CONCEPTS[n].class_noun,
        )
        for n in names
    )
    spec = MergeSpec(base=BaseModelSpec(source=str(BASE_DIR)), concepts=concepts, method=method)  # type: ignore[arg-type]
    start = time.perf_counter()
    result = merge(spec, pipe, cache_dir=cache, force=True)
    seconds = time.perf_counter() - start
    apply_merge(pipe, result)
    return pipe, seconds


def own(name: str, lora_dir: Path) -> tuple[Any, float]:
    pipe = load_toyworld_pipeline()
    start = time.perf_counter()
    pipe.load_lora_weights(str(lora_dir / f"{name}.safetensors"), adapter_name=name)
    return pipe, time.perf_counter() - start


def evaluate(n_seeds: int, orthogonal_dir: Path, pairs: bool) -> dict[str, Any]:
    seeds = list(range(1000, 1000 + n_seeds))
    chosen: list[Case] = [c for c in cases() if c.count == 1 or (pairs and c.count == 2)]
    chosen = [c for c in chosen if set(c.merged) <= set(FOUR)]
    jobs = compiled_jobs(chosen, seeds, "off")
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, c in enumerate(chosen):
        groups.setdefault(c.merged, []).append(i)
    sources = (("shipped", LORA_DIR), ("orthogonal", orthogonal_dir))
    tallies: dict[tuple[str, str], Tally] = {}

    def add(row: str, method: str, pipe: Any, i: int, seconds: float) -> None:
        tally = tallies.setdefault((row, method), Tally.new())
        assert tally.merge_seconds is not None
        tally.merge_seconds.append(seconds)
        run_case(pipe, chosen[i], jobs[i], tally)

    with tempfile.TemporaryDirectory() as tmp:
        for source, lora_dir in sources:
            for method in ("linear", "loraclr"):
                for names, idx in groups.items():
                    pipe, seconds = merged(method, names, lora_dir, Path(tmp))
                    for i in idx:
                        add(
                            f"{chosen[i].count} in one image",
                            f"{source} {method}",
                            pipe,
                            i,
                            seconds,
                        )
                    print(f"{source} {method} {'+'.join(names)} done", flush=True)
            for i, c in enumerate(chosen):
                if c.count == 1:
                    pipe, seconds = own(c.scene.sprites[0].name, lora_dir)
                    add("1 in one image", f"{source} own LoRA (ceiling)", pipe, i, seconds)
    rows = [
        {"row": row, "method": method, **tally.row()} for (row, method), tally in tallies.items()
    ]
    return {
        "weights_world": VERSION,
        "seeds": n_seeds,
        "steps": DEFAULT_STEPS,
        "guidance": DEFAULT_GUIDANCE,
        "orthogonal_dir": str(orthogonal_dir),
        "cases": {c.label: expected_prompt(c.scene) for c in chosen},
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    head = (
        "| picture | LoRAs, method | Accuracy | Identity | identity by concept | merge s |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['row']} (n={r['accuracy']['n']}) | {r['method']} | "
        + " | ".join(_cell(r[m]) for m in METRICS[:2])
        + " | "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["identity_by_concept"].items())
        + f" | {r['merge_seconds']} |"
        for r in sorted(result["rows"], key=lambda r: r["row"])
    ]
    prompts = "\n".join(f"- {k}: `{v}`" for k, v in result["cases"].items())
    return head + "\n".join(lines) + "\n\nPrompts:\n" + prompts + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds per prompt")
    parser.add_argument("--orthogonal-dir", type=Path, default=ORTHOGONAL_DIR)
    parser.add_argument("--no-pairs", action="store_true", help="single-concept pictures only")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/toyworld_orthogonal.json")
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = evaluate(args.seeds, args.orthogonal_dir, not args.no_pairs)
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in (
        (args.out, json.dumps(result, indent=2)),
        (args.out.with_suffix(".md"), markdown(result)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(markdown(result))
    print(f"total {result['seconds']} s; wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
