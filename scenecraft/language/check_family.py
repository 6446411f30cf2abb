"""What a scene may ask of its model family: FLUX's settings, checked before anything loads.

FLUX.1 (dev/schnell) is a flow-matching MM-DiT with distilled guidance:

- its one sampler is flow-matching Euler (`FlowMatchEulerDiscreteScheduler`); the SD samplers
  are built for an epsilon/v noise schedule and would run the wrong ODE: any other `sampler` is
  an error (`sampler-not-flow-matching`);
- it reads no negative prompt (guidance is an input of the transformer, not a second pass):
  a `negative` is a warning (`flux-ignores-negative`); FluxPipeline does not use it (no true CFG);
- regions need joint-attention masks, not built yet: `regions on|alone` is an error
  (`regions-unsupported-family`) and scenes default to `regions off`;
- LoRACLR and gradient fusion read the UNet's cross-attention inputs, which FLUX has none of:
  they are `merge-unsupported-family`; with no `merge` block the merge is `linear`.

Defaults change with the family: sampler `Euler`, guidance 3.5, 28 steps (FLUX.1-dev's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from scenecraft.diagnostics import Collector
from scenecraft.language import nodes as n
from scenecraft.merge.config import METHODS
from scenecraft.names import FLOW_MATCHING_SAMPLERS


class _Model(Protocol):
    """What the family check reads of the checked `model` (`check.ModelInfo`)."""

    @property
    def source(self) -> str: ...

    @property
    def family(self) -> str | None: ...


class _Declared(Protocol):
    """A checked concept or scene: its syntax node."""

    @property
    def node(self) -> Any: ...


class _Program(Protocol):
    @property
    def main(self) -> n.File: ...

    @property
    def includes(self) -> list[n.File]: ...


class Checker(Protocol):
    """What the family check needs of the file's checker (`check.Checker`): its diagnostics, the
    program and the concepts and scenes declared (no import of check.py: it imports this)."""

    @property
    def c(self) -> Collector: ...

    @property
    def program(self) -> _Program: ...

    @property
    def concepts(self) -> Mapping[str, _Declared]: ...

    @property
    def scenes(self) -> Mapping[str, _Declared]: ...


FLUX_DEFAULTS: dict[str, Any] = {"sampler": "Euler", "guidance": 3.5, "steps": 28, "regions": "off"}
FLUX_MERGE = "linear"  # the merge when the scene has no `merge` block


def model_family(model: _Model | None) -> str | None:
    """The declared family, else what a local diffusers folder's ``model_index.json`` says."""
    if model is None:
        return None
    if model.family:
        return model.family
    try:
        index = json.loads((Path(model.source) / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return "flux" if "Flux" in str(index.get("_class_name", "")) else None


def family_defaults(family: str | None, user: dict[str, Any]) -> dict[str, Any]:
    """The defaults a family changes, less those the scene's `defaults` block sets itself."""
    if family != "flux":
        return {}
    return {k: v for k, v in FLUX_DEFAULTS.items() if k not in user}


def _settings(ck: Checker) -> list[n.Setting]:
    """Every setting of the `defaults` blocks and of every scene (storyboard panels included)."""
    files = [*ck.program.includes, ck.program.main]
    out = [s for f in files for i in f.items if isinstance(i, n.Defaults) for s in i.settings]
    for info in ck.scenes.values():
        out += [s for s in info.node.body if isinstance(s, n.Setting)]
    return out


def _word(setting: n.Setting) -> str:
    value = setting.values[0] if setting.values else None
    if isinstance(value, n.Str):
        return value.value
    return value.name if isinstance(value, n.Ident) else ""


def check_flux(ck: Checker, merge: n.Merge | None, method: str) -> str:
    """Diagnostics for settings FLUX does not take; returns the merge method to use."""
    for s in _settings(ck):
        key, word = s.key.name, _word(s)
        if key == "sampler" and word not in FLOW_MATCHING_SAMPLERS:
            ck.c.error(
                "sampler-not-flow-matching",
                f"sampler `{word}` does not apply to a FLUX model",
                s.values[0].span,
                label="not a flow-matching sampler",
                notes=(
                    "FLUX samples with flow-matching Euler (diffusers' "
                    "`FlowMatchEulerDiscreteScheduler`); the SD samplers solve another ODE",
                ),
                help='write `sampler "Euler"` or leave the sampler out',
            )
        elif key == "negative" and word:
            _warn_negative(ck, s)
        elif key == "regions" and word in ("on", "alone"):
            ck.c.error(
                "regions-unsupported-family",
                f"`regions {word}` is not available on FLUX yet",
                s.span,
                label="needs joint-attention region masks",
                notes=(
                    "regional prompts on FLUX need masks over the joint text-image attention; "
                    "scenes on FLUX render with one prompt (`regions off`)",
                ),
                help="remove the setting or write `regions off`",
            )
    for info in ck.concepts.values():
        neg = next((s for s in info.node.settings if s.key.name == "negative"), None)
        if neg is not None and _word(neg):
            _warn_negative(ck, neg)
    if merge is None:
        return FLUX_MERGE
    data_free = [m for m, model in METHODS.items() if not model.feature_based and m != "none"]
    if method not in (*data_free, "none"):
        ck.c.error(
            "merge-unsupported-family",
            f"`merge {method}` does not work on FLUX models yet",
            merge.method.span,
            label="reads a cross-attention UNet",
            notes=(
                "LoRACLR and gradient fusion collect the UNet's cross-attention inputs; "
                "FLUX's MM-DiT has joint attention instead",
                "methods that work on FLUX today: " + ", ".join(f"`{m}`" for m in data_free),
            ),
            help="use `merge linear` (or another data-free method)",
        )
    return method


def _warn_negative(ck: Checker, s: n.Setting) -> None:
    ck.c.warn(
        "flux-ignores-negative",
        "FLUX.1 ignores negative prompts",
        s.span,
        label="not used on FLUX",
        notes=(
            "FLUX.1's guidance is distilled into the transformer: there is no unconditional "
            "pass for a negative prompt to steer",
        ),
        help="describe what you want in the prompt instead, or remove the `negative`",
    )
