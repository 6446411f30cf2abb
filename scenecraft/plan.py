"""The render plan: what the compiler hands to the merge engine and the renderer.

A `RenderPlan` is plain data (pydantic, JSON-serialisable, deterministic for a given input):
the merge to build (`MergeSpec`) and one `RenderJob` per image. Paths are stored as written
in the scene file, resolved against the directory of the file that declared them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

from scenecraft.merge.config import METHODS, Loraclr, MethodParams, model_of

Family = Literal["sd15", "sd2", "sdxl", "flux"]
ConceptKind = Literal["subject", "object", "style"]
Relation = Literal[
    "left-of",
    "right-of",
    "above",
    "below",
    "on-top-of",
    "in-front-of",
    "behind",
    "beside",
    "back-to-back",
]

PLAN_VERSION = 2  # 2: `merge.params` is the method's typed model (it names the method)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceSpan(_Model):
    file: str
    line: int
    col: int
    end_line: int
    end_col: int


class BaseModelSpec(_Model):
    source: str  # hub id ("org/name"), local diffusers folder, or a .safetensors/.ckpt file
    family: Family | None = None  # declared family; None = detect when loading
    revision: str | None = None  # hub revision, if any


class ConceptSpec(_Model):
    name: str  # the name used in scene files (`gosling`)
    tokens: tuple[str, ...]  # trigger token(s) as trained (`<GOSLING>`)
    lora: str | None = None  # path to the LoRA file (resolved), None for a token-only concept
    weight: float = 1.0  # user weight w_c, multiplies alpha/rank
    class_noun: str | None = None  # "man", "dog", "vase"
    kind: ConceptKind = "subject"
    embedding: str | None = None  # textual-inversion embedding file bound to the tokens
    references: tuple[str, ...] = ()  # reference images (for evaluation)
    placeholder: bool = False  # True when the LoRA file does not exist yet (check --allow-missing)
    prompts: tuple[str, ...] = ()  # merge `scene_prompts`: the prompts this plan renders it with


class MergeSpec(_Model):
    base: BaseModelSpec
    concepts: tuple[ConceptSpec, ...]
    # the method's parameter model (scenecraft.merge.config), every parameter set: its
    # ``method`` field picks the model from `config.METHODS`; the engine takes it as is
    params: SerializeAsAny[MethodParams] = Field(default_factory=lambda: Loraclr())
    key: str = ""  # content hash of everything above plus the LoRA files' sha256 where present

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        """``params`` as a mapping (plan JSON) -> the model its ``method`` names; a ``method``
        keyword (Python callers: ``MergeSpec(method="linear", ...)``) picks it the same way."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        method = data.pop("method", None)
        params = data.get("params", {} if method else None)
        if isinstance(params, dict):
            name = params.get("method", method or "loraclr")
            if name not in METHODS:
                raise ValueError(f"unknown merge method `{name}`")
            data["params"] = model_of(name).model_validate({**params, "method": name})
        return data

    @property
    def method(self) -> str:
        return self.params.method


def merge_key(spec: MergeSpec, files: Sequence[tuple[str | None, str | None]]) -> str:
    """A merge's one identity (`MergeSpec.key`): what its merged weights depend on that a plan
    knows — base, method, every parameter of its model and, per concept in order, its tokens, weight,
    class and kind and the sha256 of its LoRA and embedding files (``files``, one pair per
    concept), and its `prompts` when merge `scene_prompts` set them. Names, references and
    paths are not part of it: renaming a concept or moving its file keeps the merge. The merge
    cache adds what only the engine knows (docs/merge.md)."""
    return stable_hash(
        {
            "base": spec.base.model_dump(mode="json"),
            "method": spec.method,
            "params": spec.params.values(),
            "concepts": [
                [list(c.tokens), c.weight, c.class_noun, c.kind, lora, embedding]
                + ([list(c.prompts)] if c.prompts else [])  # keys without them stay as they were
                for c, (lora, embedding) in zip(spec.concepts, files, strict=True)
            ],
        },
        24,
    )


class Placement(_Model):
    subject: str  # concept name or object name
    relation: Relation
    target: str  # concept name or object name


class Region(_Model):
    """One subject's part of a regional job: its box and the prompt sampled inside it."""

    subject: str  # concept or object name
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), fractions of the canvas
    prompt: str  # the subject alone: token, class, its own attributes, setting and style
    negative_prompt: str | None = None  # None: the job's negative prompt
    prompt_tokens: int = 0  # CLIP tokens of `prompt` (estimate)


class RenderJob(_Model):
    id: str  # stable hash of everything that determines the image
    file: str  # scene file it came from
    scene: str  # scene name
    storyboard: str | None = None  # storyboard name when the job is a panel
    panel: int | None = None  # 0-based panel index within the storyboard
    caption: str | None = None  # panel caption
    prompt: str
    negative_prompt: str = ""
    seed: int  # the seed as written in the scene file
    index: int = 0  # image index within its seed when images_per_seed > 1
    width: int
    height: int
    steps: int
    guidance: float
    sampler: str
    concepts: tuple[str, ...] = ()  # concept names the image uses, in order of appearance
    objects: tuple[str, ...] = ()  # non-concept objects ("vase", "chair")
    placements: tuple[Placement, ...] = ()  # structured layout for regional guidance
    span: SourceSpan | None = None  # where the scene (or panel) is written
    prompt_tokens: int = 0  # CLIP tokens the prompt uses (incl. start/end), 77 is the window
    regions: tuple[Region, ...] = ()  # regional sampling: `prompt` is then the global prompt


class PanelSpec(_Model):
    index: int
    scene: str
    caption: str | None = None
    job_ids: tuple[str, ...] = ()


class StoryboardSpec(_Model):
    name: str
    columns: int
    title: str | None = None  # the `title` setting: heads the page and the contact sheet
    panels: tuple[PanelSpec, ...]


class RenderPlan(_Model):
    version: int = PLAN_VERSION
    file: str  # the scene file compiled
    source_sha256: str  # hash of the (rendered) source text
    template_vars: dict[str, Any] = Field(default_factory=dict)  # Jinja variables, if templated
    rendered_source: str | None = None  # the Jinja-rendered text, kept for provenance
    merge: MergeSpec
    batch_size: int = 1
    images_per_seed: int = 1
    jobs: tuple[RenderJob, ...] = ()
    storyboards: tuple[StoryboardSpec, ...] = ()

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def generator_seed(job: RenderJob) -> int:
    """The torch generator seed of a job: image n of seed s uses s + n (A1111's batch
    convention, so the `Seed:` written into each PNG reproduces it elsewhere)."""
    return job.seed + job.index


def stable_hash(data: Any, length: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys), hex, truncated."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
