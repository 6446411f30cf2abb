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
Runs alternate the variants and report medians. On CPU the clock is the process's CPU time
and torch runs on one thread (the machine is shared: wall time there measures the neighbours,
and tiny models spin-wait badly with two threads on a busy 2-core machine); on CUDA it is wall
time with synchronisation.
"""

from __future__ import annotations

import argparse
import json
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="SD 1.5-sized comparison on CUDA")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/)")
    args = parser.parse_args()
    quiet_libraries()
    if args.gpu:
        figures = render_comparison_gpu(args.repeats or 3)
    else:
        figures = render_comparison_cpu(args.repeats or 5)
    name = "render_bench_gpu.json" if args.gpu else "render_bench.json"
    out = Path(args.out or Path(__file__).parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
