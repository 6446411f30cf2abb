"""Per-layer merge methods: one signature for all, batched over layers of equal shape.

Notation (docs/loraclr.md): W0 (out, in) base weight, ΔW_c (out, in) concept c's dense LoRA update
(user weight already applied), X_c (n_c, in) concept c's input features at the layer,
Y_c = X_c (W0 + ΔW_c)ᵀ its target, W* the merged weight.

Batched form (what the engine calls): ``merge_batch(method, W0, deltas, X, params)`` with
W0 (L, out, in), deltas a list of C tensors (L, out, in), X a list of C tensors (L, n_c, in).
Row counts n_c may differ between concepts (ragged sets); within a concept all L layers share
n_c (pad with zero rows: every feature-based method here depends on X only through XᵀX, so
zero rows change nothing). ``merge_layer`` is the single-layer form.

Methods
- ``linear``:          W* = W0 + Σ_c ΔW_c                      (= loading every adapter at once)
- ``average``:         W* = W0 + (1/C) Σ_c ΔW_c
- ``ties``, ``dare``, ``dare-ties``, ``magnitude-prune``: task-vector merging from
  peft.utils.merge_utils with task tensors ΔW_c, weights 1 (w_c is already inside ΔW_c) and
  ``params["density"]`` (default 0.5); DARE draws its masks from ``params["seed"]`` (default 0).
- ``gradient-fusion``: Mix-of-Show's objective min_W Σ_c ‖X_c Wᵀ − Y_c‖²_F in closed form, see
  `scenecraft.merge.fusion.gradient_fusion`.
- ``loraclr``:         contrastive refinement, see `scenecraft.merge.loraclr`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from scenecraft.diagnostics import did_you_mean, error
from scenecraft.merge.config import DEFAULT_RIDGE, default
from scenecraft.merge.fusion import Stats, gradient_fusion
from scenecraft.merge.loraclr import LoraclrConfig, loraclr

DATA_FREE = ("linear", "average", "ties", "dare", "dare-ties", "magnitude-prune")
FEATURE_BASED = ("gradient-fusion", "loraclr")
METHODS = DATA_FREE + FEATURE_BASED


# ----------------------------------------------------------------------------- input checks


def check_method(method: str, allowed: tuple[str, ...] = METHODS) -> None:
    """An unknown method name is a DiagnosticError with a did-you-mean."""
    if method not in allowed:
        raise error(
            "merge-unknown-method",
            f"unknown merge method `{method}`",
            help=did_you_mean(method, allowed) or f"use one of: {', '.join(allowed)}",
        )


def allowed_params(method: str) -> set[str]:
    """Parameter names a method reads (``seed`` is accepted everywhere)."""
    if method == "loraclr":
        return {f.name for f in fields(LoraclrConfig)}
    if method == "gradient-fusion":
        return {"eps_rel", "seed"}
    if method in ("linear", "average"):
        return {"seed"}
    return {"density", "seed"}


def check_params(method: str, params: dict[str, Any]) -> None:
    """Unknown parameter names are a DiagnosticError, not silently ignored."""
    known = allowed_params(method)
    for key in params:
        if key not in known:
            raise error(
                "merge-bad-param",
                f"`{method}` takes no parameter `{key}`",
                help=did_you_mean(key, known) or f"known: {', '.join(sorted(known)) or 'none'}",
            )


def check_inputs(
    method: str, W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor] | None
) -> None:
    """Fail loudly on an unknown method or mismatched shapes (DiagnosticError)."""
    check_method(method)
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
    if method in FEATURE_BASED:
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


def data_free(
    method: str, W0: torch.Tensor, deltas: list[torch.Tensor], params: dict[str, Any]
) -> tuple[torch.Tensor, list[Stats]]:
    """Merges that ignore features. W0 (L, out, in), deltas C × (L, out, in)."""
    D = torch.stack([d.float() for d in deltas])  # (C, L, out, in)
    if method == "linear":
        return W0 + D.sum(0), [{} for _ in range(W0.shape[0])]
    if method == "average":
        return W0 + D.mean(0), [{} for _ in range(W0.shape[0])]
    density = float(params.get("density", default("ties", "density")))
    if not 0.0 < density <= 1.0:
        raise error(
            "merge-bad-param",
            f"`density` must be in (0, 1], got {density}",
            help="density is the share of each update kept, e.g. 0.5",
        )
    seed = int(params.get("seed", default("dare", "seed")))
    devices = [W0.device] if W0.device.type == "cuda" else []
    out = torch.empty_like(W0)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # DARE's Bernoulli masks
        for layer in range(W0.shape[0]):
            out[layer] = W0[layer] + _peft_merge(method, D[:, layer], density)
    return out, [{"density": density} for _ in range(W0.shape[0])]


# ---------------------------------------------------------------------------------- dispatch


def _gradient_fusion_method(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor], params: dict[str, Any]
) -> tuple[torch.Tensor, list[Stats]]:
    return gradient_fusion(W0, deltas, X, eps_rel=float(params.get("eps_rel", DEFAULT_RIDGE)))


def _loraclr_method(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor], params: dict[str, Any]
) -> tuple[torch.Tensor, list[Stats]]:
    return loraclr(W0, deltas, X, LoraclrConfig.from_params(params))


_FEATURE_METHODS: dict[str, Callable[..., tuple[torch.Tensor, list[Stats]]]] = {
    "gradient-fusion": _gradient_fusion_method,
    "loraclr": _loraclr_method,
}


def merge_batch(
    method: str,
    W0: torch.Tensor,
    deltas: list[torch.Tensor],
    X: list[torch.Tensor] | None,
    params: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, list[Stats]]:
    """Merge L layers of equal shape at once.

    W0 (L, out, in); deltas: C × (L, out, in); X: C × (L, n_c, in) (None for data-free
    methods). Returns W* (L, out, in) in W0's dtype and one stats dict per layer.
    """
    params = params or {}
    check_inputs(method, W0, deltas, X)  # shapes; parameter names are checked once per merge
    W0f = W0.float()
    dl = [d.to(W0f) for d in deltas]
    if method in DATA_FREE:
        W, stats = data_free(method, W0f, dl, params)
    else:
        assert X is not None
        W, stats = _FEATURE_METHODS[method](W0f, dl, [x.to(W0f) for x in X], params)
    return W.to(W0.dtype), stats


def merge_layer(
    method: str,
    W0: torch.Tensor,
    deltas: list[torch.Tensor],
    X: list[torch.Tensor] | None,
    params: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, Stats]:
    """One layer: W0 (out, in), deltas C × (out, in), X C × (n_c, in) -> (W* (out, in), stats).

    A direct caller's entry point, so the parameter names are checked here (the engine checks
    them once per merge, not per batch)."""
    check_params(method, params or {})
    if W0.dim() != 2:
        raise error(
            "merge-shape-mismatch",
            f"W0 must be (out, in), got {tuple(W0.shape)}",
            help="merge_layer takes one layer; use merge_batch for a stack",
        )
    W, stats = merge_batch(
        method,
        W0[None],
        [d[None] for d in deltas],
        None if X is None else [x[None] for x in X],
        params,
    )
    return W[0], stats[0]
