"""Orthogonal Adaptation on the toy world: orthogonal LoRAs summed, and refined by LoRACLR.

Po et al. (CVPR 2024) train each concept's LoRA with its down-projection A frozen to rows
mutually orthogonal to every other concept's (``python -m scenecraft.toyworld.train_lora NAME
--orthogonal INDEX``), so the LoRAs can be summed with little interference; LoRACLR's paper
(Table 1, supplementary §2) refines such a sum further. Rows, on the prompts of
benchmarks/toyworld_eval.py (imported, not copied), regions off, judged exactly:

- 1 in one image: each of lulu, blip, kiki, momo alone, drawn by the 4-concept merge —
  shipped (non-orthogonal) LoRAs linear / loraclr / loraclr with the image side summed
  (`fallback linear`), the same for the orthogonal LoRAs — and
  each concept's own LoRA alone (shipped and orthogonal: the ceilings);
- 2 in one image: the benchmark's two pair prompts, each merged from its two concepts.

    python benchmarks/toyworld_orthogonal.py --orthogonal-dir scenecraft/toyworld/weights/orthogonal
"""

from __future__ import annotations

import statistics
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
    bench_parser,
    cases,
    compiled_jobs,
    merged_pipe,
    run_and_write,
    run_case,
)

from scenecraft.toyworld import (  # noqa: E402
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    LORA_DIR,
    expected_prompt,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.world import VERSION  # noqa: E402

ORTHOGONAL_DIR = Path(__file__).resolve().parent.parent / "scenecraft/toyworld/weights/orthogonal"


# (row label, method, stage parameters): loraclr averages the image side by default; the
# orthogonal LoRAs are built to be summed, so loraclr with `fallback linear` is a row too
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("linear", "linear", {}),
    ("loraclr", "loraclr", {}),
    ("loraclr, image side summed", "loraclr", {"fallback": "linear"}),
)


def own(name: str, lora_dir: Path) -> tuple[Any, float]:
    pipe = load_toyworld_pipeline()
    start = time.perf_counter()
    pipe.load_lora_weights(str(lora_dir / f"{name}.safetensors"), adapter_name=name)
    return pipe, time.perf_counter() - start


def lora_deltas(lora_dir: Path, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapted module (``unet.…`` / ``text_encoder.…``): the LoRA's (A, B) factors."""
    from safetensors.torch import load_file

    sd = load_file(str(lora_dir / f"{name}.safetensors"))
    out = {}
    for suffix in (".lora_linear_layer.down.weight", ".lora.down.weight"):  # text / UNet keys
        for k in sd:
            if k.endswith(suffix):
                up = k.replace(".down.", ".up.")
                out[k[: -len(suffix)]] = (sd[k].double(), sd[up].double())
    return out


def module_inputs(prompt: str, seed: int = 1000) -> dict[str, torch.Tensor]:
    """Inputs (rows x in) of every adapted module while the base model draws ``prompt``."""
    pipe = load_toyworld_pipeline()
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for prefix, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in (
                "to_q",
                "to_k",
                "to_v",
                "0",
                "q_proj",
                "k_proj",
                "v_proj",
                "out_proj",
            ):
                key = f"{prefix}.{name}"

                def hook(_m: Any, args: tuple[Any, ...], _o: Any, key: str = key) -> None:
                    seen.setdefault(key, []).append(args[0].detach().reshape(-1, args[0].shape[-1]))

                hooks.append(module.register_forward_hook(hook))
    pipe(
        prompt,
        height=64,
        width=64,
        num_inference_steps=DEFAULT_STEPS,
        guidance_scale=DEFAULT_GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
    )
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double() for k, v in seen.items()}


def crosstalk(lora_dirs: dict[str, Path], chosen: list[Case]) -> dict[str, Any]:
    """How much the OTHER concepts' deltas act on a concept's own inputs, in a 4-concept sum:
    per module, ||X_i Σ_{j≠i} ΔW_jᵀ|| / ||X_i ΔW_iᵀ|| (X_i: the module's inputs while the base
    draws concept i's single-concept prompt), and how strongly the other concepts' A read those
    inputs, ||X_i A_jᵀ|| / ||X_i A_iᵀ||; medians over (concept, module), per module group."""
    singles = [c for c in chosen if c.count == 1]
    inputs = {c.scene.sprites[0].name: module_inputs(expected_prompt(c.scene)) for c in singles}
    out: dict[str, Any] = {}
    for source, lora_dir in lora_dirs.items():
        factors = {n: lora_deltas(lora_dir, n) for n in inputs}
        ratios: dict[str, dict[str, list[float]]] = {}
        for n, xs in inputs.items():
            for key, (a, b) in factors[n].items():
                x = xs[key]
                own = (x @ a.T @ b.T).norm()
                other = sum((x @ f[key][0].T @ f[key][1].T for m, f in factors.items() if m != n))
                read = statistics.fmean(
                    float((x @ f[key][0].T).norm() / (x @ a.T).norm())
                    for m, f in factors.items()
                    if m != n
                )
                group = (
                    "text encoder"
                    if key.startswith("text_encoder")
                    else (
                        "UNet cross-attn K/V"
                        if ".attn2.to_k" in key or ".attn2.to_v" in key
                        else "UNet other"
                    )
                )
                r = ratios.setdefault(group, {"delta": [], "read": []})
                r["delta"].append(float(torch.as_tensor(other).norm() / own))
                r["read"].append(read)
        out[source] = {
            g: {k: round(statistics.median(v), 3) for k, v in r.items()}
            | {"modules": len(r["delta"])}
            for g, r in ratios.items()
        }
    return out


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
            for label, method, stages in VARIANTS:
                for names, idx in groups.items():
                    pipe, seconds, _ = merged_pipe(
                        method, {}, names, Path(tmp), None, stages, lora_dir
                    )
                    for i in idx:
                        add(
                            f"{chosen[i].count} in one image",
                            f"{source} {label}",
                            pipe,
                            i,
                            seconds,
                        )
                    print(f"{source} {label} {'+'.join(names)} done", flush=True)
            for i, c in enumerate(chosen):
                if c.count == 1:
                    pipe, seconds = own(c.scene.sprites[0].name, lora_dir)
                    add("1 in one image", f"{source} own LoRA (ceiling)", pipe, i, seconds)
    print("crosstalk …", flush=True)
    cross = crosstalk(dict(sources), chosen)
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
        "crosstalk": cross,
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
    cross = (
        "\n\nCrosstalk in the 4-concept sum (medians over concept x module): "
        "other concepts' delta / own delta on the concept's own inputs; other concepts' A / "
        "own A reading those inputs.\n\n| LoRAs | module group | modules | delta ratio "
        "| A read ratio |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {src} | {g} | {v['modules']} | {v['delta']:.2f} | {v['read']:.2f} |"
            for src, groups in result.get("crosstalk", {}).items()
            for g, v in groups.items()
        )
    )
    return head + "\n".join(lines) + "\n\nPrompts:\n" + prompts + cross + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "toyworld_orthogonal", 8, "seeds per prompt", threads=1)
    parser.add_argument("--orthogonal-dir", type=Path, default=ORTHOGONAL_DIR)
    parser.add_argument("--no-pairs", action="store_true", help="single-concept pictures only")
    args = parser.parse_args(argv)
    run_and_write(
        args, lambda: evaluate(args.seeds, args.orthogonal_dir, not args.no_pairs), markdown
    )


if __name__ == "__main__":
    main()
