"""Samplers by their A1111 names, mapped onto diffusers schedulers.

Each name is a scheduler class plus config overrides applied with ``from_config`` on the
pipeline's own scheduler config, so the model's beta schedule and prediction type are kept.
The table follows diffusers' documented A1111 equivalences; samplers whose diffusers
implementation needs an optional package (LMS needs scipy) say so when used.
"""

from __future__ import annotations

from typing import Any

from scenecraft.diagnostics import error
from scenecraft.names import (
    FLOW_MATCHING_SAMPLERS,
    SAMPLER_TABLE,
    SAMPLERS,
    SamplerDef,
    sampler_def,
)

__all__ = ["SAMPLERS", "SAMPLER_TABLE", "SamplerDef", "make_scheduler", "sampler_def"]


def make_scheduler(name: str, base_config: Any) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` built from the model's scheduler config.

    A flow-matching model (FLUX: its config is a ``FlowMatch…`` scheduler's) keeps its own
    scheduler for ``Euler``; the SD samplers do not apply (`sampler-not-flow-matching`).
    """
    import diffusers

    config = dict(base_config)
    own = str(config.get("_class_name") or "")
    if not own and "shift" in config and "beta_start" not in config:  # built in-process
        own = "FlowMatchEulerDiscreteScheduler"
    if own.startswith("FlowMatch"):
        if name not in FLOW_MATCHING_SAMPLERS:
            raise error(
                "sampler-not-flow-matching",
                f"sampler `{name}` does not apply to this flow-matching model (`{own}`)",
                help='use `sampler "Euler"` (flow-matching Euler) or leave the sampler out',
            )
        return getattr(diffusers, own).from_config(base_config)
    spec = sampler_def(name)
    cls = getattr(diffusers, spec.scheduler)
    if spec.needs is not None and getattr(cls, "_backends", None):
        raise error(
            "sampler-unavailable",
            f"sampler `{name}` needs the `{spec.needs}` package",
            help=f"`pip install {spec.needs}`, or choose another sampler such as `DPM++ 2M Karras`",
        )
    return cls.from_config(base_config, **spec.options)
