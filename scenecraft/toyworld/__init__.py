"""The embedded toy world: a tiny, genuinely trained text-to-image model of a procedural world.

Ships inside scenecraft (weights/ < 20 MB) so ``scenecraft render scenes/toyworld.scene`` works
offline on a CPU: a diffusers folder for the base model, one LoRA per concept trained alone on
it, and a judge that scores generated images exactly because the world is procedural.

    from scenecraft.toyworld import CONCEPTS, expected_scene, load_toyworld_pipeline, lora_path
    from scenecraft.toyworld.judge import judge  # (the submodule keeps the name `judge`)

    pipe = load_toyworld_pipeline()
    pipe.load_lora_weights(str(lora_path("ziggy")))
    image = pipe("<ZIGGY> circle, on grass", height=64, width=64).images[0]
    judge(image, expected_scene(["ziggy"], setting="on grass"))  # Scores(accuracy, identity, ...)
"""

from __future__ import annotations

from pathlib import Path

from scenecraft.toyworld.judge import (
    ExpectedScene,
    ExpectedSprite,
    Scores,
    expected_prompt,
    expected_scene,
)
from scenecraft.toyworld.model import (
    BASE_DIR,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    LORA_DIR,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.world import CONCEPTS, Concept, Sprite


def lora_path(name: str) -> Path:
    """The shipped LoRA of a concept: ``weights/loras/<name>.safetensors``."""
    return LORA_DIR / f"{name}.safetensors"


__all__ = [
    "BASE_DIR",
    "CONCEPTS",
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "LORA_DIR",
    "Concept",
    "ExpectedScene",
    "ExpectedSprite",
    "Scores",
    "Sprite",
    "expected_prompt",
    "expected_scene",
    "load_toyworld_pipeline",
    "lora_path",
]
