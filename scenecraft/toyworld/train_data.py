"""The training data of the toy world's base model: scenes drawn from the world with their
captions, boxes and regional prompts, and the trainer's configuration (`train_base`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scenecraft.toyworld.model import images_tensor
from scenecraft.toyworld.world import (
    GRID,
    SIZE,
    VERSION,
    Box,
    Scene,
    caption,
    random_scene,
    reach,
    region_prompts,
    render_with_boxes,
)

NormBox = tuple[float, float, float, float]  # (x0, y0, x1, y1), fractions of the canvas


@dataclass(frozen=True)
class SceneRegions:
    """One cached scene's regional conditioning (what the compiler writes for it)."""

    prompt: str  # the global prompt: every sprite by its shape only
    regions: tuple[tuple[NormBox, str], ...]  # per sprite: its grown box and its region prompt


@dataclass(frozen=True)
class TrainConfig:
    """Schedule of one base-model run."""

    vae_minutes: float = 6.0  # wall-clock budget of the VAE stage
    vae_steps: int = 100_000  # step cap of the VAE stage (tests use a handful)
    minutes: float = 40.0  # wall-clock budget of the UNet stage
    steps: int = 1_000_000  # step cap of the UNet stage
    batch: int = 32  # UNet batch size
    vae_batch: int = 16  # VAE batch size
    lr: float = 1e-3  # peak AdamW learning rate (UNet and text encoder)
    vae_lr: float = 2e-3  # VAE learning rate
    warmup: int = 200  # linear warm-up steps
    n_data: int = 12_000  # cached training scenes (latents + captions)
    drop_caption: float = 0.1  # probability of an empty caption (for classifier-free guidance)
    ema: float = 0.999  # EMA decay of the saved UNet/text-encoder weights
    checkpoint_minutes: float = 5.0  # write the pipeline this often
    seed: int = 0  # data / noise seed
    init: Path | None = None  # warm start from this trained base folder (keeps its VAE)
    world: int = VERSION  # world version the data comes from (1: fixed slots, 2: drawn layouts)
    vae_init: bool = False  # with a VAE folder: train it further instead of keeping it as is
    regional: float = 0.0  # share of multi-sprite scenes trained with regional cross-attention


def scene_batch(rng: random.Random, n: int, world: int = VERSION) -> tuple[torch.Tensor, list[str]]:
    """``n`` random scenes of a world version, each drawn with its own layout seed."""
    x, scenes, _ = scene_batch_with_boxes(rng, n, world)
    return x, [caption(s) for s in scenes]


def scene_batch_with_boxes(
    rng: random.Random, n: int, world: int = VERSION
) -> tuple[torch.Tensor, list[Scene], list[list[Box]]]:
    """``n`` random scenes, their images (n, 3, 64, 64) and each sprite's body box."""
    scenes: list[Scene] = []
    images: list[Any] = []
    boxes: list[list[Box]] = []
    while len(scenes) < n:
        scene = random_scene(rng, version=world)
        try:
            image, body = render_with_boxes(scene, rng.randrange(2**31), version=world)
        except ValueError:  # a crowded draw whose layout search gave up: draw another scene
            continue
        images.append(image)
        scenes.append(scene)
        boxes.append(body)
    return images_tensor(images), scenes, boxes


def grown_boxes(reaches: list[Box], rng: random.Random) -> list[NormBox]:
    """Region boxes around sprites: each starts as its sprite's reach (body and hat) and grows
    one grid cell at a time, round robin in random order, each side up to a random number of
    cells, never onto another region nor past the canvas, so regions tile part or all of it
    without overlapping (as the compiler's layouts do)."""
    boxes = [list(b) for b in reaches]
    budget = [[rng.randint(0, SIZE // GRID) for _ in range(4)] for _ in boxes]  # x0 y0 x1 y1

    def free(i: int, b: list[int]) -> bool:
        if min(b[0], b[1]) < 0 or max(b[2], b[3]) > SIZE:
            return False
        return all(
            b[2] <= o[0] or o[2] <= b[0] or b[3] <= o[1] or o[3] <= b[1]
            for j, o in enumerate(boxes)
            if j != i
        )

    while any(any(left) for left in budget):
        for i in rng.sample(range(len(boxes)), len(boxes)):
            for side in rng.sample(range(4), 4):
                if not budget[i][side]:
                    continue
                grown = list(boxes[i])
                grown[side] += -GRID if side < 2 else GRID
                if free(i, grown):
                    boxes[i] = grown
                    budget[i][side] -= 1
                else:
                    budget[i][side] = 0
    return [(b[0] / SIZE, b[1] / SIZE, b[2] / SIZE, b[3] / SIZE) for b in boxes]


def scene_regions(scene: Scene, boxes: list[Box], rng: random.Random) -> SceneRegions:
    """The compiler's regional text for a scene (`regions on`), boxes grown around the sprites."""
    prompt, regions = region_prompts(scene)
    grown = grown_boxes([reach(b, s) for b, s in zip(boxes, scene.sprites, strict=True)], rng)
    return SceneRegions(prompt, tuple(zip(grown, regions, strict=True)))
