"""Merge methods on synthetic layers: closed forms, conflict handling, batching, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from scenecraft.diagnostics import DiagnosticError
from scenecraft.merge.config import METHODS, Average, GradientFusion, Linear, Loraclr, parse
from scenecraft.merge.loraclr import loraclr
from scenecraft.merge.methods import merge_batch, merge_layer
from scenecraft.merge.quality import QualityLog, batch_quality
from scenecraft.merge.synthetic import SyntheticLayers, conflicting_layers
from tests._fixtures_merge_engine import one_thread_fixture  # noqa: F401  (autouse)


@pytest.fixture(scope="module")
def conflict() -> SyntheticLayers:
    """4 concepts, 2 layers (48 × 40), ragged feature sets, overlapping reads and writes."""
    return conflicting_layers(48, 40, concepts=4, layers=2, rows=(24, 30, 36, 42), seed=3)


def _quality(sy: SyntheticLayers, method: str, **params: object) -> tuple[torch.Tensor, ...]:
    W, stats = merge_batch(parse(method, params), sy.W0, sy.deltas, sy.X)
    e, s = batch_quality(W, sy.W0, sy.deltas, sy.X)
    return W, e, s, stats  # type: ignore[return-value]


# ------------------------------------------------------------------------- gradient fusion


@pytest.mark.parametrize(("n_in", "form"), [(10, "primal"), (24, "dual")])
def test_gradient_fusion_matches_an_independent_lstsq_solve(n_in: int, form: str) -> None:
    g = torch.Generator().manual_seed(0)
    n_out, eps_rel = 12, 1e-3
    W0 = torch.randn(n_out, n_in, generator=g)
    deltas = [torch.randn(n_out, n_in, generator=g) * 0.1 for _ in range(3)]
    X = [torch.randn(n, n_in, generator=g) for n in (4, 5, 6)]  # ragged, 15 rows
    W, stats = merge_layer(GradientFusion(ridge=eps_rel), W0, deltas, X)
    assert stats["form"] == form
    # min_W Σ ‖X_c Wᵀ − Y_c‖² + ε‖W − W0‖²  as one stacked least-squares problem, float64
    A = torch.cat(X).double()
    Y = torch.cat([x.double() @ (W0 + d).double().T for x, d in zip(X, deltas, strict=True)])
    eps = eps_rel * float((A * A).sum()) / n_in
    assert stats["eps"] == pytest.approx(eps, rel=1e-9)
    A_aug = torch.cat([A, math.sqrt(eps) * torch.eye(n_in, dtype=torch.float64)])
    Y_aug = torch.cat([Y, math.sqrt(eps) * W0.double().T])
    expected = torch.linalg.lstsq(A_aug, Y_aug).solution.T  # (out, in)
    torch.testing.assert_close(W.double(), expected, rtol=1e-5, atol=1e-5)


def test_gradient_fusion_is_exact_when_concepts_do_not_conflict() -> None:
    g = torch.Generator().manual_seed(1)
    W0 = torch.randn(8, 6, generator=g)
    # concept 0 lives on input dims 0-2, concept 1 on dims 3-5: a joint W reproduces both
    X = [torch.zeros(5, 6), torch.zeros(5, 6)]
    X[0][:, :3] = torch.randn(5, 3, generator=g)
    X[1][:, 3:] = torch.randn(5, 3, generator=g)
    deltas = [torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)]
    W, _ = merge_layer(GradientFusion(ridge=1e-10), W0, deltas, X)
    for x, d in zip(X, deltas, strict=True):
        torch.testing.assert_close(x @ W.T, x @ (W0 + d).T, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- conflicting concepts


def test_feature_methods_beat_linear_for_every_concept(conflict: SyntheticLayers) -> None:
    _, e_lin, _, _ = _quality(conflict, "linear")
    _, e_gf, _, _ = _quality(conflict, "gradient-fusion")
    _, e_clr, s_clr, stats = _quality(conflict, "loraclr")
    assert e_lin.min() > 0.5  # the synthetic conflict is real: linear bleeds badly
    assert (e_gf < e_lin).all(), (e_gf, e_lin)
    assert (e_clr < e_lin).all(), (e_clr, e_lin)
    assert (s_clr < 1).all(), s_clr
    assert all(st["loss_best"] <= st["loss_init"] for st in stats)


def test_loraclr_trades_fidelity_for_separation_against_gradient_fusion(
    conflict: SyntheticLayers,
) -> None:
    _, e_gf, s_gf, _ = _quality(conflict, "gradient-fusion")
    _, e_clr, s_clr, stats = _quality(conflict, "loraclr")
    assert s_clr.max() < s_gf.max()  # the repel term pulls the worst concept apart
    assert s_clr.mean() < s_gf.mean()
    assert e_clr.max() < 1.1 * e_gf.max()  # at a small fidelity cost
    assert all(0 < st["repel_active"] <= 1 for st in stats)


def test_reference_recipe_repel_term_depends_on_feature_scale(
    conflict: SyntheticLayers, record_property: pytest.RecordProperty
) -> None:
    """docs/loraclr.md ("Measured"): with flattened L2 distances the margin 0.5 is never reached at real scales."""
    ref = Loraclr.reference()
    at_scale = loraclr(conflict.W0, conflict.deltas, conflict.X, ref)[1]
    tiny_X = [x * 1e-3 for x in conflict.X]
    tiny = loraclr(conflict.W0, conflict.deltas, tiny_X, ref)[1]
    share = [st["repel_active"] for st in at_scale]
    share_tiny = [st["repel_active"] for st in tiny]
    record_property("reference_repel_active", share)
    record_property("reference_repel_active_features_x1e-3", share_tiny)
    assert share == [0.0, 0.0]  # what we find: never active on unit-scale features
    assert min(share_tiny) > 0.5  # only shrinking the features by 1000× wakes it up
    assert all(st["iterations"] == 50 for st in at_scale)
    # and 50 AdamW steps of 1e-4 from Δ = 0 barely move the weights: fidelity stays near 1
    W, _ = loraclr(conflict.W0, conflict.deltas, conflict.X, ref)
    e, _ = batch_quality(W, conflict.W0, conflict.deltas, conflict.X)
    assert e.min() > 0.8


def test_our_recipe_is_scale_free(conflict: SyntheticLayers) -> None:
    W1, st1 = loraclr(conflict.W0, conflict.deltas, conflict.X, Loraclr())
    W2, st2 = loraclr(conflict.W0, conflict.deltas, [x * 1e-3 for x in conflict.X], Loraclr())
    torch.testing.assert_close(W1, W2, rtol=1e-3, atol=1e-4)
    assert [s["repel_active"] for s in st1] == [s["repel_active"] for s in st2]


def test_refine_ridge_keeps_the_starts_ridge_in_the_steps(conflict: SyntheticLayers) -> None:
    """With only the attract term left (no repel, no output or size terms), the start is the
    exact minimiser of L_pos + ε‖D‖²: `refine_ridge` steps find nothing better and keep it,
    while the plain steps undo the ridge (lower L_pos, the fit drawn closer to the rows)."""
    # margin 0 (the repel term off) is below the users' range: set past validation
    only_attract = Loraclr(lambda_mse=0.0, lambda_reg=0.0, ridge=0.3, refine_ridge=False)
    only_attract = only_attract.model_copy(update={"margin": 0.0})
    with_ridge = only_attract.model_copy(update={"refine_ridge": True})
    kept, st_kept = loraclr(conflict.W0, conflict.deltas, conflict.X, with_ridge)
    freed, st_freed = loraclr(conflict.W0, conflict.deltas, conflict.X, only_attract)
    assert all(st["best_iter"] == 0 for st in st_kept), st_kept
    assert all(st["loss_best"] < 0.99 * st["loss_init"] for st in st_freed), st_freed
    e_kept, _ = batch_quality(kept, conflict.W0, conflict.deltas, conflict.X)
    e_freed, _ = batch_quality(freed, conflict.W0, conflict.deltas, conflict.X)
    assert (e_freed < e_kept).all(), (e_freed, e_kept)


def test_refine_ridge_with_the_reference_recipe_is_refused() -> None:
    with pytest.raises(DiagnosticError) as info:
        parse("loraclr", {"recipe": "reference", "refine_ridge": True})
    [diagnostic] = info.value.errors
    assert diagnostic.code == "merge-bad-param"
    assert "recipe ours" in diagnostic.message


# ------------------------------------------------------------------------------- batching


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("gradient-fusion", {}),
        ("loraclr", {}),
        ("loraclr", {"recipe": "reference", "iterations": 20}),
        ("ties", {"density": 0.4}),
        ("average", {}),
    ],
)
def test_batching_equal_shapes_matches_one_by_one(
    conflict: SyntheticLayers, method: str, params: dict[str, object]
) -> None:
    p = parse(method, params)
    W_batch, stats_batch = merge_batch(p, conflict.W0, conflict.deltas, conflict.X)
    for layer in range(conflict.W0.shape[0]):
        W_one, stats_one = merge_layer(
            p,
            conflict.W0[layer],
            [d[layer] for d in conflict.deltas],
            [x[layer] for x in conflict.X],
        )
        torch.testing.assert_close(W_batch[layer], W_one, rtol=1e-4, atol=1e-5)
        assert stats_batch[layer].get("iterations") == stats_one.get("iterations")


# ------------------------------------------------------------------------------ bad input


def test_every_method_runs_and_keeps_shape(conflict: SyntheticLayers) -> None:
    for method in set(METHODS) - {"none"}:
        W, stats = merge_batch(parse(method), conflict.W0, conflict.deltas, conflict.X)
        assert W.shape == conflict.W0.shape and torch.isfinite(W).all(), method
        assert len(stats) == conflict.W0.shape[0]


def test_linear_and_average_are_what_they_say(conflict: SyntheticLayers) -> None:
    W, _ = merge_batch(Linear(), conflict.W0, conflict.deltas, None)
    torch.testing.assert_close(W, conflict.W0 + sum(conflict.deltas))
    W, _ = merge_batch(Average(), conflict.W0, conflict.deltas, None)
    torch.testing.assert_close(W, conflict.W0 + sum(conflict.deltas) / len(conflict.deltas))


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda W, d, X: merge_layer(parse("loracrl"), W, d, X), "merge-unknown-method"),
        (lambda W, d, X: merge_layer(parse("linear"), W, [d[0][:, :3]], X), "merge-shape-mismatch"),
        (
            lambda W, d, X: merge_layer(parse("loraclr"), W, d, [x[:, :3] for x in X]),
            "merge-shape-mismatch",
        ),
        (
            lambda W, d, X: merge_layer(parse("gradient-fusion"), W, d, None),
            "merge-missing-features",
        ),
        (lambda W, d, X: merge_layer(parse("loraclr", {"margn": 1.0}), W, d, X), "merge-bad-param"),
        (lambda W, d, X: merge_layer(parse("ties", {"density": 1.5}), W, d, X), "merge-bad-param"),
        (
            lambda W, d, X: merge_layer(parse("gradient-fusion", {"eps": 1}), W, d, X),
            "merge-bad-param",
        ),
        (
            lambda W, d, X: merge_layer(parse("linear", {"density": 0.5}), W, d, X),
            "merge-bad-param",
        ),
        (lambda W, d, X: merge_layer(parse("linear"), W, [], X), "merge-no-concepts"),
    ],
)
def test_bad_input_fails_loudly(call: object, code: str) -> None:
    W0 = torch.zeros(6, 5)
    deltas = [torch.ones(6, 5), torch.ones(6, 5)]
    X = [torch.ones(3, 5), torch.ones(4, 5)]
    with pytest.raises(DiagnosticError) as info:
        call(W0, deltas, X)  # type: ignore[operator]
    assert info.value.diagnostics[0].code == code
    assert info.value.diagnostics[0].help


def test_quality_log_summary_is_json_able(conflict: SyntheticLayers) -> None:
    import json

    W, e, s, stats = _quality(conflict, "loraclr")
    log = QualityLog(["a", "b", "c", "d"])
    log.add("text-encoder", e, s, stats)  # type: ignore[arg-type]
    summary = json.loads(json.dumps(log.summary()))
    stage = summary["text-encoder"]
    assert stage["layers"] == 2
    assert stage["fidelity"]["worst"] == pytest.approx(float(e.max()))
    assert stage["per_concept"]["b"]["separation"]["mean"] == pytest.approx(float(s[:, 1].mean()))
    assert 0 < stage["repel_active"] <= 1
