"""Where a 4-concept merge loses identity: a module-group ablation on the toy world (issue 14).

World 1 (the shipped toy world), the 4-concept merge of lulu, blip, kiki, momo. Every row draws
each concept ALONE on its single-concept prompt of benchmarks/toyworld_eval.py (8 seeds), judged
by the toy judge, with the UNet / text-encoder weights W = W0 + ΔW chosen per module group:

- ``merged``: ΔW = the merge's ΔW* everywhere (what a scene with the 4 concepts gets);
- ``own LoRA``: ΔW = the concept's OWN ΔW_c everywhere (the ceiling);
- ``merged + own G``: the merge, with group G put back to the concept's own ΔW_c
  (how much identity G alone restores);
- ``own, merged G``: the concept's own LoRA, with group G replaced by the merge's ΔW*
  (how much identity the merge of G alone destroys);
- ``base``: no delta at all (the floor).

Groups: text encoder; UNet cross-attention K/V (attn2.to_k/to_v, the LoRACLR stage);
to_q (attn1 + attn2); to_out (attn1 + attn2); attn1 K/V; anything else the LoRAs touch.

Second table (issue 14 item 4): loraclr and gradient-fusion merged 3 times with merge seeds 0, 1, 2
(``seed`` method param and the engine's feature-subsampling seed), single-concept identity per
merge, mean and spread; whether the seeds changed the weights at all; and, for scale, the spread
of the same loraclr merge over 3 disjoint sets of 8 render seeds.

    python benchmarks/merge_ablation.py [--seeds 8] [--out benchmarks/results/merge_ablation.json]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from toyworld_eval import (  # noqa: E402
    FOUR,
    bench_parser,
    cases,
    run_and_write,
    summary,
    toy_concepts,
)

from scenecraft.merge import features as F  # noqa: E402
from scenecraft.merge.api import merge  # noqa: E402
from scenecraft.merge.apply import module_weight  # noqa: E402
from scenecraft.merge.cache import load_entry  # noqa: E402
from scenecraft.merge.config import METHODS, parse  # noqa: E402
from scenecraft.merge.formats import read_concept_lora  # noqa: E402
from scenecraft.plan import BaseModelSpec, MergeSpec  # noqa: E402
from scenecraft.toyworld import (  # noqa: E402
    BASE_DIR,
    CONCEPTS,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    ExpectedScene,
    expected_prompt,
    load_toyworld_pipeline,
    lora_path,
)
from scenecraft.toyworld.judge import judge  # noqa: E402
from scenecraft.toyworld.world import VERSION  # noqa: E402

GROUPS = ("text encoder", "cross-attn K/V", "to_q", "to_out", "attn1 K/V", "other")
Deltas = dict[str, torch.Tensor]


def group_of(path: str) -> str:
    """The module group of a module path (GROUPS)."""
    if path.startswith("text_encoder"):
        return "text encoder"
    if ".attn2.to_k" in path or ".attn2.to_v" in path:
        return "cross-attn K/V"
    if ".to_q" in path:
        return "to_q"
    if ".to_out" in path:
        return "to_out"
    if ".attn1.to_k" in path or ".attn1.to_v" in path:
        return "attn1 K/V"
    return "other"


def singles() -> dict[str, ExpectedScene]:
    """Each of the four concepts alone, on toyworld_eval's single-concept prompt."""
    out = {c.scene.sprites[0].name: c.scene for c in cases() if c.count == 1}
    assert set(out) == set(FOUR), out
    return out


def merge_deltas(
    pipe: Any, method: str, seed: int | None, cache: Path
) -> tuple[Deltas, float, dict[str, Any]]:
    """ΔW* of the 4-concept merge (fp32, by module path), its seconds and figures (``seed`` None:
    the default)."""
    concepts = toy_concepts(FOUR)
    seeded: dict[str, float | int | str | bool] = {} if seed is None else {"seed": seed}
    spec = MergeSpec(
        base=BaseModelSpec(source=str(BASE_DIR)),
        concepts=concepts,
        params=parse(method, seeded if "seed" in METHODS[method].model_fields else {}),
    )
    start = time.perf_counter()
    result = merge(spec, pipe, cache_dir=cache, force=True)
    seconds = time.perf_counter() - start
    deltas, embeddings, _ = load_entry(result.path)
    assert not any(embeddings.values()), "toy LoRAs carry no token embeddings"
    return {p: d.float() for p, d in deltas.items()}, seconds, result.figures


class Bench:
    """One base pipeline whose module weights are set to W0 + ΔW per row, rendered and judged."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.pipe = load_toyworld_pipeline()
        self.seeds = list(seeds)
        self.scenes = singles()
        self.w0: dict[str, torch.Tensor] = {}
        self.images = 0
        self.render_seconds = 0.0

    def pipe_for_merge(self) -> Any:
        """The pipeline back at W0 (the merge engine reads the base weights from it)."""
        self.set({})
        return self.pipe

    def own(self, name: str) -> Deltas:
        lora = read_concept_lora(
            lora_path(name),
            name=name,
            tokens=(CONCEPTS[name].token,),
            pipe_or_module_index=self.pipe,
        )
        return {p: lora.delta(p) for p in lora.layers}

    def set(self, deltas: Deltas) -> None:
        """W ← W0 + ΔW for every module seen so far (modules not in ``deltas``: W0)."""
        for path in deltas:
            if path not in self.w0:
                self.w0[path] = module_weight(self.pipe, path).detach().clone()
        with torch.no_grad():
            for path, w0 in self.w0.items():
                weight = module_weight(self.pipe, path)
                d = deltas.get(path)
                weight.copy_(w0 if d is None else w0 + d.reshape(w0.shape).to(w0.dtype))

    def identity(
        self, name: str, deltas: Deltas, seeds: Sequence[int] | None = None
    ) -> dict[str, float]:
        """Mean identity and accuracy of ``name`` drawn alone with weights W0 + ``deltas``."""
        self.set(deltas)
        seeds = list(seeds or self.seeds)
        scene = self.scenes[name]
        start = time.perf_counter()
        out = self.pipe(
            prompt=[expected_prompt(scene)] * len(seeds),
            height=64,
            width=64,
            num_inference_steps=DEFAULT_STEPS,
            guidance_scale=DEFAULT_GUIDANCE,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
        )
        self.render_seconds += time.perf_counter() - start
        self.images += len(seeds)
        scores = [judge(im, scene).concepts[0] for im in out.images]
        return {
            "identity": statistics.fmean(s.identity for s in scores),
            "accuracy": statistics.fmean(s.accuracy for s in scores),
        }


def mix(own: Deltas, merged: Deltas, own_groups: set[str]) -> Deltas:
    """Per module: the own ΔW_c where its group is in ``own_groups``, else the merge's ΔW*."""
    out: Deltas = {}
    for path in set(own) | set(merged):
        src = own if group_of(path) in own_groups else merged
        if path in src:
            out[path] = src[path]
    return out


def row(label: str, per: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "row": label,
        "identity": statistics.fmean(v["identity"] for v in per.values()),
        "accuracy": statistics.fmean(v["accuracy"] for v in per.values()),
        "identity_by_concept": {k: round(v["identity"], 3) for k, v in per.items()},
    }


def ablation(bench: Bench, merged: Deltas) -> tuple[list[dict[str, Any]], dict[str, int]]:
    owns = {n: bench.own(n) for n in FOUR}
    paths = set(merged).union(*owns.values())
    sizes = {g: sum(group_of(p) == g for p in paths) for g in GROUPS}
    present = [g for g in GROUPS if sizes[g]]
    every = set(GROUPS)
    specs: list[tuple[str, Callable[[str], Deltas]]] = [
        ("base (no delta)", lambda n: {}),
        ("merged", lambda n: merged),
        ("own LoRA", lambda n: owns[n]),
    ]
    for g in present:
        specs.append((f"merged + own {g}", lambda n, g=g: mix(owns[n], merged, {g})))  # type: ignore[misc]
    for g in present:
        specs.append((f"own, merged {g}", lambda n, g=g: mix(owns[n], merged, every - {g})))  # type: ignore[misc]
    rows = []
    for label, make in specs:
        rows.append(row(label, {n: bench.identity(n, make(n)) for n in FOUR}))
        print(_line(rows[-1]), flush=True)
    return rows, sizes


def kv_fit(bench: Bench, merged: Deltas) -> dict[str, dict[str, float]]:
    """How closely the merged cross-attention K/V reproduce each concept's own K/V update on the
    context of its RENDER prompt (merged text encoder): relative error ‖(ΔW* − ΔW_c) x‖ / ‖ΔW_c x‖
    (the engine's fidelity e_c) over all K/V modules, at the concept token and the end token
    (the positions the K/V stage fits, on its own short prompts) and at every other real
    position of the prompt (BOS, class noun, setting: left free by the stage)."""
    bench.set(merged)
    out: dict[str, dict[str, float]] = {}
    for name in FOUR:
        own = bench.own(name)
        prompt = expected_prompt(bench.scenes[name])
        with torch.no_grad():
            states, mask = F.context_states(bench.pipe, [prompt], [CONCEPTS[name].token])
        x, m = states[0], mask[0].bool()
        end = torch.zeros_like(m)
        end[int(m.nonzero().max())] = True  # the end token: the last marked position
        sels = {"token": m & ~end, "end": end, "other": ~m}
        err = {k: [0.0, 0.0] for k in sels}
        for path, d_own in own.items():
            if group_of(path) != "cross-attn K/V":
                continue
            gap = x @ (merged[path].reshape(d_own.shape) - d_own).T
            ref = x @ d_own.T
            for key, sel in sels.items():
                err[key][0] += float(gap[sel].square().sum())
                err[key][1] += float(ref[sel].square().sum())
        out[name] = {k: round((a / b) ** 0.5, 3) for k, (a, b) in err.items()}
        out[name]["other_positions"] = int((~m).sum())
    print("K/V fit on the render prompt (relative error):", out, flush=True)
    return out


def seed_spread(bench: Bench, cache: Path, merged0: Deltas) -> dict[str, Any]:
    """Each method merged with seeds 0, 1, 2: identity per merge and the weights' difference."""
    out: dict[str, Any] = {}
    for method in ("loraclr", "gradient-fusion"):
        per_seed = []
        first: Deltas | None = None
        for seed in (0, 1, 2):
            deltas, seconds, _ = merge_deltas(bench.pipe_for_merge(), method, seed, cache)
            if first is None:
                first = deltas
            diff = max(float((deltas[p] - first[p]).abs().max()) for p in first)
            r = row(f"{method} seed {seed}", {n: bench.identity(n, deltas) for n in FOUR})
            r["max_abs_delta_diff_vs_seed0"] = diff
            r["merge_seconds"] = round(seconds, 2)
            per_seed.append(r)
            print(_line(r), f"max |ΔW*(seed) - ΔW*(0)| = {diff:.3g}", flush=True)
        ids = [r["identity"] for r in per_seed]
        out[method] = {"seeds": per_seed, "identity": summary(ids)}
    # the judge's own noise at 8 seeds: the default loraclr merge over 3 disjoint render seed sets
    n = len(bench.seeds)
    sets = [[bench.seeds[0] + k * n + i for i in range(n)] for k in range(3)]
    renders = [
        row(
            f"loraclr, render seeds {s[0]}..{s[-1]}",
            {c: bench.identity(c, merged0, s) for c in FOUR},
        )
        for s in sets
    ]
    for r in renders:
        print(_line(r), flush=True)
    out["render seeds (loraclr)"] = {
        "seeds": renders,
        "identity": summary([r["identity"] for r in renders]),
    }
    return out


def evaluate(n_seeds: int) -> dict[str, Any]:
    bench = Bench(range(1000, 1000 + n_seeds))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        merged, merge_s, figures = merge_deltas(bench.pipe, "loraclr", None, cache)
        rows, sizes = ablation(bench, merged)
        fit = kv_fit(bench, merged)
        spread = seed_spread(bench, cache, merged)
    return {
        "world": VERSION,
        "concepts": list(FOUR),
        "method": "loraclr (defaults)",
        "merge_seconds": round(merge_s, 2),
        "seeds": n_seeds,
        "steps": DEFAULT_STEPS,
        "guidance": DEFAULT_GUIDANCE,
        "prompts": {n: expected_prompt(s) for n, s in bench.scenes.items()},
        "group_modules": sizes,
        "stage_modules": figures.get("modules"),
        # rows per concept and layer the feature stages saw (the seed only subsamples above a cap)
        "feature_rows": figures.get("feature_rows"),
        "rows": rows,
        "kv_fit_render_prompt": fit,
        "seed_spread": spread,
        "images": bench.images,
        "render_seconds_per_image": round(bench.render_seconds / max(bench.images, 1), 3),
    }


def _line(r: dict[str, Any]) -> str:
    per = " ".join(f"{k} {v:.2f}" for k, v in r["identity_by_concept"].items())
    return f"{r['row']:>34}  identity {r['identity']:.2f}  accuracy {r['accuracy']:.2f}  ({per})"


def markdown(result: dict[str, Any]) -> str:
    names = result["concepts"]
    head = (
        "| weights (each concept drawn alone) | Identity | Accuracy | "
        + " | ".join(names)
        + " |\n|---|---|---|"
        + "---|" * len(names)
        + "\n"
    )
    lines = [
        f"| {r['row']} | {r['identity']:.2f} | {r['accuracy']:.2f} | "
        + " | ".join(f"{r['identity_by_concept'][n]:.2f}" for n in names)
        + " |"
        for r in result["rows"]
    ]
    sizes = ", ".join(f"{g} {k}" for g, k in result["group_modules"].items())
    spread = ["", "| merge | Identity per seed | mean ± std | max abs ΔW* diff vs seed 0 |"]
    spread.append("|---|---|---|---|")
    for label, s in result["seed_spread"].items():
        ids = ", ".join(f"{r['identity']:.2f}" for r in s["seeds"])
        diffs = ", ".join(f"{r.get('max_abs_delta_diff_vs_seed0', 0.0):.2g}" for r in s["seeds"])
        diffs = diffs if "render" not in label else "– (same weights)"
        spread.append(
            f"| {label} | {ids} | {s['identity']['mean']:.2f} ± {s['identity']['std']:.2f} "
            f"| {diffs} |"
        )
    fit = [
        "",
        "Merged cross-attention K/V vs each concept's own, on its render prompt's context "
        "(relative error ‖(ΔW* − ΔW_c) x‖ / ‖ΔW_c x‖, all K/V modules):",
        "",
        "| concept | at its token | at the end token | at the other real positions |",
        "|---|---|---|---|",
    ]
    for n, f in result["kv_fit_render_prompt"].items():
        fit.append(
            f"| {n} | {f['token']:.3f} | {f['end']:.3f} "
            f"| {f['other']:.3f} ({f['other_positions']}) |"
        )
    prompts = "\n".join(f"- {k}: `{v}`" for k, v in result["prompts"].items())
    return (
        f"World {result['world']}, 4-concept merge of {'+'.join(names)}, {result['seeds']} seeds "
        f"per concept. Modules per group: {sizes}.\n\n"
        + head
        + "\n".join(lines)
        + "\n"
        + "\n".join(spread)
        + "\n"
        + "\n".join(fit)
        + "\n\nPrompts:\n"
        + prompts
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "merge_ablation", 8, "render seeds per concept", threads=1)
    args = parser.parse_args(argv)
    run_and_write(args, lambda: evaluate(args.seeds), markdown)


if __name__ == "__main__":
    main()
