"""Data shared by the merge engine's phases: concepts' LoRAs as low-rank per-module updates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scenecraft.merge.config import Stages


@dataclass
class LoRALayer:
    """One module's low-rank update ΔW = s · B A, with s = weight · alpha / r (docs/merge.md)."""

    module: str  # component-prefixed module path in the pipeline: "unet.down_blocks.1…attn2.to_k",
    #              "text_encoder.encoder.layers.0.self_attn.q_proj" (named_modules() naming)
    up: torch.Tensor  # B, (out, r); 1×1 conv LoRAs are flattened from (out, r, 1, 1)
    down: torch.Tensor  # A, (r, in); 1×1 conv LoRAs are flattened from (r, in, 1, 1)
    alpha: float | None = None  # None means alpha = r

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def scale(self, weight: float = 1.0) -> float:
        alpha = float(self.rank) if self.alpha is None else self.alpha
        return weight * alpha / self.rank

    def delta(self, weight: float = 1.0) -> torch.Tensor:
        """Dense ΔW_c, (out, in), fp32."""
        return self.scale(weight) * (self.up.float() @ self.down.float())


@dataclass
class ConceptLoRA:
    """A concept's LoRA, read from any supported file format."""

    name: str  # concept name from the scene file
    tokens: tuple[str, ...]  # trigger tokens
    layers: dict[str, LoRALayer]  # module path -> update
    weight: float = 1.0  # user weight w_c
    # new token embeddings (textual inversion / ED-LoRA): component -> token -> (n, dim) tensor
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    source: str = ""  # file it was read from
    sha256: str = ""  # of that file
    family: str | None = None  # "sd15" | "sd2" | "sdxl" when the file says so
    class_noun: str | None = None  # the scene's class noun: feature prompts "photo of a <tok> man"
    prompts: tuple[str, ...] = ()  # the prompts the plan renders it with (scene_prompts)
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. kohya ss_* fields

    def delta(self, module: str) -> torch.Tensor:
        return self.layers[module].delta(self.weight)


@dataclass(frozen=True)
class MergeConfig:
    """The merge engine's own knobs (scenecraft.merge.engine), which scene files do not set.

    What a merge block sets — the method's parameters and the feature stages' settings — is the
    method's model (`scenecraft.merge.config`), which the engine takes as is."""

    templates: tuple[str, ...] = ("photo of a {token}", "{token}")  # prompts per concept token
    figures: bool = True  # collect features (and report quality) for data-free methods too
    # the stage settings of those figures (a data-free method has none of its own)
    figure_stages: Stages = field(default_factory=Stages)
    spatial_steps: int = 4  # denoising steps of the spatial stage's sampling run
    spatial_size: int = 64  # image side in pixels of that run
    spatial_guidance: float = 7.5  # classifier-free guidance of that run (both halves recorded)
    spatial_max_rows: int = 2048  # rows kept per concept and layer in stage 3 (unless max_rows)
    text_max_rows: int = 4096  # rows kept per concept and layer in stages 1-2 (unless max_rows)
    solve_single: bool = False  # also solve layers only one concept touches (default: W0 + ΔW_c)
    batch_elements: int = 2**26  # cap on C·L·out·in per solve batch (memory)
