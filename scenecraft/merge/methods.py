"""Per-layer merge methods: one solve function per method, batched over layers of equal shape.

Notation (docs/loraclr.md): W0 (out, in) base weight, ΔW_c (out, in) concept c's dense LoRA update
(user weight already applied), X_c (n_c, in) concept c's input features at the layer,
Y_c = X_c (W0 + ΔW_c)ᵀ its target, W* the merged weight.

Batched form (what the engine calls): ``merge_batch(params, W0, deltas, X)`` with ``params``
the method's model (`scenecraft.merge.config`, taken as is: it was checked when built),
W0 (L, out, in), deltas a list of C tensors (L, out, in), X a list of C tensors (L, n_c, in).
Row counts n_c may differ between concepts (ragged sets); within a concept all L layers share
n_c (pad with zero rows: every feature-based method here depends on X only through XᵀX, so
zero rows change nothing). ``merge_layer`` is the single-layer form.

Methods (`SOLVERS`, name -> solve(W0, deltas, X, params))
- ``linear``:          W* = W0 + Σ_c ΔW_c                      (= loading every adapter at once)
- ``average``:         W* = W0 + (1/C) Σ_c ΔW_c
- ``ties``, ``dare``, ``dare-ties``, ``magnitude-prune``: task-vector merging from
  peft.utils.merge_utils with task tensors ΔW_c, weights 1 (w_c is already inside ΔW_c) and
  ``density``; DARE draws its masks from ``seed``.
- ``gradient-fusion``: Mix-of-Show's objective min_W Σ_c ‖X_c Wᵀ − Y_c‖²_F in closed form, see
  `scenecraft.merge.fusion.gradient_fusion`.
- ``loraclr``:         contrastive refinement, see `scenecraft.merge.loraclr`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scenecraft.diagnostics import error
from scenecraft.merge.config import (
    METHODS,
    Dare,
    DareTies,
    GradientFusion,
    Loraclr,
    MagnitudePrune,
    MethodParams,
    Ties,
    add_method,
)
from scenecraft.merge.fusion import Stats, gradient_fusion
from scenecraft.merge.loraclr import loraclr

# solve(W0 (L, out, in), deltas C × (L, out, in), X C × (L, n_c, in) | None, params)
#   -> (W* (L, out, in), one stats dict per layer); X is None for data-free methods
Solve = Callable[
    [torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None, MethodParams],
    tuple[torch.Tensor, list[Stats]],
]


# ----------------------------------------------------------------------------- input checks


def check_inputs(
    params: MethodParams,
    W0: torch.Tensor,
    deltas: list[torch.Tensor],
    X: list[torch.Tensor] | None,
) -> None:
    """Fail loudly on mismatched shapes (DiagnosticError)."""
    method = params.method
    if W0.dim() != 3:
        raise error(
            "merge-shape-mismatch",
            f"W0 must be (L, out, in), got {tuple(W0.shape)}",
            help="pass a stack of base weights of one shape",
        )
    if not deltas:
        raise error(
            "merge-no-concepts",
            "a merge needs at least one concept update",
            help="list the concepts' LoRAs in the merge block",
        )
    for c, d in enumerate(deltas):
        if d.shape != W0.shape:
            raise error(
                "merge-shape-mismatch",
                f"update of concept {c} has shape {tuple(d.shape)}, the layer {tuple(W0.shape)}",
                help="the LoRA was trained for a different base model or layer",
            )
    if params.feature_based:
        if X is None or len(X) != len(deltas):
            raise error(
                "merge-missing-features",
                f"`{method}` needs one feature set per concept",
                help="run the feature collection stage first (scenecraft.merge.features)",
            )
        L, _, n_in = W0.shape
        for c, x in enumerate(X):
            if x.dim() != 3 or x.shape[0] != L or x.shape[2] != n_in:
                raise error(
                    "merge-shape-mismatch",
                    f"features of concept {c} have shape {tuple(x.shape)}, expected (L={L}, n, {n_in})",
                    help="features must be the layer's input rows, one set per concept",
                )


# ------------------------------------------------------------------------------ data-free


def _none_stats(W0: torch.Tensor) -> list[Stats]:
    return [{} for _ in range(W0.shape[0])]


def _linear(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None, _: MethodParams
) -> tuple[torch.Tensor, list[Stats]]:
    return W0 + torch.stack(deltas).sum(0), _none_stats(W0)


def _average(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None, _: MethodParams
) -> tuple[torch.Tensor, list[Stats]]:
    return W0 + torch.stack(deltas).mean(0), _none_stats(W0)


def _peft_merge(name: str, deltas: torch.Tensor, density: float) -> torch.Tensor:
    """One layer: deltas (C, out, in) -> merged task vector (out, in) via peft.utils.merge_utils."""
    from peft.utils import merge_utils as mu

    tasks = list(deltas.unbind(0))
    weights = torch.ones(len(tasks), dtype=deltas.dtype, device=deltas.device)
    if name == "ties":
        return mu.ties(tasks, weights, density)
    if name == "dare":
        return mu.dare_linear(tasks, weights, density)
    if name == "dare-ties":
        return mu.dare_ties(tasks, weights, density)
    return mu.magnitude_prune(tasks, weights, density)


def _task_vectors(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None, p: MethodParams
) -> tuple[torch.Tensor, list[Stats]]:
    """TIES / DARE / DARE-TIES / magnitude pruning, layer by layer, DARE's masks seeded."""
    assert isinstance(p, (Ties, Dare, DareTies, MagnitudePrune))
    D = torch.stack(deltas)  # (C, L, out, in)
    seed = p.seed if isinstance(p, (Dare, DareTies)) else 0
    devices = [W0.device] if W0.device.type == "cuda" else []
    out = torch.empty_like(W0)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # DARE's Bernoulli masks
        for layer in range(W0.shape[0]):
            out[layer] = W0[layer] + _peft_merge(p.method, D[:, layer], p.density)
    return out, [{"density": p.density} for _ in range(W0.shape[0])]


# --------------------------------------------------------------------------- feature-based


def _gradient_fusion(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None, p: MethodParams
) -> tuple[torch.Tensor, list[Stats]]:
    assert isinstance(p, GradientFusion) and X is not None
    return gradient_fusion(W0, deltas, X, p.ridge)


def _loraclr(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None, p: MethodParams
) -> tuple[torch.Tensor, list[Stats]]:
    assert isinstance(p, Loraclr) and X is not None
    return loraclr(W0, deltas, X, p)


# ---------------------------------------------------------------------------------- registry

SOLVERS: dict[str, Solve] = {
    "linear": _linear,
    "average": _average,
    "ties": _task_vectors,
    "dare": _task_vectors,
    "dare-ties": _task_vectors,
    "magnitude-prune": _task_vectors,
    "gradient-fusion": _gradient_fusion,
    "loraclr": _loraclr,
}
assert set(SOLVERS) == set(METHODS) - {"none"}, "every merge method needs a solve function"


def register(model: type[MethodParams], solve: Solve) -> None:
    """Add a merge method: its parameter model (the checker, the docs table and the plan read
    it from `scenecraft.merge.config.METHODS`) and its solve function (the engine's)."""
    add_method(model)
    SOLVERS[model.name()] = solve


def unregister(name: str) -> None:
    """Remove a method `register` added (tests)."""
    METHODS.pop(name, None)
    SOLVERS.pop(name, None)


def merge_batch(
    params: MethodParams,
    W0: torch.Tensor,
    deltas: list[torch.Tensor],
    X: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, list[Stats]]:
    """Merge L layers of equal shape at once.

    W0 (L, out, in); deltas: C × (L, out, in); X: C × (L, n_c, in) (None for data-free
    methods). Returns W* (L, out, in) in W0's dtype and one stats dict per layer.
    """
    check_inputs(params, W0, deltas, X)
    W0f = W0.float()
    dl = [d.to(W0f) for d in deltas]
    Xf = [x.to(W0f) for x in X] if X is not None and params.feature_based else None
    W, stats = SOLVERS[params.method](W0f, dl, Xf, params)
    return W.to(W0.dtype), stats


def merge_layer(
    params: MethodParams,
    W0: torch.Tensor,
    deltas: list[torch.Tensor],
    X: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, Stats]:
    """One layer: W0 (out, in), deltas C × (out, in), X C × (n_c, in) -> (W* (out, in), stats)."""
    if W0.dim() != 2:
        raise error(
            "merge-shape-mismatch",
            f"W0 must be (out, in), got {tuple(W0.shape)}",
            help="merge_layer takes one layer; use merge_batch for a stack",
        )
    W, stats = merge_batch(
        params,
        W0[None],
        [d[None] for d in deltas],
        None if X is None else [x[None] for x in X],
    )
    return W[0], stats[0]
