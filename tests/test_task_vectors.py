"""TIES / DARE / DARE-TIES / magnitude pruning: PEFT's merge_utils results (1e-6), by selection."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft.utils import merge_utils as mu

import scenecraft.merge.task_vectors as tv
from scenecraft.merge.config import parse
from scenecraft.merge.methods import merge_batch
from scenecraft.merge.task_vectors import magnitude_mask
from tests._fixtures_merge_engine import one_thread_fixture  # noqa: F401  (autouse)

PEFT = {
    "ties": mu.ties,
    "dare": mu.dare_linear,
    "dare-ties": mu.dare_ties,
    "magnitude-prune": mu.magnitude_prune,
}


def _peft_reference(
    method: str, W0: torch.Tensor, deltas: list[torch.Tensor], p: dict
) -> torch.Tensor:
    """PEFT layer by layer, concept by concept, DARE seeded once as the merge does."""
    torch.manual_seed(int(p.get("seed", 0)))
    out = torch.empty_like(W0)
    weights = torch.ones(len(deltas))
    for layer in range(W0.shape[0]):
        tasks = [d[layer] for d in deltas]
        with warnings.catch_warnings():  # PEFT warns that density 1 prunes nothing
            warnings.simplefilter("ignore", UserWarning)
            out[layer] = W0[layer] + PEFT[method](tasks, weights, p["density"])
    return out


def _inputs(seed: int, C: int = 4, L: int = 3, shape: tuple[int, int] = (24, 20)) -> tuple:
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(L, *shape, generator=g)
    deltas = [torch.randn(L, *shape, generator=g) * 0.1 for _ in range(C)]
    return W0, deltas


@pytest.mark.parametrize("method", sorted(PEFT))
@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.77, 1.0])
def test_matches_peft_merge_utils(method: str, density: float) -> None:
    W0, deltas = _inputs(seed=11)
    params: dict[str, object] = {"density": density}
    if method.startswith("dare"):
        params["seed"] = 5
    W, stats = merge_batch(parse(method, params), W0, deltas, None)
    ref = _peft_reference(method, W0, deltas, params)
    torch.testing.assert_close(W, ref, rtol=0, atol=1e-6)
    assert stats == [{"density": density}] * W0.shape[0]


@pytest.mark.parametrize("method", ["ties", "magnitude-prune"])
@pytest.mark.parametrize("density", [0.25, 0.5, 0.6])
def test_tied_magnitudes_keep_what_peft_keeps(method: str, density: float) -> None:
    """Quantised updates: many entries share the threshold magnitude, zeros among them."""
    g = torch.Generator().manual_seed(3)
    W0 = torch.randn(2, 10, 12, generator=g)
    deltas = [torch.randint(-3, 4, (2, 10, 12), generator=g).float() * 0.5 for _ in range(3)]
    W, _ = merge_batch(parse(method, {"density": density}), W0, deltas, None)
    ref = _peft_reference(method, W0, deltas, {"density": density})
    torch.testing.assert_close(W, ref, rtol=0, atol=1e-6)


def test_mask_keeps_exactly_k_and_only_falls_back_to_topk_on_ties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, deltas = _inputs(seed=2)
    D = torch.stack(deltas)
    k = int(0.3 * 24 * 20)

    def no_topk(*_: object, **__: object) -> None:
        raise AssertionError("topk called on a tensor without ties")

    monkeypatch.setattr(torch, "topk", no_topk)
    mask = magnitude_mask(D, 0.3)
    assert mask is not None
    assert (mask.reshape(D.shape[0] * D.shape[1], -1).sum(1) == k).all()
    kept_min = torch.where(mask, D.abs(), torch.inf).amin(dim=(2, 3))
    dropped_max = torch.where(mask, 0.0, D.abs()).amax(dim=(2, 3))
    assert (kept_min > dropped_max).all()
    assert magnitude_mask(D, 1.0) is None


def _rows(name: str, g: torch.Generator) -> torch.Tensor:
    u = torch.rand(3, 5000, generator=g)
    return {
        "normal": torch.randn(3, 5000, generator=g).abs(),
        "heavy-tailed": u**12,
        "mostly zeros": torch.where(u < 0.7, 0.0, u),
        "sorted": torch.arange(5000.0).repeat(3, 1),
        "constant": torch.ones(3, 5000),
        "quantised": torch.floor(u * 5),
    }[name]


@pytest.mark.parametrize(
    "name", ["normal", "heavy-tailed", "mostly zeros", "sorted", "constant", "quantised"]
)
def test_sampled_bracket_finds_kthvalues_threshold(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tv, "SAMPLE", 64)  # rows of 5000 > 8 · 64 take the sampled path
    mags = _rows(name, torch.Generator().manual_seed(1))
    for density in (0.001, 0.05, 0.3, 0.5, 0.9, 0.9999):
        k = max(1, int(density * mags.shape[1]))
        ref = mags.kthvalue(mags.shape[1] - k + 1, dim=1, keepdim=True).values
        assert torch.equal(tv.kth_largest(mags, k), ref), (name, density)
