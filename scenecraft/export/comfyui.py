"""A render plan's jobs as ComfyUI API-format workflows (``/prompt`` JSON), built-in nodes only.

One workflow per image job (``<scene>-<seed>.json``):

    CheckpointLoaderSimple ─► LoraLoader (when the merge is a LoRA beside the base)
    CLIPTextEncode (global prompt)                     ┐
    CLIPTextEncode (region prompt) ─► ConditioningSetMask(mask of the region's box)  ├► ConditioningCombine …
         mask = MaskComposite(SolidMask 0 (canvas), SolidMask 1 (box), x, y, "add")  ┘
    CLIPTextEncode (negative prompt)
    EmptyLatentImage ─► KSampler(seed, steps, cfg, sampler_name, scheduler) ─► VAEDecode ─► SaveImage

The sampler comes from the A1111 name through `scenecraft.names.COMFYUI_SAMPLERS`; a name with
no ComfyUI equivalent gets `COMFYUI_FALLBACK` and a `comfyui-sampler-unmapped` warning. Tokens
the merge adds as embeddings are written ``embedding:NAME`` (ComfyUI's syntax). ComfyUI blends a
masked conditioning with the global one by weight, not by scenecraft's per-token attention
switch (`scenecraft.render.regions`), so the regional pictures are close, not identical.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from scenecraft.diagnostics import Diagnostic
from scenecraft.names import COMFYUI_FALLBACK, COMFYUI_SAMPLERS
from scenecraft.plan import RenderJob, RenderPlan, generator_seed

Workflow = dict[str, dict[str, Any]]  # node id -> {"class_type", "inputs"}
Link = list[Any]  # [node id, output index]


@dataclass(frozen=True)
class ModelFiles:
    """What the workflow loads, by the names ComfyUI's model folders list."""

    checkpoint: str  # models/checkpoints/<checkpoint>: the fused merge or the base
    lora: str | None = None  # models/loras/<lora>: the exported LoRA, None with a fused checkpoint
    embeddings: Mapping[str, str] = field(default_factory=dict)  # token -> models/embeddings name
    lora_clip: bool = True  # the LoRA changes a text encoder (FLUX: LoraLoader, else ModelOnly)


def comfy_sampler(name: str) -> tuple[tuple[str, str], Diagnostic | None]:
    """(sampler_name, scheduler) for an A1111 sampler name, and a warning when ComfyUI has none."""
    mapped = COMFYUI_SAMPLERS.get(name)
    if mapped is not None:
        return mapped, None
    return COMFYUI_FALLBACK, Diagnostic(
        "comfyui-sampler-unmapped",
        f"sampler `{name}` has no ComfyUI equivalent; the workflows use "
        f"`{COMFYUI_FALLBACK[0]}` with the `{COMFYUI_FALLBACK[1]}` schedule",
        severity="warning",
        help="pick a sampler ComfyUI has (docs/export.md lists them) for the same pictures",
    )


def with_embeddings(text: str, embeddings: Mapping[str, str]) -> str:
    """Each embedded token as ``embedding:NAME`` (longest tokens first, whole tokens only)."""
    for token in sorted(embeddings, key=len, reverse=True):
        pattern = r"(?<![\w:])" + re.escape(token) + r"(?!\w)"
        # a function, not a template: the name is inserted as it is (no backslash escapes)
        text = re.sub(pattern, _literal(f"embedding:{embeddings[token]}"), text)
    return text


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text


class _Graph:
    """Nodes numbered "1", "2", … in the order they are added."""

    def __init__(self) -> None:
        self.nodes: Workflow = {}

    def add(self, class_type: str, **inputs: Any) -> str:
        node = str(len(self.nodes) + 1)
        self.nodes[node] = {"class_type": class_type, "inputs": inputs}
        return node

    def lora(self, model: Link, clip: Link, name: str) -> tuple[Link, Link]:
        """A LoraLoader of ``name`` at full strength on ``model`` and ``clip``: its outputs."""
        node = self.add(
            "LoraLoader",
            model=model,
            clip=clip,
            lora_name=name,
            strength_model=1.0,
            strength_clip=1.0,
        )
        return [node, 0], [node, 1]


def _box_pixels(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    """(x, y, w, h) in pixels, at least 1×1, inside the canvas."""
    x0, y0 = round(box[0] * width), round(box[1] * height)
    x1, y1 = round(box[2] * width), round(box[3] * height)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return x0, y0, max(min(x1, width) - x0, 1), max(min(y1, height) - y0, 1)


def job_workflow(job: RenderJob, files: ModelFiles, prefix: str) -> Workflow:
    """The API-format workflow of one job: long because the graph is written out node by node,
    in the order ComfyUI runs it (numbered steps)."""
    g = _Graph()
    # 1. the model: the checkpoint, then the merge as a LoRA when it is not fused
    ckpt = g.add("CheckpointLoaderSimple", ckpt_name=files.checkpoint)
    model: Link = [ckpt, 0]
    clip: Link = [ckpt, 1]
    if files.lora is not None:
        model, clip = g.lora(model, clip, files.lora)

    def encode(text: str) -> Link:
        return [g.add("CLIPTextEncode", text=with_embeddings(text, files.embeddings), clip=clip), 0]

    # 2. the global prompt, then each region's prompt inside its box's mask
    positive = encode(job.prompt)
    for region in job.regions:
        x, y, w, h = _box_pixels(region.box, job.width, job.height)
        canvas = g.add("SolidMask", value=0.0, width=job.width, height=job.height)
        inside = g.add("SolidMask", value=1.0, width=w, height=h)
        mask = g.add(
            "MaskComposite",
            destination=[canvas, 0],
            source=[inside, 0],
            x=x,
            y=y,
            operation="add",
        )
        masked = g.add(
            "ConditioningSetMask",
            conditioning=encode(region.prompt),
            mask=[mask, 0],
            strength=1.0,
            set_cond_area="default",
        )
        positive = [
            g.add("ConditioningCombine", conditioning_1=positive, conditioning_2=[masked, 0]),
            0,
        ]
    negative = encode(job.negative_prompt)
    # 3. sample, decode, save
    (sampler_name, scheduler), _ = comfy_sampler(job.sampler)
    latent = g.add("EmptyLatentImage", width=job.width, height=job.height, batch_size=1)
    sampled = g.add(
        "KSampler",
        model=model,
        seed=generator_seed(job),
        steps=job.steps,
        cfg=job.guidance,
        sampler_name=sampler_name,
        scheduler=scheduler,
        positive=positive,
        negative=negative,
        latent_image=[latent, 0],
        denoise=1.0,
    )
    image = g.add("VAEDecode", samples=[sampled, 0], vae=[ckpt, 2])
    g.add("SaveImage", images=[image, 0], filename_prefix=prefix)
    return g.nodes


def workflow_name(job: RenderJob) -> str:
    """``<scene>-<seed>`` (+ ``-<index>`` for the n-th image of a seed), file-name safe."""
    stem = f"{job.scene}-{job.seed}" + (f"-{job.index}" if job.index else "")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)


def distinct_jobs(plan: RenderPlan) -> Iterator[RenderJob]:
    """The plan's jobs, each once (storyboard panels reuse their scene's jobs)."""
    seen: set[str] = set()
    for job in plan.jobs:
        if job.id not in seen:
            seen.add(job.id)
            yield job


def plan_workflows(
    plan: RenderPlan, files: ModelFiles
) -> tuple[dict[str, Workflow], list[Diagnostic]]:
    """One workflow per distinct image job (storyboard panels reuse their scene's jobs), and
    one warning per sampler ComfyUI lacks."""
    workflows: dict[str, Workflow] = {}
    warnings: dict[str, Diagnostic] = {}
    for job in distinct_jobs(plan):
        name = workflow_name(job)
        workflows[name] = job_workflow(job, files, prefix=f"scenecraft/{name}")
        _, problem = comfy_sampler(job.sampler)
        if problem is not None:
            warnings.setdefault(job.sampler, problem)
    return workflows, list(warnings.values())
