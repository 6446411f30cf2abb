"""Names the language and the engines share, in one light module (no torch, no pydantic):
samplers by their A1111 names, and the model family a cross-attention width means.

`scenecraft check` reads these to validate a scene file; `scenecraft.render.samplers` turns a
sampler name into a diffusers scheduler, `scenecraft.models` and `scenecraft.merge` tell a base
or a LoRA's family from its widths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scenecraft.diagnostics import did_you_mean, error

if TYPE_CHECKING:
    from scenecraft.plan import Family

# The cross-attention width tells the families apart: CLIP ViT-L (768), OpenCLIP ViT-H (1024),
# SDXL's two encoders concatenated (2048). The tiny test models (32) have none.
FAMILY_BY_CROSS_DIM: dict[int, Family] = {768: "sd15", 1024: "sd2", 2048: "sdxl"}

# ------------------------------------------------------------------------------- samplers
# Each name is a diffusers scheduler class plus config overrides applied with ``from_config`` on
# the pipeline's own scheduler config (scenecraft.render.samplers.make_scheduler). The table
# follows diffusers' documented A1111 equivalences.


@dataclass(frozen=True)
class SamplerDef:
    scheduler: str  # diffusers scheduler class name
    options: dict[str, Any] = field(default_factory=dict)  # overrides on the model's config
    needs: str | None = None  # optional package the diffusers class imports


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}

SAMPLER_TABLE: dict[str, SamplerDef] = {
    "Euler": SamplerDef("EulerDiscreteScheduler"),
    "Euler a": SamplerDef("EulerAncestralDiscreteScheduler"),
    "Heun": SamplerDef("HeunDiscreteScheduler"),
    "LMS": SamplerDef("LMSDiscreteScheduler", needs="scipy"),
    "LMS Karras": SamplerDef("LMSDiscreteScheduler", _KARRAS, needs="scipy"),
    "DPM2": SamplerDef("KDPM2DiscreteScheduler"),
    "DPM2 Karras": SamplerDef("KDPM2DiscreteScheduler", _KARRAS),
    "DPM2 a": SamplerDef("KDPM2AncestralDiscreteScheduler"),
    "DPM2 a Karras": SamplerDef("KDPM2AncestralDiscreteScheduler", _KARRAS),
    "DPM++ 2M": SamplerDef("DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": SamplerDef("DPMSolverMultistepScheduler", _KARRAS),
    "DPM++ 2M SDE": SamplerDef("DPMSolverMultistepScheduler", _SDE),
    "DPM++ 2M SDE Karras": SamplerDef("DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}),
    "DPM++ SDE": SamplerDef("DPMSolverSinglestepScheduler"),
    "DPM++ SDE Karras": SamplerDef("DPMSolverSinglestepScheduler", _KARRAS),
    "DDIM": SamplerDef("DDIMScheduler"),
    "DDPM": SamplerDef("DDPMScheduler"),
    "PNDM": SamplerDef("PNDMScheduler"),
    "PLMS": SamplerDef("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": SamplerDef("UniPCMultistepScheduler"),
    "DEIS": SamplerDef("DEISMultistepScheduler"),
    "LCM": SamplerDef("LCMScheduler"),
}

SAMPLERS: tuple[str, ...] = tuple(SAMPLER_TABLE)  # names the language checker accepts
# FLUX (flow matching): "Euler" is diffusers' FlowMatchEulerDiscreteScheduler, the only one it has
FLOW_MATCHING_SAMPLERS: tuple[str, ...] = ("Euler",)


def sampler_def(name: str) -> SamplerDef:
    """The table entry for ``name``; `unknown-sampler` with a did-you-mean otherwise."""
    if name in SAMPLER_TABLE:
        return SAMPLER_TABLE[name]
    raise error(
        "unknown-sampler",
        f"unknown sampler `{name}`",
        notes=("known samplers: " + ", ".join(SAMPLERS),),
        help=did_you_mean(name, SAMPLERS) or "use one of the known samplers (A1111 names)",
    )


# --------------------------------------------------------------------- ComfyUI's samplers
# A1111 name -> (KSampler sampler_name, scheduler) in ComfyUI's built-in KSampler (the version
# recorded in tests/data/comfyui_nodes.json). None: ComfyUI has no equivalent; `scenecraft
# export --comfyui` warns (`comfyui-sampler-unmapped`) and writes COMFYUI_FALLBACK instead.
COMFYUI_SAMPLERS: dict[str, tuple[str, str] | None] = {
    "Euler": ("euler", "normal"),
    "Euler a": ("euler_ancestral", "normal"),
    "Heun": ("heun", "normal"),
    "LMS": ("lms", "normal"),
    "LMS Karras": ("lms", "karras"),
    "DPM2": ("dpm_2", "normal"),
    "DPM2 Karras": ("dpm_2", "karras"),
    "DPM2 a": ("dpm_2_ancestral", "normal"),
    "DPM2 a Karras": ("dpm_2_ancestral", "karras"),
    "DPM++ 2M": ("dpmpp_2m", "normal"),
    "DPM++ 2M Karras": ("dpmpp_2m", "karras"),
    "DPM++ 2M SDE": ("dpmpp_2m_sde", "normal"),
    "DPM++ 2M SDE Karras": ("dpmpp_2m_sde", "karras"),
    "DPM++ SDE": ("dpmpp_sde", "normal"),
    "DPM++ SDE Karras": ("dpmpp_sde", "karras"),
    "DDIM": ("ddim", "ddim_uniform"),
    "DDPM": ("ddpm", "normal"),
    "PNDM": None,  # pseudo linear multistep: no ComfyUI sampler
    "PLMS": None,
    "UniPC": ("uni_pc", "normal"),
    "DEIS": None,  # not in the recorded ComfyUI version
    "LCM": ("lcm", "normal"),
}
COMFYUI_FALLBACK: tuple[str, str] = ("euler", "normal")  # written where no equivalent exists
