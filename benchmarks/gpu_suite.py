"""GPU merge suite: a full SD 1.5-shaped pipeline (random weights, no downloads), 12 concepts,
all three feature stages, every method of interest. Target: the 12-concept LoRACLR merge in
under 60 s on one H100.

    OUT=/tmp/out python benchmarks/gpu_suite.py                 # on the lent GPU
    OUT=/tmp/out python benchmarks/gpu_suite.py --tiny          # CPU smoke test (tiny pipeline)
    OUT=/tmp/out python benchmarks/gpu_suite.py --family sdxl   # SDXL-shaped, on the GPU
    OUT=/tmp/out python benchmarks/gpu_suite.py --family sdxl --tiny   # … smoke test, tiny SDXL

``--family sdxl``: a full SDXL-shaped pipeline (2.6B UNet, CLIP ViT-L + OpenCLIP bigG, random
weights from the published shapes), LoRAs on every attention / feed-forward / projection layer of
the UNet and both text encoders (plus text_encoder_2's projection), an SDXL embedding (clip_l,
clip_g) per concept, stage 3 at 1024² by default; no render comparison.

Writes $OUT/gpu_suite.json (``gpu_suite_sdxl.json``) after every method (partial results survive
a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenecraft.merge.config import METHODS as MODELS  # noqa: E402
from scenecraft.merge.config import Stages, parse  # noqa: E402
from scenecraft.merge.engine import MergeConfig, run_merge  # noqa: E402
from scenecraft.merge.types import ConceptLoRA, LoRALayer  # noqa: E402
from scenecraft.testing import quiet_libraries, tiny_pipeline, tiny_sdxl_pipeline  # noqa: E402

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "loraclr": ("loraclr", {}),
    "gradient-fusion": ("gradient-fusion", {}),
    "linear": ("linear", {}),
    "loraclr-reference": ("loraclr", {"recipe": "reference"}),
}
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def sd15_pipeline(device: torch.device) -> Any:
    """SD 1.5-shaped pipeline with random weights on ``device``, DPM-Solver for stage 3."""
    from diffusers import DPMSolverMultistepScheduler

    from scenecraft.testing import sd15_pipeline as build

    pipe = build(device)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


def sdxl_pipeline(device: torch.device) -> Any:
    """SDXL-shaped pipeline with random weights on ``device`` (fp32 features, as documented)."""
    from diffusers import DPMSolverMultistepScheduler

    from scenecraft.testing import sdxl_pipeline as build

    pipe = build(device)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    return pipe


def lora_paths(pipe: Any) -> list[str]:
    """Every attention / feed-forward / projection layer of the UNet and the text encoder(s)."""
    paths = [
        f"unet.{n}"
        for n, m in pipe.unet.named_modules()
        if ".transformer_blocks." in n + "." or n.endswith(("proj_in", "proj_out"))
        if n.endswith(TARGETS) and hasattr(m, "weight")
    ]
    for component in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, component, None)
        if encoder is None:
            continue
        paths += [
            f"{component}.{n}"
            for n, m in encoder.named_modules()
            if n.endswith((*TE_TARGETS, "text_projection")) and isinstance(m, torch.nn.Linear)
        ]
    return sorted(set(paths))


def random_concepts(pipe: Any, count: int, rank: int, device: torch.device) -> list[ConceptLoRA]:
    """``count`` random rank-``rank`` LoRAs on every target layer, each with its own token."""
    paths = lora_paths(pipe)
    dims = {
        name: getattr(pipe, name).get_input_embeddings().weight.shape[1]
        for name in ("text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
    }
    concepts = []
    for c in range(count):
        g = torch.Generator(device="cpu").manual_seed(100 + c)
        layers = {}
        for path in paths:
            component, _, sub = path.partition(".")
            w = getattr(pipe, component).get_submodule(sub).weight
            n_out, n_in = w.shape[0], w[0].numel()
            up = (torch.randn(n_out, rank, generator=g) * 0.5 / rank**0.5).to(device)
            down = (torch.randn(rank, n_in, generator=g) / n_in**0.5).to(device)
            layers[path] = LoRALayer(path, up, down, alpha=float(rank))
        token = f"<c{c}>"
        emb = {
            name: {token: torch.randn(1, dim, generator=g).to(device) * 0.02}
            for name, dim in dims.items()
        }
        concepts.append(
            ConceptLoRA(f"c{c}", (token,), layers, 1.0, emb, metadata={"class_noun": "man"})
        )
    return concepts


def _compact(figures: dict[str, Any]) -> dict[str, Any]:
    """Figures without the per-layer table (kept in a separate key, it is long)."""
    return {k: v for k, v in figures.items() if k != "layers"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test on the tiny pipeline")
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--concepts", type=int, default=12)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps of stage 3")
    parser.add_argument("--size", type=int, help="image side of stage 3 (512; SDXL 1024)")
    parser.add_argument(
        "--rows", type=int, help="spatial rows per concept/layer (1024; SDXL 512: ~30 GB of rows)"
    )
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--no-render", action="store_true", help="skip the render comparison after the merges"
    )
    args = parser.parse_args(argv)
    sdxl = args.family == "sdxl"
    args.size = args.size or (1024 if sdxl else 512)
    args.rows = args.rows or (512 if sdxl else 1024)
    name = "gpu_suite_sdxl.json" if sdxl else "gpu_suite.json"
    out_dir = Path(os.environ.get("OUT", "benchmarks/results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 features and solves, as documented
    t0 = time.perf_counter()
    if args.tiny:
        torch.set_num_threads(1)  # tiny ops: one thread is far faster on a shared CPU
        pipe = tiny_sdxl_pipeline(0) if sdxl else tiny_pipeline(0)
        args.concepts, args.steps, args.size, args.rows = min(args.concepts, 3), 2, 32, 64
    else:
        pipe = sdxl_pipeline(device) if sdxl else sd15_pipeline(device)
    build_s = time.perf_counter() - t0
    concepts = random_concepts(pipe, args.concepts, args.rank, device)
    cfg = MergeConfig(
        figure_stages=Stages(spatial=True),  # the data-free methods' figures: all stages too
        spatial_steps=args.steps,
        spatial_size=args.size,
        spatial_max_rows=args.rows,
        batch_elements=2**28 if device.type == "cuda" else 2**26,
    )
    report: dict[str, Any] = {
        "suite": "gpu_suite",
        "family": args.family,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "tiny": args.tiny,
        "concepts": args.concepts,
        "rank": args.rank,
        "lora_layers_per_concept": len(concepts[0].layers),
        "config": {"steps": args.steps, "size": args.size, "rows": args.rows},
        "build_seconds": round(build_s, 2),
        "torch": torch.__version__,
        "runs": {},
    }
    for label in args.methods:
        method, params = METHODS[label]
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        spatial = {"spatial": True} if MODELS[method].feature_based else {}
        outcome = run_merge(pipe, concepts, parse(method, {**params, **spatial}), config=cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        run = {"seconds": round(seconds, 2), "changed_modules": len(outcome.weights)}
        if device.type == "cuda":
            run["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        run["figures"] = _compact(outcome.figures)
        report["runs"][label] = run
        stages = outcome.figures["stages"]
        summary = {
            s: (round(v["fidelity"]["mean"] or 0, 3), round(v["fidelity"]["worst"] or 0, 3))
            for s, v in stages.items()
        }
        print(f"{label}: {seconds:.1f} s, fidelity (mean, worst) by stage {summary}", flush=True)
        tmp = out_dir / f"{name}.tmp"
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out_dir / name)
        del outcome
    if device.type == "cuda" and not args.no_render and not sdxl:
        # the render issue's comparison at SD 1.5 size: overhead vs bare diffusers, merged model
        # vs 4 and 8 runtime adapters (fp16, 512x512, 30 steps, batch 4)
        del pipe, concepts
        torch.cuda.empty_cache()
        sys.path.insert(0, str(Path(__file__).parent))
        from render_bench import render_comparison_gpu

        report["render"] = render_comparison_gpu()
        print(f"render: {json.dumps(report['render'])}", flush=True)
        tmp = out_dir / "gpu_suite.json.tmp"
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out_dir / "gpu_suite.json")
    print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
