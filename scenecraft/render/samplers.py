"""Samplers by their A1111 names, mapped onto diffusers schedulers.

Each name is a scheduler class plus config overrides applied with ``from_config`` on the
pipeline's own scheduler config, so the model's beta schedule and prediction type are kept.
The table follows diffusers' documented A1111 equivalences; samplers whose diffusers
implementation needs an optional package (LMS needs scipy) say so when used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scenecraft.diagnostics import did_you_mean, error


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


def make_scheduler(name: str, base_config: Any) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` built from the model's scheduler config."""
    import diffusers

    spec = sampler_def(name)
    cls = getattr(diffusers, spec.scheduler)
    if spec.needs is not None and getattr(cls, "_backends", None):
        raise error(
            "sampler-unavailable",
            f"sampler `{name}` needs the `{spec.needs}` package",
            help=f"`pip install {spec.needs}`, or choose another sampler such as `DPM++ 2M Karras`",
        )
    return cls.from_config(base_config, **spec.options)
