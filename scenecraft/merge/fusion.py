"""Gradient fusion: the closed-form least-squares merge of one stack of layers.

A method of its own (``gradient-fusion``) and LoRACLR's starting point, so it lives apart from
both (`scenecraft.merge.methods` dispatches, `scenecraft.merge.loraclr` refines).
"""

from __future__ import annotations

from typing import Any

import torch

from scenecraft.merge.config import DEFAULT_RIDGE

Stats = dict[str, Any]  # one layer's figures, JSON-able

# Relative ridge ε/(tr/in) of the least-squares fit. The fit only sees the concepts' own prompts;
# a ridge towards W0 keeps the base model's response to every other word (settings, relations).
# 1e-6 (numerically plain least squares) broke settings and placements in the toy-world
# benchmark (placement 0.19 with two concepts); 1e-2 kept them (0.88) and reached the own-LoRA
# identity ceiling on single-concept scenes (benchmarks/results/toyworld_eval.md).


def gradient_fusion(
    W0: torch.Tensor,
    deltas: list[torch.Tensor],
    X: list[torch.Tensor],
    ridge: float = DEFAULT_RIDGE,
    concept_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[Stats]]:
    """Closed-form gradient fusion (Mix-of-Show, solved exactly instead of 500 LBFGS steps).

    W* = argmin_W Σ_c a_c ‖X_c Wᵀ − Y_c‖²_F + ε ‖W − W0‖²_F, Y_c = X_c (W0 + ΔW_c)ᵀ,
    i.e. with W* = W0 + D:

        (Σ_c a_c X_cᵀX_c + εI) Dᵀ = Σ_c a_c X_cᵀX_c ΔW_cᵀ          (normal equations)

    solved in float64. a_c = 1 unless ``concept_weights`` (L, C) is given. The ridge is
    relative: ε = ridge · tr(Σ_c a_c X_cᵀX_c) / in, and it pulls towards W0 (input directions
    no concept excites keep the base behaviour) rather than towards 0; as ε → 0 both coincide
    with the least-squares solution. With X̃ the stacked √a_c X_c (N × in) and T̃ the stacked
    √a_c X_c ΔW_cᵀ (N × out), the solve is done in the smaller of the two spaces:

        N ≥ in:  Dᵀ = (X̃ᵀX̃ + εI_in)⁻¹ X̃ᵀT̃          N < in:  Dᵀ = X̃ᵀ (X̃X̃ᵀ + εI_N)⁻¹ T̃

    (push-through identity; text-encoder and K/V layers see far fewer rows than inputs).
    """
    L, n_out, n_in = W0.shape
    Xs, Ts = [], []
    for c, (dW, x) in enumerate(zip(deltas, X, strict=True)):
        x64 = x.double()  # (L, n_c, in)
        if concept_weights is not None:
            x64 = x64 * concept_weights[:, c].double().sqrt().view(L, 1, 1)
        Xs.append(x64)
        Ts.append(x64 @ dW.double().transpose(1, 2))  # (L, n_c, out)
    Xt, T = torch.cat(Xs, 1), torch.cat(Ts, 1)  # (L, N, in), (L, N, out)
    Dt, eps = ridge_solve(Xt, T, ridge)  # (L, in, out), (L,)
    W = W0 + Dt.transpose(1, 2).to(W0.dtype)
    form = "dual" if n_in > Xt.shape[1] else "primal"
    return W, [{"eps": float(e), "form": form} for e in eps]


def relative_ridge(ridge: float, sq_sum: torch.Tensor, n_in: int) -> torch.Tensor:
    """ε = ridge · tr(XᵀX) / in per layer, from ``sq_sum`` = ‖X‖²_F (L,): the ridge relative
    to the features' scale that gradient fusion and LoRACLR's start (and ``refine_ridge``) use."""
    return ridge * sq_sum / n_in


def ridge_solve(
    X: torch.Tensor, T: torch.Tensor, ridge: float = DEFAULT_RIDGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin_M ‖X M − T‖² + ε‖M‖² per layer, ε = ridge · tr(XᵀX) / in, in float64.

    X (L, N, in), T (L, N, out) -> M (L, in, out) and ε (L,); solved in the smaller of the two
    spaces: N ≥ in: M = (XᵀX + εI_in)⁻¹ XᵀT, N < in: M = Xᵀ (XXᵀ + εI_N)⁻¹ T."""
    X, T = X.double(), T.double()
    L, N, n_in = X.shape
    eps = relative_ridge(ridge, X.square().sum((1, 2)), n_in)  # (L,)
    eps = torch.where(eps > 0, eps, torch.full_like(eps, 1e-12))
    Xt = X.transpose(1, 2)  # (L, in, N)
    if n_in > N:
        K = X @ Xt + eps.view(L, 1, 1) * torch.eye(N, dtype=X.dtype, device=X.device)
        return Xt @ torch.linalg.solve(K, T), eps
    G = Xt @ X + eps.view(L, 1, 1) * torch.eye(n_in, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(G, Xt @ T), eps
