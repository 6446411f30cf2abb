"""Shared helpers for the render tests: one tiny pipeline per session, two random LoRAs, plans.

Plans are built directly (no scene language): `make_plan` gives a two-concept plan whose jobs
are hashed like the compiler's, with LoRA files written by tests/_lora_files.py.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from scenecraft.plan import (
    BaseModelSpec,
    ConceptSpec,
    MergeSpec,
    PanelSpec,
    RenderJob,
    RenderPlan,
    SourceSpan,
    StoryboardSpec,
    stable_hash,
)

SIZE = 32  # image side in pixels (16x16 latents: the tiny UNet's cheapest valid size)
STEPS = 2  # denoising steps per image


@functools.cache
def tiny_pipe() -> Any:
    """The session's tiny SD 1.x pipeline (fp32, CPU). Tests must leave it as they found it."""
    from scenecraft.models import quiet_libraries
    from scenecraft.testing import tiny_pipeline

    quiet_libraries()
    return tiny_pipeline(0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two spin-wait badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def session_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="scenecraft-render-tests-"))


@functools.cache
def saved_pipeline_dir() -> Path:
    """The tiny pipeline saved as a diffusers folder (for the real loading path)."""
    from scenecraft.testing import save_tiny_pipeline

    return save_tiny_pipeline(session_dir() / "tiny-sd")


@functools.cache
def lora_files() -> tuple[Path, Path]:
    """Two random PEFT LoRAs (rank 4) over the tiny pipeline's attention/ff/CLIP layers."""
    from tests._lora_files import lora_modules, write_peft_lora

    pipe = tiny_pipe()
    modules = lora_modules(pipe)
    paths = (session_dir() / "ziggy.safetensors", session_dir() / "momo.safetensors")
    for seed, path in enumerate(paths, start=1):
        write_peft_lora(path, pipe, modules, rank=4, seed=seed, alpha=4.0)
    return paths


def make_job(
    scene: str,
    seed: int,
    prompt: str,
    *,
    file: str = "story.scene",
    sampler: str = "DDIM",
    steps: int = STEPS,
    size: int = SIZE,
    guidance: float = 7.5,
    negative: str = "blurry",
    storyboard: str | None = None,
    panel: int | None = None,
    caption: str | None = None,
    index: int = 0,
) -> RenderJob:
    fields: dict[str, Any] = {
        "file": file,
        "scene": scene,
        "storyboard": storyboard,
        "panel": panel,
        "caption": caption,
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "index": index,
        "width": size,
        "height": size,
        "steps": steps,
        "guidance": guidance,
        "sampler": sampler,
    }
    span = SourceSpan(file=file, line=3 + seed, col=1, end_line=5 + seed, end_col=2)
    return RenderJob(id=stable_hash(fields), span=span, concepts=("ziggy", "momo"), **fields)


def make_plan(
    *,
    method: str = "none",
    base: str = "tiny/test-model",
    seeds: tuple[int, ...] = (1, 2),
    scenes: tuple[str, ...] = ("duo", "solo"),
    batch_size: int = 1,
    images_per_seed: int = 1,
    storyboard: bool = False,
    **job_kw: Any,
) -> RenderPlan:
    """Two concepts with random LoRAs; one job per (scene, seed); optionally a 3-panel storyboard."""
    ziggy, momo = lora_files()
    concepts = (
        ConceptSpec(name="ziggy", tokens=("<ZIGGY>",), lora=str(ziggy), class_noun="man"),
        ConceptSpec(name="momo", tokens=("<MOMO>",), lora=str(momo), weight=0.8, class_noun="dog"),
    )
    merge = MergeSpec(base=BaseModelSpec(source=base), concepts=concepts, method=method)  # type: ignore[arg-type]
    merge = merge.model_copy(update={"key": stable_hash(merge.model_dump(mode="json"))})
    prompts = {"duo": "photo of a man and a dog", "solo": "photo of a dog"}
    jobs = [
        make_job(scene, seed, prompts.get(scene, f"photo of {scene}"), index=k, **job_kw)
        for scene in scenes
        for seed in seeds
        for k in range(images_per_seed)
    ]
    boards: tuple[StoryboardSpec, ...] = ()
    if storyboard:
        captions = ['Arrival <b>&</b> "hello"', "The dog waits", "Together at last"]
        panel_jobs = [
            make_job(
                "duo" if i != 1 else "solo",
                10 + i,
                f"panel {i}: a man & <a dog>",
                storyboard="tale",
                panel=i,
                caption=captions[i],
                **job_kw,
            )
            for i in range(3)
        ]
        jobs += panel_jobs
        panels = tuple(
            PanelSpec(index=i, scene=j.scene, caption=j.caption, job_ids=(j.id,))
            for i, j in enumerate(panel_jobs)
        )
        boards = (StoryboardSpec(name="tale", columns=2, panels=panels),)
    return RenderPlan(
        file="/scenes/story.scene",
        source_sha256="0" * 64,
        merge=merge,
        batch_size=batch_size,
        images_per_seed=images_per_seed,
        jobs=tuple(jobs),
        storyboards=boards,
    )


def pixels(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


class Recorder:
    """A reporter that keeps every event (and can raise at a chosen one)."""

    def __init__(self, raise_at: Any = None) -> None:
        self.events: list[Any] = []
        self.raise_at = raise_at  # callable(event, recorder) -> bool

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        if self.raise_at is not None and self.raise_at(event, self):
            self.raise_at = None
            raise KeyboardInterrupt

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]
