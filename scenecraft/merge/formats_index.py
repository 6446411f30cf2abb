"""What a LoRA must fit: the base pipeline's LoRA-able modules, their weight shapes, and checks.

A `ModuleIndex` is built once per base pipeline (`ModuleIndex.from_pipe`) and is all the format
readers need to validate a file: every low-rank pair must name a module of the index (paths are
component-prefixed ``named_modules()`` names, see `scenecraft.merge.types`) and its dense update
ΔW = s · B A must have that module's weight shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.merge.types import LoRALayer
from scenecraft.names import FAMILY_BY_CROSS_DIM

# Pipeline components a LoRA may touch, with the tokenizer that feeds each text encoder.
LORA_COMPONENTS: tuple[str, ...] = ("unet", "transformer", "text_encoder", "text_encoder_2")
TOKENIZER_OF: dict[str, str] = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


# How many unknown module names an error lists before summarising the rest.
_LIST_LIMIT = 8


@dataclass(frozen=True)
class ModuleIndex:
    """The LoRA-able modules of a base pipeline."""

    shapes: dict[str, tuple[int, ...]]  # module path -> weight shape (Linear (out, in), Conv2d 4-D)
    family: str | None = None  # "sd15" | "sd2" | "sdxl" from the UNet's cross_attention_dim, "flux"
    embedding_dims: dict[str, int] = field(default_factory=dict)  # text encoder -> token dim
    unet_config: Any = None  # the UNet's config, for diffusers' SDXL block renaming

    @classmethod
    def from_pipe(cls, pipe: Any) -> ModuleIndex:
        """Index every Linear and Conv2d of the pipeline's UNet/transformer and text encoders."""
        shapes: dict[str, tuple[int, ...]] = {}
        embedding_dims: dict[str, int] = {}
        for name in LORA_COMPONENTS:
            component = getattr(pipe, name, None)
            if not isinstance(component, torch.nn.Module):
                continue
            for path, module in component.named_modules():
                if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                    shapes[f"{name}.{path}"] = tuple(module.weight.shape)
            embed: Any = getattr(component, "get_input_embeddings", None)
            if name in TOKENIZER_OF and embed is not None:
                embedding_dims[name] = int(embed().weight.shape[1])
        unet = getattr(pipe, "unet", None)
        config = getattr(unet, "config", None)
        cross = getattr(config, "cross_attention_dim", None)
        family = FAMILY_BY_CROSS_DIM.get(cross) if isinstance(cross, int) else None
        if "Flux" in type(getattr(pipe, "transformer", None)).__name__:
            family = "flux"
        return cls(shapes, family, embedding_dims, config)

    def resolve(self, path: str) -> str | None:
        """The index's name for ``path``, bridging the ``text_model.`` wrapper of older CLIP code.

        transformers 5 names text encoder modules ``encoder.layers.0…``; files written against
        transformers 4 (kohya ``lora_te_text_model_…``, Mix-of-Show) say ``text_model.encoder…``.
        """
        if path in self.shapes:
            return path
        component, _, rest = path.partition(".")
        if rest.startswith("text_model."):
            alt = f"{component}.{rest.removeprefix('text_model.')}"
        else:
            alt = f"{component}.text_model.{rest}"
        return alt if alt in self.shapes else None


def as_index(pipe_or_index: Any) -> ModuleIndex:
    return (
        pipe_or_index
        if isinstance(pipe_or_index, ModuleIndex)
        else ModuleIndex.from_pipe(pipe_or_index)
    )


def make_layer(module: str, down: torch.Tensor, up: torch.Tensor, alpha: float | None) -> LoRALayer:
    """A `LoRALayer` with conv factors flattened: down (r, in·kh·kw), up (out, r)."""
    return LoRALayer(
        module=module,
        up=up.detach().reshape(up.shape[0], -1).float(),
        down=down.detach().reshape(down.shape[0], -1).float(),
        alpha=alpha,
    )


def _fits(layer: LoRALayer, shape: tuple[int, ...]) -> bool:
    # ΔW = B A is (out, r) @ (r, in·kh·kw); the module's weight is (out, in[, kh, kw])
    out, fan_in = shape[0], math.prod(shape[1:])
    return (
        layer.up.shape[1] == layer.down.shape[0]
        and layer.up.shape[0] == out
        and layer.down.shape[1] == fan_in
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_layers(
    raw: dict[str, LoRALayer], index: ModuleIndex, *, concept: str, source: str, family: str | None
) -> dict[str, LoRALayer]:
    """Map file module names onto the index and check shapes and values.

    Raises `lora-unknown-modules`, `lora-shape-mismatch` or `lora-non-finite`.
    """
    layers: dict[str, LoRALayer] = {}
    unknown: list[str] = []
    for name, layer in raw.items():
        path = index.resolve(name)
        if path is None:
            unknown.append(name)
        else:
            layers[path] = LoRALayer(path, layer.up, layer.down, layer.alpha)
    if unknown:
        raise _unknown_modules(unknown, index, concept=concept, source=source, family=family)
    for path, layer in layers.items():
        expected = index.shapes[path]
        if not _fits(layer, expected):
            raise _shape_mismatch(path, layer, expected, index, concept, source, family)
    for path, layer in layers.items():
        if not (torch.isfinite(layer.up).all() and torch.isfinite(layer.down).all()):
            raise error(
                "lora-non-finite",
                f"concept `{concept}`: `{source}` holds NaN or infinite weights at `{path}`",
                help="the LoRA was saved from a diverged training run; use an earlier checkpoint",
            )
    return layers


def _unknown_modules(
    unknown: list[str], index: ModuleIndex, *, concept: str, source: str, family: str | None
) -> DiagnosticError:
    shown = [f"`{name}`" for name in unknown[:_LIST_LIMIT]]
    more = len(unknown) - len(shown)
    notes = [f"no module named {name} in the base model" for name in shown]
    if more > 0:
        notes.append(f"and {more} more")
    if family and index.family and family != index.family:
        notes.append(
            f"the file says it was trained for `{family}`, the base model is `{index.family}`"
        )
    return error(
        "lora-unknown-modules",
        f"concept `{concept}`: {len(unknown)} layer(s) of `{source}` match no module of the base model",
        notes=tuple(notes),
        help="use a LoRA trained for this base model (same family and architecture)",
    )


def _shape_mismatch(
    path: str,
    layer: LoRALayer,
    expected: tuple[int, ...],
    index: ModuleIndex,
    concept: str,
    source: str,
    family: str | None,
) -> DiagnosticError:
    out_in = (int(layer.up.shape[0]), int(layer.down.shape[1]))
    if layer.up.shape[1] != layer.down.shape[0]:  # the file's own factors disagree
        return error(
            "lora-shape-mismatch",
            f"concept `{concept}`: the two factors of `{source}` at layer `{path}` disagree on "
            "the rank",
            notes=(
                f"B (up) is {_shape_text(tuple(layer.up.shape))} with rank "
                f"{int(layer.up.shape[1])}, A (down) is {_shape_text(tuple(layer.down.shape))} "
                f"with rank {int(layer.down.shape[0])}",
            ),
            help="the file is damaged or was edited by hand; export the LoRA again",
        )
    notes = [
        f"the base model's weight is {_shape_text(expected)}, "
        f"the LoRA's update B·A is {_shape_text(out_in)} (rank {layer.rank})"
    ]
    if family and index.family and family != index.family:
        notes.append(
            f"the file says it was trained for `{family}`, the base model is `{index.family}`"
        )
    return error(
        "lora-shape-mismatch",
        f"concept `{concept}`: `{source}` does not fit the base model at layer `{path}`",
        notes=tuple(notes),
        help="this LoRA was trained for another model family or size; use one trained for this base",
    )
