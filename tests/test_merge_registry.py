"""A merge method is its model and its solve function: registered once, it is in the checker,
the docs table, the plan and the engine, with nothing else to edit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import Field

from scenecraft.api import load
from scenecraft.diagnostics import DiagnosticError
from scenecraft.language import schema
from scenecraft.merge import features as F
from scenecraft.merge.config import METHODS, MethodParams
from scenecraft.merge.engine import MergeConfig, run_merge
from scenecraft.merge.fusion import Stats
from scenecraft.merge.methods import SOLVERS, merge_batch, register, unregister
from scenecraft.merge.params_doc import merge_tables
from scenecraft.merge.types import ConceptLoRA
from tests._fixtures_merge_engine import (  # noqa: F401  (fixtures)
    engine_concepts_fixture,
    engine_pipe_fixture,
    one_thread_fixture,
)

ScenePath = Callable[..., Path]
MODEL = 'model "example-org/sd15-base"\nconcept a {\n  token "<A>"\n}\n'


class Shifted(MethodParams):
    """the concepts' sum, shifted by a constant (a test method)"""

    method: Literal["shifted"] = "shifted"
    shift: float = Field(default=0.0, ge=-1, le=1, description="constant added to every weight")


def solve_shifted(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None, p: MethodParams
) -> tuple[torch.Tensor, list[Stats]]:
    assert isinstance(p, Shifted)
    return W0 + torch.stack(deltas).sum(0) + p.shift, [{"shift": p.shift}] * W0.shape[0]


@pytest.fixture
def shifted() -> Iterator[None]:
    register(Shifted, solve_shifted)  # the one place the method is added
    yield
    unregister("shifted")
    assert "shifted" not in METHODS and "shifted" not in SOLVERS


def test_the_checker_takes_a_registered_method(shifted: None, scene_file: ScenePath) -> None:
    assert "shifted" in schema.MERGE_KEYS and set(schema.MERGE_KEYS["shifted"]) == {"shift"}
    plan = load(scene_file(MODEL + "merge shifted {\n  shift 0.25\n}\nscene s {\n  a\n}\n")).plan
    assert plan.merge.params == Shifted(shift=0.25)
    bad = scene_file(MODEL + "merge shifted {\n  shif 0.25\n}\nscene s {\n  a\n}\n", "b.scene")
    with pytest.raises(DiagnosticError) as info:
        load(bad)
    [diag] = [d for d in info.value.diagnostics if d.is_error]
    assert diag.code == "unknown-setting" and diag.help == "did you mean `shift`?"
    far = scene_file(MODEL + "merge shifted {\n  shift 2\n}\nscene s {\n  a\n}\n", "c.scene")
    with pytest.raises(DiagnosticError) as info:
        load(far)
    assert [d.code for d in info.value.diagnostics if d.is_error] == ["value-out-of-range"]


def test_the_docs_table_lists_a_registered_method(shifted: None) -> None:
    table = merge_tables()
    assert "| `shifted` | `shift` | the concepts' sum, shifted by a constant (a test method) |" in (
        table
    )
    assert "| `shift` | number | -1..1 | `0` | constant added to every weight |" in table


def test_the_engine_runs_a_registered_method(
    shifted: None, engine_pipe: Any, engine_concepts: list[ConceptLoRA]
) -> None:
    W0, d = torch.zeros(2, 3, 4), [torch.ones(2, 3, 4), torch.ones(2, 3, 4)]
    W, stats = merge_batch(Shifted(shift=0.5), W0, d, None)
    assert torch.equal(W, torch.full((2, 3, 4), 2.5)) and stats[0] == {"shift": 0.5}
    two = engine_concepts[:2]
    outcome = run_merge(engine_pipe, two, Shifted(shift=0.5), config=MergeConfig(figures=False))
    assert outcome.figures["method"] == "shifted" and outcome.figures["params"] == {"shift": 0.5}
    shared = [p for p in two[0].layers if p in two[1].layers]
    modules = F.resolve_modules(engine_pipe, shared)
    for p in shared:
        W0p = F.weight_matrix(modules[p]).detach().float()
        torch.testing.assert_close(
            outcome.weights[p], W0p + two[0].delta(p) + two[1].delta(p) + 0.5
        )
