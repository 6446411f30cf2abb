"""Round trip of `scenecraft export` on the embedded toy world: the merge of
scenes/toyworld.scene exported as one LoRA (and as a single-file checkpoint), loaded into PLAIN
diffusers (``load_lora_weights`` + ``fuse_lora``; ``from_single_file``), against scenecraft's own
merged model (base + the cache entry, `scenecraft.merge.apply.apply_merge`).

Pictures: each of the file's five concepts alone in a setting (``<ZIGGY> circle, on grass`` …,
the judge's prompts) with ``--seeds`` seeds each, plus every job of the file with its global
prompt (regions off), its seed, size, steps, guidance and sampler. The same prompts and
generator seeds go through the three models. Reported: the mean and max absolute pixel
difference (0-255 levels) of the LoRA / checkpoint pictures against the merged model's, the
judged identity (scenecraft.toyworld.judge) of the single-concept pictures under each model, and
the LoRA's per-layer rank and error and file size. Targets (issue 28): within 2 levels mean and
identity within 0.02.

    python benchmarks/export_roundtrip.py [--seeds 8] [--max-error 0.01] [--cache-dir DIR]
        [--out benchmarks/results/export_roundtrip.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scenecraft import load
from scenecraft.export.api import ExportOptions, export_merge
from scenecraft.files import atomic_write_text
from scenecraft.merge.apply import apply_merge
from scenecraft.plan import RenderJob, generator_seed
from scenecraft.render.samplers import make_scheduler
from scenecraft.toyworld import (
    BASE_DIR,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    expected_prompt,
    expected_scene,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.judge import judge

SCENE = Path(__file__).resolve().parent.parent / "scenes" / "toyworld.scene"
ALONE = (  # (concept, setting): the judge's single-concept prompts
    ("ziggy", "on grass"),
    ("blip", "at sea"),
    ("kiki", None),
    ("momo", "in the desert"),
    ("lulu", "on grass"),
)


def picture_list(jobs: tuple[RenderJob, ...], seeds: int) -> list[dict[str, Any]]:
    """Every picture to draw: prompt, seed, size, steps, guidance, sampler, and what the judge
    expects (single-concept pictures only)."""
    out: list[dict[str, Any]] = []
    for name, setting in ALONE:
        scene = expected_scene([name], setting=setting)
        for seed in range(seeds):
            out.append(
                {
                    "prompt": expected_prompt(scene),
                    "seed": seed,
                    "size": 64,
                    "steps": DEFAULT_STEPS,
                    "guidance": DEFAULT_GUIDANCE,
                    "sampler": "DDIM",
                    "expected": scene,
                    "label": f"{name} alone",
                }
            )
    seen = set()
    for job in jobs:
        if job.id in seen:
            continue
        seen.add(job.id)
        out.append(
            {
                "prompt": job.prompt,
                "seed": generator_seed(job),
                "size": job.width,
                "steps": job.steps,
                "guidance": job.guidance,
                "sampler": job.sampler,
                "expected": None,
                "label": f"{job.scene} (global prompt)",
            }
        )
    return out


@torch.no_grad()
def draw(pipe: Any, pictures: list[dict[str, Any]], batch: int = 16) -> list[Any]:
    """One image per picture, batched by (size, steps, guidance, sampler)."""
    images: list[Any] = [None] * len(pictures)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, p in enumerate(pictures):
        groups.setdefault((p["size"], p["steps"], p["guidance"], p["sampler"]), []).append(i)
    base_config = pipe.scheduler.config
    for (size, steps, guidance, sampler), idx in groups.items():
        pipe.scheduler = make_scheduler(sampler, base_config)
        for start in range(0, len(idx), batch):
            chunk = idx[start : start + batch]
            out = pipe(
                [pictures[i]["prompt"] for i in chunk],
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=[torch.Generator().manual_seed(pictures[i]["seed"]) for i in chunk],
            )
            for i, image in zip(chunk, out.images, strict=True):
                images[i] = image
    return images


def pixel_difference(a: list[Any], b: list[Any]) -> dict[str, float]:
    diffs = [
        np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)) for x, y in zip(a, b, strict=True)
    ]
    return {
        "mean": round(float(np.mean([d.mean() for d in diffs])), 3),
        "worst_image_mean": round(float(max(d.mean() for d in diffs)), 3),
        "max": int(max(d.max() for d in diffs)),
    }


def identity(images: list[Any], pictures: list[dict[str, Any]]) -> float:
    scores = [
        judge(im, p["expected"]).identity
        for im, p in zip(images, pictures, strict=True)
        if p["expected"]
    ]
    return round(statistics.fmean(scores), 4)


def table(result: dict[str, Any]) -> str:
    """The Markdown table docs/export.md shows (benchmarks/readme_tables.py copies it there)."""
    lora, px, ident = result["lora"], result["pixels_vs_merge"], result["identity"]
    rows = [
        "| model | pixel levels vs the merge: mean (worst image, max) | identity |",
        "| --- | --- | --- |",
        f"| scenecraft's merged model | 0 | {ident['merge']:.3f} |",
    ]
    for name, label in (
        ("lora", "exported LoRA, plain diffusers"),
        ("checkpoint", "exported checkpoint, from_single_file"),
    ):
        d = px[name]
        rows.append(
            f"| {label} | {d['mean']:.3f} ({d['worst_image_mean']:.3f}, {d['max']}) | {ident[name]:.3f} |"
        )
    return (
        "\n".join(rows)
        + f"\n\n{result['pictures']} pictures ({result['single_concept_pictures']} judged: 5 concepts"
        f" alone × {result['seeds']} seeds). LoRA: {lora['modules']} modules, budget"
        f" {lora['max_error']}, rank {lora['min_rank']}–{lora['max_rank']} (mean"
        f" {lora['mean_rank']:.1f}; {lora['rank_sum']} of {lora['full_rank_sum']} full ranks),"
        f" error mean {lora['mean_error']:.4f} worst {lora['worst_error']:.4f},"
        f" {lora['bytes'] / 2**20:.2f} MB ({lora['format']}, fp16); checkpoint"
        f" {result['checkpoint_bytes'] / 2**20:.1f} MB.\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--max-error", type=float, default=0.01)
    ap.add_argument("--out", default="benchmarks/results/export_roundtrip.json")
    ap.add_argument("--cache-dir", default=None, help="merge cache (default: a new temp folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = load(str(SCENE)).plan
    work = Path(tempfile.mkdtemp(prefix="scenecraft-export-bench-"))
    # 1. export the file's merge: one LoRA and one single-file checkpoint
    pipe = load_toyworld_pipeline()
    start = time.perf_counter()
    options = ExportOptions(
        lora=work / "toyworld.safetensors",
        max_error=args.max_error,
        checkpoint=work / "toyworld-ckpt.safetensors",
    )
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    report = export_merge(plan, pipe, options, cache_dir=cache)
    export_seconds = time.perf_counter() - start
    assert report.lora is not None and report.checkpoint is not None
    # 2. the three models
    merged = load_toyworld_pipeline()
    apply_merge(merged, cache / report.entry)
    plain = load_toyworld_pipeline()
    plain.load_lora_weights(str(options.lora))
    plain.fuse_lora()
    from diffusers import StableDiffusionPipeline

    single = StableDiffusionPipeline.from_single_file(
        str(options.checkpoint),
        config=str(BASE_DIR),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    single.set_progress_bar_config(disable=True)
    # 3. the same pictures through each
    pictures = picture_list(plan.jobs, args.seeds)
    timings = {}
    images = {}
    for name, model in (("merge", merged), ("lora", plain), ("checkpoint", single)):
        t0 = time.perf_counter()
        images[name] = draw(model, pictures)
        timings[name] = round(time.perf_counter() - t0, 1)
    lora = report.lora.as_dict()
    ranks = [row["rank"] for row in lora["layers"]]
    result = {
        "scene": "scenes/toyworld.scene",
        "pictures": len(pictures),
        "single_concept_pictures": sum(1 for p in pictures if p["expected"]),
        "seeds": args.seeds,
        "lora": {
            "format": lora["format"],
            "max_error": lora["max_error"],
            "modules": lora["modules"],
            "bytes": lora["bytes"],
            "worst_error": round(lora["worst_error"], 5),
            "mean_error": round(statistics.fmean(r["error"] for r in lora["layers"]), 5),
            "mean_rank": round(lora["mean_rank"], 2),
            "max_rank": lora["max_rank"],
            "min_rank": min(ranks),
            "full_rank_sum": sum(r["full_rank"] for r in lora["layers"]),
            "rank_sum": sum(ranks),
        },
        "checkpoint_bytes": report.checkpoint["bytes"],
        "pixels_vs_merge": {
            "lora": pixel_difference(images["lora"], images["merge"]),
            "checkpoint": pixel_difference(images["checkpoint"], images["merge"]),
        },
        "identity": {name: identity(images[name], pictures) for name in images},
        "seconds": {"export": round(export_seconds, 1), "draw": timings},
        "targets": {"pixels_mean": 2.0, "identity_gap": 0.02},
    }
    result["identity_gap"] = {
        name: round(abs(result["identity"][name] - result["identity"]["merge"]), 4)
        for name in ("lora", "checkpoint")
    }
    result["met"] = all(
        result["pixels_vs_merge"][n]["mean"] <= 2.0 and result["identity_gap"][n] <= 0.02
        for n in ("lora", "checkpoint")
    )
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(args.out).with_suffix(".md"), table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "lora"}, indent=2))
    print(json.dumps(result["lora"], indent=2))


if __name__ == "__main__":
    main()
