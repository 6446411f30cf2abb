"""Render figures: scenecraft's per-image overhead, and the merged model vs runtime adapters.

    PYTHONPATH=. python benchmarks/render_bench.py [--out benchmarks/results/render_bench.json]
    PYTHONPATH=. python benchmarks/render_bench.py --gpu   # SD 1.5-sized, fp16, 512x512 (GPU)

1. overhead: `scenecraft.render.engine.render` per image (PNG + metadata + manifest writes,
   skip checks, events) vs a bare diffusers pipeline call with the same prompt, seed, size and
   steps; ratio = render / bare (target <= 1.05).
2. merged vs adapters: a merged model has exactly the base model's cost per step (W* has W0's
   shape; `apply_merge` only changes values), so "merged" is timed as the base pipeline; against
   it the same pipeline with 4 and 8 random LoRAs loaded as runtime PEFT adapters (all active).
   speed-up = adapters time / merged time.
3. regional vs global: one UNet step (CFG batch) with diffusers' stock attention processors vs
   scenecraft's regional processor with 2 and 4 regions (ratio = regional / stock; targets
   <= 1.15 and <= 1.3), on the toy model and the SD 1.5-shaped UNet (`--regional-only`).
Runs alternate the variants and report medians. On CPU the clock is the process's CPU time
and torch runs on one thread (the machine is shared: wall time there measures the neighbours,
and tiny models spin-wait badly with two threads on a busy 2-core machine); on CUDA it is wall
time with synchronisation.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scenecraft.models import quiet_libraries
from scenecraft.plan import BaseModelSpec, MergeSpec, RenderJob, RenderPlan, stable_hash
from scenecraft.render.engine import render

PROMPT = "photo of a man and a dog"
NEGATIVE = "blurry"


def make_plan(count: int, size: int, steps: int, batch: int) -> RenderPlan:
    jobs = []
    for seed in range(count):
        fields = {"file": "bench.scene", "scene": "bench", "prompt": PROMPT,
                  "negative_prompt": NEGATIVE, "seed": seed, "width": size, "height": size,
                  "steps": steps, "guidance": 7.5, "sampler": "DDIM"}  # fmt: skip
        jobs.append(RenderJob(id=stable_hash(fields), **fields))  # type: ignore[arg-type]
    merge = MergeSpec(base=BaseModelSpec(source="bench/tiny"), concepts=(), method="none")
    return RenderPlan(file="bench.scene", source_sha256="0" * 64, merge=merge, batch_size=batch,
                      jobs=tuple(jobs))  # fmt: skip


def bare_call(pipe: Any, count: int, size: int, steps: int, batch: int) -> None:
    """What a user would write by hand: the pipeline with one generator per image."""
    for start in range(0, count, batch):
        seeds = range(start, min(start + batch, count))
        pipe(
            prompt=[PROMPT] * len(seeds),
            negative_prompt=[NEGATIVE] * len(seeds),
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        )


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` takes: wall time on CUDA; on CPU the process's CPU time, which other
    processes on a shared machine cannot inflate (torch runs on one thread there)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def overhead(
    pipe: Any, count: int, size: int, steps: int, batch: int, repeats: int
) -> dict[str, Any]:
    """Median seconds per image: bare pipeline vs scenecraft render (alternating runs)."""
    plan = make_plan(count, size, steps, batch)
    bare: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        bare_call(pipe, batch, size, steps, batch)  # warm-up
        for r in range(repeats):
            bare.append(timed(lambda: bare_call(pipe, count, size, steps, batch)) / count)
            out = Path(tmp) / f"run{r}"
            ours.append(timed(lambda o=out: render(plan, o, pipe=pipe, force=True)) / count)
    b, o = statistics.median(bare), statistics.median(ours)
    return {"bare_s_per_image": b, "render_s_per_image": o, "overhead_ratio": o / b,
            "images": count, "repeats": repeats}  # fmt: skip


def write_loras(pipe: Any, folder: Path, count: int, rank: int) -> list[Path]:
    from tests._lora_files import lora_modules, write_peft_lora

    modules = lora_modules(pipe)
    paths = []
    for i in range(count):
        path = folder / f"concept{i}.safetensors"
        write_peft_lora(path, pipe, modules, rank=rank, seed=100 + i, alpha=float(rank))
        paths.append(path)
    return paths


def adapters_vs_merged(
    pipe: Any, size: int, steps: int, batch: int, repeats: int, rank: int
) -> dict[str, Any]:
    """Seconds per image of the base (= merged) model and with 4 and 8 runtime adapters."""
    with tempfile.TemporaryDirectory() as tmp:
        loras = write_loras(pipe, Path(tmp), 8, rank)
        runs: dict[str, list[float]] = {"merged": [], "adapters_4": [], "adapters_8": []}
        for _ in range(repeats):
            runs["merged"].append(timed(lambda: bare_call(pipe, batch, size, steps, batch)) / batch)
            for n in (4, 8):
                names = [f"c{i}" for i in range(n)]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # peft: "multiple adapters"
                    for name, path in zip(names, loras, strict=False):
                        pipe.load_lora_weights(str(path), adapter_name=name)
                pipe.set_adapters(names, adapter_weights=[1.0] * n)
                bare_call(pipe, batch, size, steps, batch)  # warm-up with adapters
                t = timed(lambda: bare_call(pipe, batch, size, steps, batch)) / batch
                runs[f"adapters_{n}"].append(t)
                pipe.unload_lora_weights()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "s_per_image": med,
        "speedup_vs_4_adapters": med["adapters_4"] / med["merged"],
        "speedup_vs_8_adapters": med["adapters_8"] / med["merged"],
        "lora_rank": rank,
        "note": "merged timed as the base pipeline: a merged model has exactly its cost",
    }


def regional_step_cost(
    unet: Any, latent: int, context_dim: int, repeats: int, regions: tuple[int, ...] = (2, 4)
) -> dict[str, Any]:
    """Seconds of one UNet step (CFG batch of 2) with diffusers' stock processors vs the
    regional processor with R side-by-side regions; ratio = regional / stock, same run."""
    from scenecraft.render.regions import RegionalState, installed

    dtype = next(unet.parameters()).dtype
    device = next(unet.parameters()).device
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    ctx = torch.randn(2, 77, context_dim, generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)

    def one() -> None:
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)

    # a sample is k steps, k chosen so it takes >= 0.25 s: a 16-ms toy step timed alone moved
    # the 2-region ratio between 0.92 and 1.23 from run to run on this CPU
    k = max(1, math.ceil(0.25 / max(timed(one), 1e-6)))

    def step() -> None:
        for _ in range(k):
            one()

    def state(r: int) -> RegionalState:
        emb = torch.randn(r, 1, 77, context_dim, generator=g).to(device, dtype)
        boxes: list[list[Any]] = [[(i / r, 0.0, (i + 1) / r, 1.0) for i in range(r)]]
        return RegionalState(emb, emb.clone(), boxes, (latent, latent))

    step()  # warm-up
    runs: dict[str, list[float]] = {"global": [], **{f"regions_{r}": [] for r in regions}}
    for _ in range(repeats):  # alternate the variants
        runs["global"].append(timed(step))
        for r in regions:
            with installed(unet, state(r)):
                step()  # warm-up (masks are cached per level)
                runs[f"regions_{r}"].append(timed(step))
    med = {name: statistics.median(v) / k for name, v in runs.items()}
    return {
        "s_per_step": med,
        **{f"ratio_{r}_regions": med[f"regions_{r}"] / med["global"] for r in regions},
        "latent": latent,
        "repeats": repeats,
        "steps_per_sample": k,
    }


def regional_comparison_cpu(repeats: int = 5) -> dict[str, Any]:
    """Regional vs global UNet step cost on the toy world's model (64x64) and on the SD
    1.5-shaped random UNet at 256x256 (CPU; the GPU suite runs 512x512)."""
    from scenecraft.testing import sd15_pipeline
    from scenecraft.toyworld import load_toyworld_pipeline

    torch.set_num_threads(1)
    toy = load_toyworld_pipeline()
    out = {
        "toy_64x64": regional_step_cost(toy.unet, 16, toy.unet.config.cross_attention_dim, repeats)
    }
    del toy
    sd = sd15_pipeline("cpu", torch.float32)
    out["sd15_256x256"] = regional_step_cost(sd.unet, 32, 768, max(2, repeats // 2))
    return out


def render_comparison_cpu(repeats: int = 5) -> dict[str, Any]:
    """The tiny in-process model on CPU, 64x64, 10 steps."""
    from scenecraft.testing import tiny_pipeline

    torch.set_num_threads(1)
    pipe = tiny_pipeline(0)
    size, steps = 64, 10
    return {
        "device": "cpu (1 thread, CPU-time clock)",
        "model": "scenecraft.testing.tiny_pipeline (random weights)",
        "size": size,
        "steps": steps,
        "overhead_batch1": overhead(pipe, 8, size, steps, 1, repeats),
        "overhead_batch4": overhead(pipe, 8, size, steps, 4, repeats),
        "merged_vs_adapters": adapters_vs_merged(pipe, size, steps, 1, repeats, rank=4),
        "regional": regional_comparison_cpu(repeats),
    }


def sd15_random_pipeline(dtype: torch.dtype, device: str) -> Any:
    """An SD 1.5-sized pipeline from its published config shapes, random weights, no download."""
    from scenecraft.testing import sd15_pipeline

    return sd15_pipeline(device, dtype)


def render_comparison_gpu(repeats: int = 3) -> dict[str, Any]:
    """SD 1.5 size, fp16, 512x512, 30 steps, batch 4, on the first CUDA device."""
    assert torch.cuda.is_available(), "--gpu needs a CUDA device"
    pipe = sd15_random_pipeline(torch.float16, "cuda")
    size, steps, batch = 512, 30, 4
    return {
        "device": torch.cuda.get_device_name(0),
        "model": "SD 1.5-sized UNet/VAE/CLIP-L from config, random weights, fp16",
        "size": size,
        "steps": steps,
        "batch": batch,
        "overhead": overhead(pipe, 8, size, steps, batch, repeats),
        "merged_vs_adapters": adapters_vs_merged(pipe, size, steps, batch, repeats, rank=16),
        "regional_512x512": regional_step_cost(pipe.unet, 64, 768, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SD 1.5-sized comparison on CUDA")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/)")
    parser.add_argument(
        "--regional-only", action="store_true", help="only the regional step-cost figures (CPU)"
    )
    args = parser.parse_args()
    quiet_libraries()
    if args.regional_only:
        figures = {"regional": regional_comparison_cpu(args.repeats or 5)}
    elif args.gpu:
        figures = render_comparison_gpu(args.repeats or 3)
    else:
        figures = render_comparison_cpu(args.repeats or 5)
    name = "render_bench_gpu.json" if args.gpu else "render_bench.json"
    if args.regional_only:
        name = "render_bench_regional.json"
    out = Path(args.out or Path(__file__).parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
