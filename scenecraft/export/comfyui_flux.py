"""A FLUX job as a ComfyUI API-format workflow, built-in nodes only (the FLUX recipe of
ComfyUI's own examples):

    UNETLoader(<base>.safetensors) ─► LoraLoaderModelOnly / LoraLoader (with CLIP-L layers)
    DualCLIPLoader(clip_l, t5xxl, type flux) ─► CLIPTextEncode(prompt) ─► FluxGuidance(guidance)
    CLIPTextEncode("") (negative: ignored at cfg 1)
    EmptySD3LatentImage ─► KSampler(euler, simple, cfg 1.0, seed, steps) ─► VAEDecode(VAELoader(ae))
    ─► SaveImage

FLUX is guidance-distilled: the scene's guidance goes to `FluxGuidance`, and KSampler's own
classifier-free guidance stays off (cfg 1.0). Regions are off on FLUX, so one prompt. The files
are named as ComfyUI's FLUX examples name them (`FLUX_TEXT_ENCODERS`, `FLUX_VAE`); the
transformer is the base's name (docs/export.md, "FLUX").
"""

from __future__ import annotations

from scenecraft.export.comfyui import (
    Link,
    ModelFiles,
    Workflow,
    _Graph,
    distinct_jobs,
    with_embeddings,
    workflow_name,
)
from scenecraft.plan import RenderJob, RenderPlan, generator_seed

FLUX_TEXT_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")  # models/text_encoders
FLUX_VAE = "ae.safetensors"  # models/vae
FLUX_SAMPLER = ("euler", "simple")


def flux_workflow(job: RenderJob, files: ModelFiles, prefix: str) -> Workflow:
    """The API-format workflow of one FLUX job (``files.checkpoint``: the transformer file)."""
    g = _Graph()
    unet = g.add("UNETLoader", unet_name=files.checkpoint, weight_dtype="default")
    clip_node = g.add(
        "DualCLIPLoader",
        clip_name1=FLUX_TEXT_ENCODERS[0],
        clip_name2=FLUX_TEXT_ENCODERS[1],
        type="flux",
    )
    model: Link = [unet, 0]
    clip: Link = [clip_node, 0]
    if files.lora is not None and files.lora_clip:
        model, clip = g.lora(model, clip, files.lora)
    elif files.lora is not None:
        model = [
            g.add("LoraLoaderModelOnly", model=model, lora_name=files.lora, strength_model=1.0),
            0,
        ]
    text = with_embeddings(job.prompt, files.embeddings)
    encoded = g.add("CLIPTextEncode", text=text, clip=clip)
    positive = g.add("FluxGuidance", conditioning=[encoded, 0], guidance=job.guidance)
    negative = g.add("CLIPTextEncode", text="", clip=clip)
    latent = g.add("EmptySD3LatentImage", width=job.width, height=job.height, batch_size=1)
    sampled = g.add(
        "KSampler",
        model=model,
        seed=generator_seed(job),
        steps=job.steps,
        cfg=1.0,
        sampler_name=FLUX_SAMPLER[0],
        scheduler=FLUX_SAMPLER[1],
        positive=[positive, 0],
        negative=[negative, 0],
        latent_image=[latent, 0],
        denoise=1.0,
    )
    vae = g.add("VAELoader", vae_name=FLUX_VAE)
    image = g.add("VAEDecode", samples=[sampled, 0], vae=[vae, 0])
    g.add("SaveImage", images=[image, 0], filename_prefix=prefix)
    return g.nodes


def plan_flux_workflows(plan: RenderPlan, files: ModelFiles) -> dict[str, Workflow]:
    """One FLUX workflow per distinct image job (no sampler warning: euler/simple is the only
    FLUX sampler scenecraft takes)."""
    workflows: dict[str, Workflow] = {}
    for job in distinct_jobs(plan):
        name = workflow_name(job)
        workflows[name] = flux_workflow(job, files, prefix=f"scenecraft/{name}")
    return workflows
