"""Merge methods and their parameters: the one table.

Every parameter a scene file can give a merge method has one row here: the name users write,
its type, range or choices, default and meaning (read by the checker through
`scenecraft.language.schema.MERGE_KEYS`, and by docs/language.md §3.4, which a test keeps in
step), and the engine's name for it (the paper's notation: ``iterations`` -> ``max_iters``,
``ridge`` -> ``eps_rel``). ``resolve`` turns a checked merge block into what the engine takes:
method parameters under the engine's names, and stage settings for `MergeConfig`. The compiler
calls it once; the engine receives the result and does not translate or re-check it.

Pure Python: the light commands (check, compile, fmt) read this table without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Bumped when the same inputs merge to different weights (part of every cache entry's identity,
# so an entry written by an earlier engine is not reused). 2: scene_prompts aims K/V at each
# concept's own text encoder (`_retarget_kv`); 3: feature methods' fallback is the average;
# 4: co_subjects (region-shaped feature prompts, K/V aimed at each own LoRA on them) by default;
# 5: the text encoder merged layer by layer on the merged layers' inputs (``sequential``);
# 6: loraclr's steps keep their start's ridge when the concepts' classes are distinct
# (``refine_ridge`` by default: `refine_ridge_for`).
ENGINE_REVISION = 6
DEFAULT_RIDGE = 1e-2  # relative ridge of gradient fusion (and of LoRACLR's start): docs/loraclr.md


@dataclass(frozen=True)
class Param:
    """One merge parameter as users write it, and what the engine calls it."""

    kind: str  # value type, as scenecraft.language.schema.Kind: "float", "int", "word", "bool"
    default: Any  # the engine's default (None: the stage's own defaults, see `doc`)
    doc: str  # one line for the docs and the checker's notes
    lo: float | None = None  # inclusive lower bound (exclusive with lo_open)
    hi: float | None = None  # inclusive upper bound
    lo_open: bool = False
    choices: tuple[str, ...] = ()  # allowed words for kind "word"
    engine: str | None = None  # the engine's name when it differs from the user's
    values: Mapping[Any, Any] = field(default_factory=dict)  # user value -> engine value
    stage: tuple[str, ...] = ()  # MergeConfig fields it sets instead of a method parameter
    method_too: bool = False  # with ``stage``: also passed to the method under its engine name

    def engine_name(self, name: str) -> str:
        return self.engine or name

    def engine_value(self, value: Any) -> Any:
        return self.values.get(value, value)


_SEED = Param(
    "int",
    0,
    "random seed of feature-row subsampling, `continuations`' phrases and DARE's masks",
    0,
    2**31 - 1,
    stage=("seed",),
    method_too=True,
)
_STAGES: dict[str, Param] = {
    "spatial": Param(
        "bool",
        False,
        "also merge the UNet's spatial layers (needs sampling runs)",
        stage=("spatial",),
    ),
    "scene_prompts": Param(
        "bool",
        False,
        "also fit the text stages on the prompts the file renders each concept with, "
        "cross-attention K/V aimed at what its own LoRA gives on them "
        "(they join the merge key: editing one re-merges and re-renders the file's images)",
        stage=("scene_prompts",),
    ),
    "co_subjects": Param(
        "bool",
        True,
        "also fit the text stages on region-shaped prompts built from the merged concepts' "
        "class nouns (`<KIKI> triangle, triangle and square`), cross-attention K/V aimed at "
        "what each concept's own LoRA gives on them; needs no scene text",
        stage=("co_subjects",),
    ),
    "continuations": Param(
        "int",
        0,
        "also fit the text stages on each concept followed by this many seeded phrases of 1-4 "
        "common words from the tokenizer's vocabulary (`<KIKI> triangle, sea hat under`): a "
        "scene's own words come after the token; needs no scene text; 0: off (a trade: "
        "docs/loraclr.md)",
        0,
        1024,
        stage=("continuations",),
    ),
    "sequential": Param(
        "bool",
        True,
        "merge the text encoder layer by layer in forward order, each layer fitted on the "
        "inputs the layers merged before it give (false: on each concept's own encoder's)",
        stage=("sequential",),
    ),
    "fallback": Param(
        "word",
        "average",
        "multi-concept layers no feature stage covers (the image side unless `spatial`): "
        "the mean of the concepts' updates, or their sum (linear)",
        choices=("average", "linear"),
        stage=("fallback",),
    ),
    "max_rows": Param(
        "int",
        None,
        "feature rows kept per concept and layer (default 4096 text, 2048 spatial)",
        16,
        1_000_000,
        stage=("text_max_rows", "spatial_max_rows"),
    ),
}
_RIDGE = Param(
    "float",
    DEFAULT_RIDGE,
    "ridge of the least-squares solve, relative to the trace: larger keeps the base model's "
    "behaviour on words the concepts never saw",
    0,
    1,
    engine="eps_rel",
)
_DENSITY = Param("float", 0.5, "share of each LoRA's entries kept", 0, 1, lo_open=True)

PARAMS: dict[str, dict[str, Param]] = {
    "loraclr": {
        "margin": Param("float", 1.0, "repel margin m, relative with recipe ours", 0, 10, True),
        "iterations": Param(
            "int", 50, "optimiser steps per layer batch", 1, 10_000, engine="max_iters"
        ),
        "lr": Param("float", 0.1, "Adam step, relative with recipe ours", 0, 1, lo_open=True),
        "lambda_con": Param("float", 1.0, "weight λ_con of the contrastive terms", 0, 100),
        "lambda_mse": Param("float", 0.1, "weight λ_mse of the output-matching term", 0, 100),
        "lambda_reg": Param("float", 1e-3, "weight λ_reg of ‖Δ‖_F", 0, 100),
        "weight_decay": Param("float", 0.0, "AdamW weight decay (the reference: 1e-4)", 0, 1),
        "patience": Param(
            "int", 5, "stop a layer after this many flat steps (0: never)", 0, 10_000
        ),
        "recipe": Param(
            "word",
            "ours",
            "scale-free distances (ours) or the authors' code path",
            choices=("ours", "reference"),
        ),  # fmt: skip
        "init": Param(
            "word",
            "gradient-fusion",
            "starting point: the least-squares solution (normalised), as is, or zero",
            choices=("gradient-fusion", "fusion", "zero"),
            values={"gradient-fusion": "fusion-normalised"},
        ),
        "ridge": _RIDGE,
        "refine_ridge": Param(
            "bool",
            None,
            "the optimiser steps keep the ridge their least-squares start was solved with: "
            "fits hold on words the feature prompts lack, same-class concepts separate less "
            "(default: on when every merged concept has a class noun and no two share one)",
        ),
        **_STAGES,
        "seed": _SEED,
    },
    "gradient-fusion": {"ridge": _RIDGE, **_STAGES, "seed": _SEED},
    "linear": {},
    "average": {},
    "ties": {"density": _DENSITY, "seed": _SEED},
    "dare": {"density": _DENSITY, "seed": _SEED},
    "none": {},
}
METHODS = tuple(PARAMS)  # merge methods a scene file can name


def default(method: str, engine_name: str) -> Any:
    """The default of a method parameter by its engine name (engine dataclasses read it)."""
    for name, param in PARAMS[method].items():
        if param.engine_name(name) == engine_name:
            return param.engine_value(param.default)
    raise KeyError(f"{method} has no parameter {engine_name}")


def resolve(method: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checked merge block -> (method parameters by engine name, `MergeConfig` stage fields).

    Only what the block sets is passed on; everything else takes the defaults in this table.
    """
    table = PARAMS[method]
    engine: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    for name, value in params.items():
        param = table[name]  # the checker has refused unknown names
        if param.stage:
            stages.update(dict.fromkeys(param.stage, value))
        if not param.stage or param.method_too:
            engine[param.engine_name(name)] = param.engine_value(value)
    return engine, stages
