"""LoRACLR (Simsar et al., CVPR 2025, arXiv 2412.09622): contrastive merging of concept LoRAs.

Per layer, W* = W0 + D with Ŷ_c = X_c (W0 + D)ᵀ and (docs/loraclr.md, "LoRACLR: our recipe")

    L_pos = (1/C) Σ_c d(Ŷ_c, Y_c)²                           attract: own target
    L_neg = (1/C) Σ_c max(0, m − min_{c'≠c} d(Ŷ_c, Y_c'))²    repel: nearest other target
    L     = λ_con (L_pos + L_neg) + λ_mse L_mse + λ_reg L_reg

Two recipes share that objective:

``recipe="ours"`` (default)
  * scale-free distance: d(Ŷ_c, Q) = ‖Ŷ_c − Q‖_F / N_c with N_c = ‖Y_c − X_c W0ᵀ‖_F = ‖X_c ΔW_cᵀ‖_F,
    the size of concept c's own LoRA effect on its own inputs; so d(Ŷ_c, Y_c) is exactly the
    fidelity error e_c, d = 1 means "as far as the base model", and one margin means the same
    at every layer. (A concept with no LoRA at the layer uses N_c = ρ ‖Y_c‖_F, ρ the mean
    relative effect size of the concepts that have one.)
  * the other concepts' targets are taken on concept c's OWN inputs, Y_{c←c'} = X_c (W0 + ΔW_c')ᵀ
    ("what c' would do to my features"), so feature sets may be ragged (n_c differ) and every
    distance depends on X_c only through X_cᵀX_c: X_c is compressed once to R_c (k × in,
    k = min(n_c, in), R_cᵀR_c = X_cᵀX_c) by a QR factorisation;
  * relative margins: L_neg = (1/C) Σ_c max_{c'≠c} max(0, m_cc' − d(Ŷ_c, Y_{c←c'}))² with
    m_cc' = m · d(Y_c, Y_{c←c'}): "keep at least a share m of the natural distance between the
    two targets". A fixed margin contradicts the attract term whenever two targets lie closer
    than m (a concept without a LoRA at the layer has its target at d = 1 from every other);
    with m_cc' ≤ d(Y_c, Y_{c←c'}) the exact target always satisfies the repel term. m = 1
    (default) makes it active wherever the compromise leans towards another concept;
  * L_mse = (1/C) Σ_c ‖Ŷ_c − Y_c‖²_F / ‖Y_c‖²_F, L_reg = ‖D‖_F / mean_c ‖ΔW_c‖_F;
  * D starts at the closed-form minimiser of L_pos (gradient fusion with weights 1/N_c²);
    Adam then refines D inside the union row space of the features (D = D0 + V Qᵀ; the loss
    does not see other directions), in steps measured in the typical |ΔW| entry; each layer
    stops on a loss plateau; the best-loss iterate of every layer is kept; fp32 throughout;
  * ``refine_ridge``: L_pos also carries the start's ridge ε‖D‖² (ε as gradient fusion
    computes it from the weighted rows), so the steps keep it instead of undoing it in weakly
    excited input directions (docs/loraclr.md); by default on when the merged concepts' class
    nouns are all known and distinct (the engine decides: `engine.refine_ridge_for`).

``recipe="reference"`` (the authors' weight_fusion.py, for comparison)
  D = 0 at start, d = flattened L2 ‖P − Q‖_F over the whole set, Y_c' on concept c''s own
  inputs X_c' (so feature sets are cut to a common row count by a seeded subsample),
  L_mse = mean over all elements of (Ŷ − Y)², L_reg = ‖D‖_F, AdamW lr 1e-4, weight decay 1e-4,
  margin 0.5, λ = (1, 0.1, 1e-3), 50 iterations, best iterate; fp32 here (the reference runs
  under fp16 autocast, whose overflow we do not reproduce).

Layers of equal shape are optimised together: D is (L, out, in), losses are per layer and summed;
Adam is element-wise and every layer keeps its own early-stopping clock (a stopped layer is
frozen), so each layer follows the path it would follow alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scenecraft.merge.config import Loraclr
from scenecraft.merge.fusion import Stats, gradient_fusion, relative_ridge

# The parameters are `scenecraft.merge.config.Loraclr` (their one home: types, ranges, defaults,
# the reference preset, the rule between `recipe` and `refine_ridge`); ``refine_ridge`` unset
# (None) is decided per merge by the engine (`engine.refine_ridge_for`) before it gets here.
REL_TOL = 1e-4  # "improvement" means the total loss drops by more than this fraction


# ---------------------------------------------------------------------------------- helpers


def compress_rows(x: torch.Tensor) -> torch.Tensor:
    """(L, n, in) -> (L, k, in), k = min(n, in), with RᵀR = XᵀX (QR in float64)."""
    if x.shape[1] <= x.shape[2]:
        return x
    return torch.linalg.qr(x.double(), mode="r")[1].to(x.dtype)


# --------------------------------------------------------------------------------- ours

CROSS_BUDGET = 2**28  # elements of the precomputed R_c ΔW_c'ᵀ products (1 GiB fp32); else M-trick


@dataclass
class _Ours:
    """Constants of the scale-free objective for L layers (shapes in comments)."""

    P: list[torch.Tensor]  # C × (L, k_c, K): R_c Q, rows in the union row-space basis Q (L, in, K)
    A: list[torch.Tensor]  # C × (L, k_c, out): R_c (D0 − ΔW_c)ᵀ, the residual at V = 0
    S: list[torch.Tensor] | None  # C × (C, L, k_c, out): R_c ΔW_c'ᵀ (None: too big, use M-trick)
    R: list[torch.Tensor]  # C × (L, k_c, in)
    Q: torch.Tensor  # (L, in, K) orthonormal basis of the union row space of the R_c
    N2: torch.Tensor  # (L, C) N_c², squared normaliser of d
    Y2: torch.Tensor  # (L, C) ‖Y_c‖²
    H: torch.Tensor  # (L, C, C) ‖R_c (ΔW_c − ΔW_c')ᵀ‖²
    margin: torch.Tensor  # (L, C, C) m_cc' = m · d(Y_c, Y_{c←c'}) = m √H / N_c
    D0Q: torch.Tensor  # (L, out, K) D0 Q, for ‖D‖_F
    D0n2: torch.Tensor  # (L,) ‖D0‖²_F
    reg_scale: torch.Tensor  # (L,) mean_c ‖ΔW_c‖_F
    ridge: torch.Tensor  # (L,) ε of the attract term's ridge (0 without ``refine_ridge``)


def _normalisers(E2: torch.Tensor, Y2: torch.Tensor) -> torch.Tensor:
    """N_c² = ‖X_c ΔW_cᵀ‖², or ρ²‖Y_c‖² for concepts without an update at the layer. (L, C)."""
    touching = E2 > 1e-12 * Y2
    rel = torch.where(touching, E2 / Y2, torch.zeros_like(E2))
    rho2 = rel.sum(1) / touching.sum(1).clamp_min(1)  # (L,)
    rho2 = torch.where(touching.any(1), rho2, torch.ones_like(rho2))
    return torch.where(touching, E2, rho2[:, None] * Y2).clamp_min(1e-30)


def _effect_sizes(
    W0: torch.Tensor, Dl: torch.Tensor, R: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """‖X_c ΔW_cᵀ‖² and ‖Y_c‖², each (L, C)."""
    E2 = torch.stack(
        [(r @ d.transpose(1, 2)).square().sum((1, 2)) for r, d in zip(R, Dl, strict=True)], 1
    )
    Y2 = torch.stack(
        [(r @ (W0 + d).transpose(1, 2)).square().sum((1, 2)) for r, d in zip(R, Dl, strict=True)], 1
    )
    return E2, Y2.clamp_min(1e-30)


def _ours_setup(
    W0: torch.Tensor,
    Dl: torch.Tensor,
    R: list[torch.Tensor],
    D0: torch.Tensor,
    margin: float,
    ridge_rel: float = 0.0,
) -> _Ours:
    """The constants; ``ridge_rel`` > 0 (``refine_ridge``) adds ε‖D‖² to L_pos with ε relative
    to the trace of Σ_c X_cᵀX_c / N_c², as the start's fusion computes it, so the start is the
    exact minimiser of L_pos + ridge and the steps trade it only against the other terms."""
    C, L = Dl.shape[0], Dl.shape[1]
    # union row space of all concepts' features: D is only ever seen through X_c Dᵀ
    Q = torch.linalg.qr(torch.cat(R, dim=1).transpose(1, 2).double())[0].float()  # (L, in, K)
    k_max, n_out = max(r.shape[1] for r in R), W0.shape[1]
    keep_S = C * C * L * k_max * n_out <= CROSS_BUDGET
    E2, Y2 = torch.zeros(L, C, device=W0.device), torch.zeros(L, C, device=W0.device)
    H = torch.zeros(L, C, C, device=W0.device)
    S: list[torch.Tensor] = []
    for c in range(C):
        Sc = torch.stack([R[c] @ Dl[j].transpose(1, 2) for j in range(C)])  # (C, L, k, out)
        E2[:, c] = Sc[c].square().sum((1, 2))
        Y2[:, c] = (Sc[c] + R[c] @ W0.transpose(1, 2)).square().sum((1, 2))
        H[:, c, :] = (Sc[c][None] - Sc).square().sum((2, 3)).T
        if keep_S:
            S.append(Sc)
    Y2 = Y2.clamp_min(1e-30)
    N2 = _normalisers(E2, Y2)
    # ‖X̃‖²_F of the start's weighted rows √(1/N_c²) X_c, stacked over concepts: (L,)
    sq_sum = torch.stack([r.square().sum((1, 2)) / N2[:, c] for c, r in enumerate(R)]).sum(0)
    return _Ours(
        P=[r @ Q for r in R],
        A=[R[c] @ (D0 - Dl[c]).transpose(1, 2) for c in range(C)],
        S=S if keep_S else None,
        R=R,
        Q=Q,
        N2=N2,
        Y2=Y2,
        H=H,
        margin=margin * (H / N2[:, :, None]).sqrt(),
        D0Q=D0 @ Q,
        D0n2=D0.square().sum((1, 2)),
        reg_scale=Dl.flatten(2).norm(dim=2).mean(0).clamp_min(1e-12),
        ridge=relative_ridge(ridge_rel, sq_sum, W0.shape[2]),
    )


def _ours_loss(
    V: torch.Tensor, Dl: torch.Tensor, k: _Ours, cfg: Loraclr
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer loss (L,) and repel-active mask (L, C); D = D0 + V Qᵀ, V (L, out, K)."""
    C, L = Dl.shape[0], Dl.shape[1]
    pos, neg, mse = V.new_zeros(L), V.new_zeros(L), V.new_zeros(L)
    active = torch.zeros(L, C, dtype=torch.bool, device=V.device)
    others = ~torch.eye(C, dtype=torch.bool, device=V.device)
    for c in range(C):
        Z = k.A[c] + k.P[c] @ V.transpose(1, 2)  # (L, k, out) = Ŷ_c − Y_c in compressed rows
        z2 = Z.square().sum((1, 2))  # (L,)
        pos = pos + z2 / k.N2[:, c]
        mse = mse + z2 / k.Y2[:, c]
        if C == 1:
            continue
        # ‖Ŷ_c − Y_{c←c'}‖² = ‖Z‖² + 2⟨Z, R_c (ΔW_c − ΔW_c')ᵀ⟩ + H[c, c']
        if k.S is not None:
            ip = torch.einsum("lko,jlko->lj", Z, k.S[c])  # (L, C) ⟨Z, R_c ΔW_jᵀ⟩
        else:
            M = Z.transpose(1, 2) @ k.R[c]  # (L, out, in); ⟨Z, R_c Δᵀ⟩ = ⟨Zᵀ R_c, Δ⟩
            ip = torch.einsum("loi,jloi->lj", M, Dl)
        cross = ip[:, c : c + 1] - ip
        d2 = (z2[:, None] + 2 * cross + k.H[:, c, :]) / k.N2[:, c : c + 1]  # (L, C)
        d = d2[:, others[c]].clamp_min(1e-12).sqrt()  # (L, C-1) d(Ŷ_c, Y_{c←c'})
        gap = torch.relu(k.margin[:, c, others[c]] - d).max(1).values  # (L,) worst violation
        neg = neg + gap.square()
        active[:, c] = gap > 0
    D2 = (k.D0n2 + 2 * (k.D0Q * V).sum((1, 2)) + V.square().sum((1, 2))).clamp_min(0)  # ‖D‖²
    reg = D2.sqrt() / k.reg_scale
    pos = pos + k.ridge * D2  # refine_ridge: the start's ridge (else 0)
    loss = cfg.lambda_con * (pos + neg) / C + cfg.lambda_mse * mse / C + cfg.lambda_reg * reg
    return loss, active


def _loraclr_ours(
    W0: torch.Tensor, Dl: torch.Tensor, X: list[torch.Tensor], cfg: Loraclr
) -> tuple[torch.Tensor, list[Stats]]:
    L = W0.shape[0]
    R = [compress_rows(x.float()) for x in X]  # C × (L, k_c, in)
    if cfg.init == "zero":
        D0 = torch.zeros_like(W0)
    else:
        E2, Y2 = _effect_sizes(W0, Dl, R)
        weights = 1.0 / _normalisers(E2, Y2) if cfg.init == "gradient-fusion" else None
        W_init, _ = gradient_fusion(W0, list(Dl.unbind(0)), R, cfg.ridge, concept_weights=weights)
        D0 = W_init - W0
    k = _ours_setup(W0, Dl, R, D0, cfg.margin, cfg.ridge if cfg.refine_ridge else 0.0)
    K = k.P[0].shape[2]
    sigma = Dl.square().mean((2, 3)).mean(0).sqrt().clamp_min(1e-12).view(L, 1, 1)
    U = torch.zeros(L, W0.shape[1], K, device=W0.device, requires_grad=True)
    opt = torch.optim.AdamW([U], lr=cfg.lr, weight_decay=cfg.weight_decay)
    V_best, stats = _optimise(U, lambda: sigma * U, lambda V: _ours_loss(V, Dl, k, cfg), opt, cfg)
    return D0 + V_best @ k.Q.transpose(1, 2), stats


# ---------------------------------------------------------------------------- reference


def _equal_rows(X: list[torch.Tensor], seed: int) -> torch.Tensor:
    """Stack ragged feature sets (C × (L, n_c, in)) to (C, L, n, in), n = min n_c, seeded subsample."""
    n = min(x.shape[1] for x in X)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for x in X:
        if x.shape[1] > n:
            keep = torch.randperm(x.shape[1], generator=gen)[:n].sort().values.to(x.device)
            x = x[:, keep]
        rows.append(x)
    return torch.stack(rows)


def _reference_loss(
    D: torch.Tensor, Xs: torch.Tensor, Y: torch.Tensor, W0: torch.Tensor, cfg: Loraclr
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer loss (L,) and repel-active mask (L, C) of the reference objective."""
    C, L = Xs.shape[0], Xs.shape[1]
    Yhat = Xs @ (W0 + D).transpose(1, 2)[None]  # (C, L, n, out)
    d = torch.stack([(Yhat[c][None] - Y).flatten(2).norm(dim=2) for c in range(C)])  # (C, C', L)
    diag = torch.eye(C, dtype=torch.bool, device=D.device)
    pos = d[diag].square().mean(0)  # (L,)
    if C > 1:
        nearest = d.masked_fill(diag[:, :, None], float("inf")).min(1).values  # (C, L)
        gap = torch.relu(cfg.margin - nearest)
    else:
        gap = torch.zeros(C, L, device=D.device)
    neg = gap.square().mean(0)
    mse = (Yhat - Y).square().mean((0, 2, 3))
    reg = D.flatten(1).norm(dim=1)
    loss = cfg.lambda_con * (pos + neg) + cfg.lambda_mse * mse + cfg.lambda_reg * reg
    return loss, (gap > 0).T


def _loraclr_reference(
    W0: torch.Tensor, Dl: torch.Tensor, X: list[torch.Tensor], cfg: Loraclr
) -> tuple[torch.Tensor, list[Stats]]:
    Xs = _equal_rows([x.float() for x in X], cfg.seed)  # (C, L, n, in)
    Y = Xs @ (W0[None] + Dl).transpose(2, 3)  # (C, L, n, out)
    if cfg.init == "zero":
        D0 = torch.zeros_like(W0)
    else:
        D0 = gradient_fusion(W0, list(Dl.unbind(0)), list(Xs.unbind(0)), cfg.ridge)[0] - W0
    U = torch.zeros_like(W0, requires_grad=True)
    opt = torch.optim.AdamW([U], lr=cfg.lr, weight_decay=cfg.weight_decay)
    return _optimise(U, lambda: D0 + U, lambda D: _reference_loss(D, Xs, Y, W0, cfg), opt, cfg)


# ---------------------------------------------------------------------------- optimiser


def _optimise(
    U: torch.Tensor, make_D: Any, loss_fn: Any, opt: torch.optim.Optimizer, cfg: Loraclr
) -> tuple[torch.Tensor, list[Stats]]:
    """Adam(W) loop shared by both recipes, every layer on its own clock.

    ``U`` (L, …) is the optimised variable, ``make_D()`` the iterate ``loss_fn`` takes. A layer
    stops when its loss has not dropped by ``rel_tol`` for ``patience`` steps (it is frozen
    while the others go on), so a batch follows the same paths as layers run one by one. The
    best-loss iterate of every layer is returned with per-layer stats.

    Long because it is one optimisation loop whose per-layer state (stall counts, best iterate,
    frozen layers) every step reads and writes.
    """
    L = U.shape[0]
    done = torch.zeros(L, dtype=torch.bool, device=U.device)
    stall = torch.zeros(L, dtype=torch.long, device=U.device)
    steps = torch.zeros(L, dtype=torch.long, device=U.device)
    best_iter = torch.zeros(L, dtype=torch.long, device=U.device)
    active_sum = torch.zeros(L, device=U.device)
    ref = torch.full((L,), float("inf"), device=U.device)  # loss at the last real improvement
    best_D: torch.Tensor | None = None
    best_loss = torch.full((L,), float("inf"), device=U.device)
    init_loss = best_loss
    for it in range(cfg.iterations + 1):
        D = make_D()
        loss, active = loss_fn(D)  # (L,), (L, C)
        with torch.no_grad():
            live, lv = ~done, loss.detach()
            if it == 0:
                init_loss, best_D = lv.clone(), D.detach().clone()
            active_sum += torch.where(live, active.float().mean(1), 0.0)
            steps += live.long()
            better = live & (lv < best_loss)
            best_loss = torch.where(better, lv, best_loss)
            assert best_D is not None
            best_D[better] = D.detach()[better]
            best_iter[better] = it
            improved = live & ((it == 0) | (lv < ref - REL_TOL * ref.abs()))
            ref = torch.where(improved, lv, ref)
            stall = torch.where(improved, 0, stall + 1)
            if cfg.patience > 0:
                done |= stall >= cfg.patience
            if it == cfg.iterations:
                done[:] = True
        if bool(done.all()):
            break
        frozen = done.clone()
        kept = U.detach()[frozen].clone()
        opt.zero_grad(set_to_none=True)
        loss[~frozen].sum().backward()
        opt.step()
        with torch.no_grad():
            U[frozen] = kept
    assert best_D is not None
    stats = [
        {
            "recipe": cfg.recipe,
            "iterations": int(steps[layer]) - 1,
            "loss_init": float(init_loss[layer]),
            "loss_best": float(best_loss[layer]),
            "best_iter": int(best_iter[layer]),
            "repel_active": float(active_sum[layer] / steps[layer]),
        }
        for layer in range(L)
    ]
    return best_D, stats


def loraclr(
    W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor], cfg: Loraclr
) -> tuple[torch.Tensor, list[Stats]]:
    """Merge L equal-shape layers: W0 (L, out, in), deltas C × (L, out, in), X C × (L, n_c, in).

    Returns W* (L, out, in) and per-layer stats (iterations, losses, best iterate, share of
    (step, concept) pairs whose repel term was active).
    """
    Dl = torch.stack([d.float() for d in deltas])  # (C, L, out, in)
    W0 = W0.float()
    with torch.enable_grad():
        if cfg.recipe == "reference":
            D, stats = _loraclr_reference(W0, Dl, X, cfg)
        else:
            D, stats = _loraclr_ours(W0, Dl, X, cfg)
    return W0 + D, stats
