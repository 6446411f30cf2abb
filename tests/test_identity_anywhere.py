"""benchmarks/identity_anywhere.py: its casts and its prompt split hold what the issue asks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from scenecraft.toyworld import CONCEPTS, expected_prompt

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "identity_anywhere", ROOT / "benchmarks" / "identity_anywhere.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _held_words(bench: ModuleType) -> list[str]:
    settings, attribute, relation = bench.SPLITS["held-out"]
    return [*settings, attribute.split()[-1], relation.replace("-", " ")]


def test_casts_are_distinct_one_class_and_mixed(bench: ModuleType) -> None:
    def nouns(cast: str) -> set[str]:
        return {CONCEPTS[n].class_noun for n in bench.CASTS[cast]}

    assert len(nouns("distinct")) == 4 and nouns("one-class") == {"circle"}
    mixed = [CONCEPTS[n].sprite for n in bench.CASTS["mixed"]]
    assert mixed[0].colour == mixed[1].colour and mixed[0].shape == mixed[1].shape
    assert mixed[0].pattern == mixed[2].pattern and mixed[0].shape != mixed[2].shape
    for cast, subsets in bench.SUBSETS.items():
        assert [len(s) for s in subsets] == [2, 3]
        assert all(set(s) <= set(bench.CASTS[cast]) for s in subsets)


def test_fit_prompts_never_hold_a_held_out_word(bench: ModuleType) -> None:
    cases = [c for cast in bench.CASTS for c in bench.cast_cases(cast)]
    cells = {c.label.rsplit("|", 1)[0] for c in cases}
    assert len(cells) == len(bench.CASTS) * len(bench.CELLS) * len(bench.SPLITS)
    for case in cases:
        prompt, split = expected_prompt(case.scene), case.label.split("|")[2]
        held = [w for w in _held_words(bench) if w in prompt]
        assert bool(held) == (split == "held-out"), (prompt, split)


def test_the_fitted_merge_sees_only_fit_prompts(bench: ModuleType) -> None:
    """What the compiler hands `scene_prompts true` for the FIT file of a merge group (regions
    on): every prompt of every concept, none holding a held-out word."""
    cases = [c for c in bench.cast_cases("distinct") if c.merged == bench.CASTS["distinct"]]
    fit = [c for c in cases if c.label.split("|")[2] == "fit"]
    prompts = bench.scene_prompts(fit, [1000], "on")
    assert set(prompts) == set(bench.CASTS["distinct"])
    assert all(prompts.values())
    for text in (p for ps in prompts.values() for p in ps):
        assert not [w for w in _held_words(bench) if w in text], text


def test_cells_are_shares_of_their_ceiling(bench: ModuleType) -> None:
    row, cell = bench.DEFAULT, bench.CELLS[0]
    result = {
        "world": 2,
        "seeds": 2,
        "seed_sets": {"choosing": 1000, "held-out": 5000},
        "casts": {"distinct": bench.CASTS["distinct"]},
        "scores": {
            f"distinct|{cell}|fit|{row}|held-out": [1.0, 0.0],
            f"distinct|{cell}|fit|{bench.CEILING}|held-out": [1.0, 1.0],
            f"distinct|{cell}|fit|{row}|choosing": [1.0, 1.0],
            f"distinct|{cell}|fit|{bench.CEILING}|choosing": [0.5, 1.0],
        },
    }
    table = bench.markdown(result)
    assert f"| distinct | {cell} | fit | 0.50 (0.50×); 1.00 (1.33×) | 1.00; 0.75 |" in table
    assert f"| distinct | {cell} | held-out | –; – | –; – |" in table
