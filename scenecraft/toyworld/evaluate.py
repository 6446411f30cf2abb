"""Sample the toy model and score the samples with the judge (used by the trainers' reports).

python -m scenecraft.toyworld.evaluate --seeds 16 --grid /tmp/toyworld_grid.png [--lora NAME]
python -m scenecraft.toyworld.evaluate --regions     # does the base draw each sprite in its box?
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from scenecraft.toyworld.judge import (
    ExpectedScene,
    NormBox,
    expected_prompt,
    expected_scene,
    ground_truth,
    judge,
)
from scenecraft.toyworld.model import (
    BASE_DIR,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    LORA_DIR,
    images_tensor,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.world import RELATIONS, SETTINGS, random_sprite, region_prompts


def sample(
    pipe: Any,
    prompts: Sequence[str],
    seed: int,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
) -> list[Image.Image]:
    """One 64x64 image per prompt; image i uses generator seed ``seed + i``."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    out = pipe(
        list(prompts),
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=gens,
    )
    return list(out.images)


def score(
    pipe: Any, scenes: Sequence[ExpectedScene], seed: int = 0, batch: int = 16
) -> tuple[dict[str, float], list[Image.Image]]:
    """Mean judge scores over scenes (scene i sampled with seed ``seed + i``), and the images."""
    images: list[Image.Image] = []
    for i in range(0, len(scenes), batch):
        chunk = scenes[i : i + batch]
        images += sample(pipe, [expected_prompt(e) for e in chunk], seed + i)
    results = [judge(im, e) for im, e in zip(images, scenes, strict=True)]
    n = max(len(results), 1)
    means = {
        k: sum(getattr(r, k) for r in results) / n
        for k in ("accuracy", "identity", "placement", "similarity", "attribute")
    }
    return means, images


@torch.no_grad()
def vae_roundtrip(vae: Any, n: int = 32, seed: int = 0, version: int = 2) -> dict[str, float]:
    """Identity the judge still finds after a VAE round trip of ground truth (the ceiling any
    UNet has under this VAE): mean per sprite count, ``n`` scenes each, drawn layouts."""
    from scenecraft.toyworld.world import render

    report = {}
    for count in (1, 2, 3, 4):
        scenes = plain_scenes(n, seed + count, count == 2, count)
        truth = [render(ground_truth(e), seed + i, version=version) for i, e in enumerate(scenes)]
        x = images_tensor(truth)  # (n, 3, 64, 64) in [-1, 1]
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        arr = ((y.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        images = [Image.fromarray(a) for a in arr]
        report[str(count)] = (
            sum(judge(im, e).identity for im, e in zip(images, scenes, strict=True)) / n
        )
    return report


def regional_text(scene: ExpectedScene) -> tuple[str, list[tuple[NormBox, str]]]:
    """What the compiler writes for a scene of plain sprites with `regions on`: the global
    prompt (every sprite by its shape) and per sprite its layout box (`scenecraft.layout`) and
    region prompt (the scene with only that sprite described)."""
    from scenecraft.layout import derive

    prompt, regions = region_prompts(ground_truth(scene))
    names = [s.name for s in scene.sprites]
    boxes = derive(names, [(p.subject, p.relation, p.target) for p in scene.placements])
    return prompt, [(boxes[n], r) for n, r in zip(names, regions, strict=True)]


@torch.no_grad()
def regional_score(
    pipe: Any, scenes: Sequence[ExpectedScene], seed: int = 0
) -> tuple[dict[str, float], list[Image.Image]]:
    """Mean judge scores of scenes rendered with regional sampling (`regional_text`), each
    sprite judged inside its box; scene i is sampled with seed ``seed + i``."""
    from scenecraft.render.regions import RegionalState, encode, installed

    texts = [regional_text(e) for e in scenes]
    R = max(len(r) for _, r in texts)
    prompts = [r[k][1] if k < len(r) else g for g, r in texts for k in range(R)]
    pos, neg = encode(pipe, prompts, [None] * len(prompts))  # (B·R, T, D), image-major
    boxes = [[r[k][0] if k < len(r) else None for k in range(R)] for _, r in texts]
    state = RegionalState.image_major(pos, neg, boxes, latent_hw=(16, 16))
    with installed(pipe.unet, state):
        images = sample(pipe, [g for g, _ in texts], seed)
    boxed = [
        replace(e, sprites=tuple(replace(s, box=b) for s, (b, _) in zip(e.sprites, r, strict=True)))
        for e, (_, r) in zip(scenes, texts, strict=True)
    ]
    results = [judge(im, e) for im, e in zip(images, boxed, strict=True)]
    means = {
        k: sum(getattr(r, k) for r in results) / len(results)
        for k in ("accuracy", "identity", "placement")
    }
    return means, images


def plain_scenes(n: int, seed: int, pairs: bool, count: int | None = None) -> list[ExpectedScene]:
    """Scenes of plain sprites (base-model check): one sprite, or ``count`` (default two, with
    a placement between the first two) of different shapes."""
    rng = random.Random(seed)
    scenes = []
    k = count or (2 if pairs else 1)
    for _ in range(n):
        setting = rng.choice([None, *SETTINGS])
        sprites = [random_sprite(rng, 0.0)]
        while len(sprites) < k:
            b = random_sprite(rng, 0.0)
            if all(b.shape != s.shape for s in sprites):
                sprites.append(b)
        named = [(f"s{i}", s) for i, s in enumerate(sprites)]
        places = []
        if k >= 2 and (pairs or rng.random() < 0.5):
            relation = rng.choice([r for r in RELATIONS if r != "beside"])
            places.append(("s0", relation, "s1"))
        scenes.append(expected_scene(named, places, setting=setting))
    return scenes


def concept_scenes(name: str, n: int, seed: int) -> list[ExpectedScene]:
    """Single-concept scenes in random settings."""
    rng = random.Random(seed)
    return [expected_scene([name], setting=rng.choice([None, *SETTINGS])) for _ in range(n)]


def grid(images: Sequence[Image.Image], cols: int = 8, scale: int = 2) -> Image.Image:
    rows = (len(images) + cols - 1) // cols
    g = Image.new("RGB", (64 * cols, 64 * rows))
    for i, im in enumerate(images):
        g.paste(im, ((i % cols) * 64, (i // cols) * 64))
    return g.resize((64 * cols * scale, 64 * rows * scale), Image.Resampling.NEAREST)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, default=BASE_DIR)
    parser.add_argument(
        "--lora", action="append", default=[], help="concept name(s) to evaluate with their LoRA"
    )
    parser.add_argument("--lora-dir", type=Path, default=LORA_DIR)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--grid", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--vae", type=Path, default=None, help="only score this VAE's round trip of ground truth"
    )
    parser.add_argument(
        "--regions",
        action="store_true",
        help="plain sprites with regional sampling, each judged inside its layout box",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.vae is not None:
        from diffusers import AutoencoderKL

        print(json.dumps(vae_roundtrip(AutoencoderKL.from_pretrained(args.vae)), indent=1))
        return
    report: dict[str, Any] = {}
    images: list[Image.Image] = []
    if args.regions:
        pipe = load_toyworld_pipeline(path=args.base)
        for label, count in (("pairs", 2), ("three", 3), ("four", 4)):
            scenes = plain_scenes(args.seeds, 1, count == 2, count)
            report[f"{label}, regions"], ims = regional_score(pipe, scenes, seed=1000)
            images += ims
    elif not args.lora:
        pipe = load_toyworld_pipeline(path=args.base)
        for label, count in (("single", 1), ("pairs", 2), ("three", 3), ("four", 4)):
            scenes = plain_scenes(args.seeds, 1, count == 2, count)
            report[label], ims = score(pipe, scenes, seed=1000)
            images += ims
    for name in args.lora:
        pipe = load_toyworld_pipeline(path=args.base)
        pipe.load_lora_weights(str(args.lora_dir / f"{name}.safetensors"))
        report[name], ims = score(pipe, concept_scenes(name, args.seeds, 2), seed=2000)
        images += ims
    print(json.dumps(report, indent=1))
    if args.grid:
        grid(images).save(args.grid)


if __name__ == "__main__":
    main()
