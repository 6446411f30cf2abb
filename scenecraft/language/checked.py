"""The checked program: the typed semantic model `check` builds and the compiler reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scenecraft.diagnostics import Diagnostic
from scenecraft.language import nodes as n
from scenecraft.language.check_scene import SceneBody
from scenecraft.language.loader import Program


@dataclass
class ConceptInfo:
    name: str
    node: n.Concept
    tokens: tuple[str, ...]
    lora: str | None  # resolved path
    weight: float = 1.0
    class_noun: str | None = None
    kind: str = "subject"
    embedding: str | None = None
    references: tuple[str, ...] = ()
    placeholder: bool = False  # the LoRA file is missing (allowed by allow_missing)
    negative: str | None = None  # negative prompt of the concept's region


@dataclass
class SceneInfo:
    name: str
    node: n.Scene
    body: SceneBody  # what the scene says: settings, objects, areas, subjects, clauses
    storyboard: str | None = None  # set for inline storyboard panels

    @property
    def settings(self) -> dict[str, Any]:  # overrides read from the scene body
        return self.body.settings

    @property
    def objects(self) -> dict[str, str]:  # object name -> prompt words
        return self.body.objects

    @property
    def anchor(self) -> n.Span:
        """Where diagnostics about the whole scene point: its name, or the inline panel."""
        return self.node.name.span if self.node.name.name else self.node.span


@dataclass(frozen=True)
class ModelInfo:
    source: str  # hub id, or a resolved local path
    family: str | None  # declared family; None: detected when loading
    revision: str | None  # hub revision
    node: n.Model


@dataclass
class PanelInfo:
    scene: str
    caption: str | None
    node: n.Panel


@dataclass
class StoryboardInfo:
    name: str
    node: n.Storyboard
    columns: int
    title: str | None
    panels: list[PanelInfo]


@dataclass
class Checked:
    program: Program
    model: ModelInfo | None
    concepts: dict[str, ConceptInfo]
    merge_method: str
    merge_params: dict[str, Any]
    defaults: dict[str, Any]
    scenes: dict[str, SceneInfo]
    storyboards: dict[str, StoryboardInfo]
    warnings: list[Diagnostic] = field(default_factory=list)
