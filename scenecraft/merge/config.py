"""Merge methods and their parameters: one frozen model per method, the one home of each.

A merge method is its parameter model: the fields carry the name users write in a `merge`
block, the type, the range (``ge``/``gt``/``le``), the default and the meaning
(``description``; the paper's symbol in the comment). Rules between two parameters are
``model_validator``s raising `ParamRule`, which the checker reports at ``check`` time with the
parameter's span. Everything else reads the models:

- the checker (`scenecraft.language.schema.MERGE_KEYS` is derived from them; it builds the
  model of every merge block, so a rule is an error before anything loads),
- the compiler (the plan's `MergeSpec.params` *is* the model, discriminated by ``method``),
- the docs table (`scenecraft.merge.params_doc`, generated into docs/language.md §3.4),
- the engine (`scenecraft.merge.engine.run_merge` takes the model as is; each method's solve
  function is registered next to it in `scenecraft.merge.methods.SOLVERS`).

Feature-based methods subclass `Stages`, the settings of the engine's feature stages, so a
merge block stays one flat list of names. A method is added by writing its model here (or
passing it to `scenecraft.merge.methods.register`) and its solve function.

Pure Python: the light commands (check, compile, fmt) read this without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scenecraft.diagnostics import DiagnosticError, did_you_mean, error

# Bumped when the same inputs merge to different weights (part of every cache entry's identity,
# so an entry written by an earlier engine is not reused). 2: scene_prompts aims K/V at each
# concept's own text encoder (`_retarget_kv`); 3: feature methods' fallback is the average;
# 4: co_subjects (region-shaped feature prompts, K/V aimed at each own LoRA on them) by default;
# 5: the text encoder merged layer by layer on the merged layers' inputs (``sequential``);
# 6: loraclr's steps keep their start's ridge when the concepts' classes are distinct
# (``refine_ridge`` by default: `refine_ridge_for`).
ENGINE_REVISION = 6
DEFAULT_RIDGE = 1e-2  # relative ridge of gradient fusion (and of LoRACLR's start): docs/loraclr.md


class ParamRule(ValueError):
    """A rule between parameters is broken; ``param`` is the one the diagnostic points at."""

    def __init__(self, param: str, message: str, help: str, others: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.param, self.message, self.help = param, message, help
        self.others = others  # the parameters it conflicts with (secondary labels)


class MethodParams(BaseModel):
    """A merge method's parameters; subclasses add ``method: Literal[name]`` and their fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str
    feature_based: ClassVar[bool] = False  # needs each concept's input features per layer

    @classmethod
    def name(cls) -> str:
        return str(cls.model_fields["method"].default)

    @classmethod
    def summary(cls) -> str:
        """What the method does, for the docs table (the docstring's first line)."""
        return (cls.__doc__ or "").strip().split("\n")[0]

    def values(self) -> dict[str, Any]:
        """The parameters by name, without ``method`` (JSON-able)."""
        return self.model_dump(mode="json", exclude={"method"})


# --------------------------------------------------------------------------------- stages


class Stages(MethodParams):
    """The settings of the engine's feature stages (docs/loraclr.md), taken by the methods
    that read features; the engine's own knobs are `scenecraft.merge.types.MergeConfig`."""

    feature_based: ClassVar[bool] = True
    method: str = ""  # the subclass's name; bare `Stages()`: the stages' defaults
    spatial: bool = Field(
        default=False, description="also merge the UNet's spatial layers (needs sampling runs)"
    )
    scene_prompts: bool = Field(
        default=False,
        description="also fit the text encoder and cross-attention K/V on the prompts this "
        "file renders each concept with (its region prompts; the scene prompt where it is drawn "
        "from one prompt), the K/V aimed at what the concept's own LoRA gives on them end to "
        "end; they join the merge key, so editing one re-merges and, the weights having "
        "changed, re-renders every image of the file (docs/loraclr.md)",
    )
    co_subjects: bool = Field(
        default=True,
        description="also fit the text encoder and cross-attention K/V on region-shaped prompts "
        "built from the merged concepts' class nouns, the shape of every region prompt "
        "(`<KIKI> triangle, triangle and square`, both orders, for each other concept), the K/V "
        "aimed at what the concept's own LoRA gives on them; needs no scene text, so prompt "
        "edits do not re-merge; concepts without a `class` get no such rows (docs/loraclr.md)",
    )
    continuations: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="also fit the text encoder and cross-attention K/V on each concept followed "
        "by this many seeded phrases of 1–4 common words from the tokenizer's vocabulary "
        "(`<KIKI> triangle, sea hat under`; its first 5,000 whole words): a scene's own words "
        "come after the concept's token; needs no scene text, so prompt edits do not re-merge; "
        "0: off. A trade on the toy world (32: each concept alone and four in one picture gain, "
        "the same-class pair loses, and the result moves with the `seed` that draws the "
        "phrases: docs/loraclr.md)",
    )
    sequential: bool = Field(
        default=True,
        description="merge the text encoder layer by layer in forward order, each layer fitted "
        "on the inputs the layers merged before it give, as the merged model will (`false`: on "
        "each concept's own encoder's inputs; docs/loraclr.md)",
    )
    fallback: Literal["average", "linear"] = Field(
        default="average",
        description="layers several concepts touch that no feature stage covers (the UNet's "
        "image side unless `spatial`): the mean of their updates (what least squares gives when "
        "a layer's inputs cannot tell the concepts apart) or their sum — LoRAs trained to be "
        "summed (Orthogonal Adaptation) want `linear` (docs/loraclr.md)",
    )
    max_rows: int | None = Field(
        default=None,
        ge=16,
        le=1_000_000,
        description="cap on feature rows per concept and layer (unset: 4096 for the text "
        "stages, 2048 for the spatial one)",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="feature-row subsampling and `continuations`' phrases (and the reference "
        "recipe's row cut)",
    )


# -------------------------------------------------------------------------------- methods

_DENSITY = "share of each LoRA's entries kept"
_RIDGE = (
    "ridge of the least-squares solve, relative to the trace: larger keeps the base model's "
    "behaviour on words the concepts never saw"
)


class Linear(MethodParams):
    """W0 + Σ_c w_c ΔW_c (all LoRAs at once)"""

    method: Literal["linear"] = "linear"


class Average(MethodParams):
    """W0 + (1/C) Σ_c w_c ΔW_c"""

    method: Literal["average"] = "average"


class Ties(MethodParams):
    """TIES merging: trim, elect sign, merge (peft)"""

    method: Literal["ties"] = "ties"
    density: float = Field(default=0.5, gt=0, le=1, description=_DENSITY)  # k of TIES' top-k%


class MagnitudePrune(MethodParams):
    """keep each update's largest entries, then sum (peft)"""

    method: Literal["magnitude-prune"] = "magnitude-prune"
    density: float = Field(default=0.5, gt=0, le=1, description=_DENSITY)


class Dare(MethodParams):
    """DARE: random drop, rescale the rest, sum (peft)"""

    method: Literal["dare"] = "dare"
    density: float = Field(default=0.5, gt=0, le=1, description=_DENSITY)  # 1 − p, p the drop rate
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="random seed of DARE's masks")


class DareTies(MethodParams):
    """DARE's random drop, then TIES' sign election (peft)"""

    method: Literal["dare-ties"] = "dare-ties"
    density: float = Field(default=0.5, gt=0, le=1, description=_DENSITY)
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="random seed of DARE's masks")


class GradientFusion(Stages):
    """Mix-of-Show's least-squares fusion, closed form"""

    method: Literal["gradient-fusion"] = "gradient-fusion"
    ridge: float = Field(
        default=DEFAULT_RIDGE, ge=0, le=1, description=_RIDGE
    )  # ε / (tr(XᵀX) / in)


# the authors' code path (weight_fusion.py): the defaults `recipe reference` starts from
REFERENCE_PRESET: dict[str, Any] = {
    "margin": 0.5,
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "iterations": 50,
    "patience": 0,
    "init": "zero",
}


class Loraclr(Stages):
    """LoRACLR: contrastive merge, one weight per layer (docs/loraclr.md)"""

    method: Literal["loraclr"] = "loraclr"
    recipe: Literal["ours", "reference"] = Field(
        default="ours",
        description="scale-free distances (`ours`) or the authors' code path (`reference`: "
        "margin 0.5, lr 1e-4, weight_decay 1e-4, patience 0, init zero unless given)",
    )
    margin: float = Field(  # m
        default=1.0, gt=0, le=10, description="contrastive margin m (relative with `recipe ours`)"
    )
    iterations: int = Field(  # optimiser steps per layer batch
        default=50, ge=1, le=10_000, description="optimisation steps per layer batch"
    )
    lr: float = Field(  # Adam step; ours: in units of the typical |ΔW| entry
        default=0.1, gt=0, le=1, description="Adam step (relative with `recipe ours`)"
    )
    lambda_con: float = Field(  # λ_con
        default=1.0, ge=0, le=100, description="weight λ_con of the contrastive terms"
    )
    lambda_mse: float = Field(  # λ_mse
        default=0.1, ge=0, le=100, description="weight λ_mse of the output-matching term"
    )
    lambda_reg: float = Field(  # λ_reg
        default=1e-3, ge=0, le=100, description="weight λ_reg of ‖Δ‖_F"
    )
    weight_decay: float = Field(  # AdamW's decoupled decay
        default=0.0, ge=0, le=1, description="AdamW weight decay (the reference uses 1e-4)"
    )
    patience: int = Field(
        default=5,
        ge=0,
        le=10_000,
        description="stop a layer after this many steps without improvement (0: never)",
    )
    init: Literal["gradient-fusion", "fusion", "zero"] = Field(  # D at step 0
        default="gradient-fusion",
        description="starting point: the least-squares solution (normalised by each concept's "
        "effect), as is, or zero",
    )
    ridge: float = Field(  # ε / (tr(XᵀX) / in) of the start
        default=DEFAULT_RIDGE, ge=0, le=1, description=_RIDGE + " (of the gradient-fusion start)"
    )
    refine_ridge: bool | None = Field(  # ε‖D‖² in L_pos
        default=None,
        description="the optimisation steps keep the ridge their starting point was solved "
        "with (without it they undo it): the fit holds better on words the feature prompts "
        "never had, concepts of one class separate less. Unset, it is on when every merged "
        "concept has a `class` and no two share one (case aside), off otherwise and with "
        "`recipe reference`; `scenecraft merge --json` shows the value used (docs/loraclr.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _reference_preset(cls, data: Any) -> Any:
        """``recipe reference`` starts from the authors' defaults; what the block sets wins."""
        if isinstance(data, dict) and data.get("recipe") == "reference":
            return {**REFERENCE_PRESET, **data}
        return data

    @model_validator(mode="after")
    def _refine_ridge_needs_ours(self) -> Loraclr:
        if self.recipe == "reference" and self.refine_ridge:
            raise ParamRule(
                "refine_ridge",
                "`refine_ridge` needs `recipe ours`: the reference recipe starts from zero, "
                "without a ridge to keep",
                "drop `refine_ridge`, or write `recipe ours`",
                others=("recipe",),
            )
        return self

    @classmethod
    def reference(cls) -> Loraclr:
        """The authors' recipe (docs/loraclr.md, the reference column of "LoRACLR: our recipe")."""
        return cls(recipe="reference")


class NoMerge(MethodParams):
    """no merge: the LoRAs are loaded as separate adapters"""

    method: Literal["none"] = "none"


# ------------------------------------------------------------------------------- registry

# name -> model: the methods a scene file can name, in the docs' order. Their solve functions
# are `scenecraft.merge.methods.SOLVERS` (torch); `methods.register` adds both at once.
METHODS: dict[str, type[MethodParams]] = {
    m.name(): m
    for m in (
        Loraclr,
        GradientFusion,
        Linear,
        Average,
        Ties,
        Dare,
        DareTies,
        MagnitudePrune,
        NoMerge,
    )
}


def add_method(model: type[MethodParams]) -> None:
    """Register a method's parameter model (`scenecraft.merge.methods.register` calls it)."""
    METHODS[model.name()] = model


def model_of(method: str) -> type[MethodParams]:
    """The parameter model of ``method``; unknown: `merge-unknown-method` with a did-you-mean."""
    model = METHODS.get(method)
    if model is None:
        raise error(
            "merge-unknown-method",
            f"unknown merge method `{method}`",
            help=did_you_mean(method, METHODS) or f"use one of: {', '.join(METHODS)}",
        )
    return model


def rule_errors(method: str, values: Mapping[str, Any]) -> list[ParamRule]:
    """The rules between parameters that ``values`` (each already of its field's type and range:
    the checker read them) break; the checker reports each at its parameter's span."""
    try:
        METHODS[method].model_validate({"method": method, **values})
    except ValidationError as exc:
        rules = [e.get("ctx", {}).get("error") for e in exc.errors()]
        return [r for r in rules if isinstance(r, ParamRule)]
    return []


def parse(method: str, values: Mapping[str, Any] | None = None) -> MethodParams:
    """A method's parameters from a name and a mapping (Python callers: benchmarks, tests);
    every problem is a `merge-bad-param` DiagnosticError. Scene files go through the checker."""
    model = model_of(method)
    try:
        return model.model_validate({"method": method, **(values or {})})
    except ValidationError as exc:
        raise _bad_param(method, model, exc) from None


def _bad_param(method: str, model: type[MethodParams], exc: ValidationError) -> DiagnosticError:
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    rule = first.get("ctx", {}).get("error")
    if isinstance(rule, ParamRule):
        return error("merge-bad-param", rule.message, help=rule.help)
    known = [f for f in model.model_fields if f != "method"]
    if first["type"] == "extra_forbidden":
        return error(
            "merge-bad-param",
            f"`{method}` takes no parameter `{name}`",
            help=did_you_mean(name, known) or f"known: {', '.join(sorted(known)) or 'none'}",
        )
    field = model.model_fields.get(name)
    return error(
        "merge-bad-param",
        f"`{method}` parameter `{name}`: {first['msg'].lower()}",
        help=f"`{name}`: {field.description}" if field else "docs/language.md §3.4",
    )
