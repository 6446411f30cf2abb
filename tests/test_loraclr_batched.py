"""LoRACLR's batched loss (one GEMM for every concept's residual, cross terms as mat-vecs)
gives today's merge: the per-concept loss it replaced, kept here as the reference."""

from __future__ import annotations

import pytest
import torch

import scenecraft.merge.loraclr as lc
from scenecraft.merge.config import Loraclr, parse
from scenecraft.merge.methods import merge_batch
from scenecraft.merge.synthetic import SyntheticLayers, conflicting_layers
from tests._fixtures_merge_engine import one_thread_fixture  # noqa: F401  (autouse)

TOL = 1e-5  # max |W_new − W_old| relative to max |ΔW_c| (fp32 summation order only)


def _per_concept_loss(
    V: torch.Tensor, Dl: torch.Tensor, k: lc._Ours, cfg: Loraclr
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss as it was before batching: one residual GEMM and one einsum per concept."""
    C, L = Dl.shape[0], Dl.shape[1]
    pos, neg, mse = V.new_zeros(L), V.new_zeros(L), V.new_zeros(L)
    active = torch.zeros(L, C, dtype=torch.bool)
    others = ~torch.eye(C, dtype=torch.bool)
    for c in range(C):
        a, b = k.rows[c], k.rows[c + 1]
        Z = k.A[:, a:b] + k.P[:, a:b] @ V.transpose(1, 2)
        z2 = Z.square().sum((1, 2))
        pos = pos + z2 / k.N2[:, c]
        mse = mse + z2 / k.Y2[:, c]
        if C == 1:
            continue
        Rc_dW = torch.stack([k.R[c] @ Dl[j].transpose(1, 2) for j in range(C)])
        ip = torch.einsum("lko,jlko->lj", Z, Rc_dW)
        cross = ip[:, c : c + 1] - ip
        d2 = (z2[:, None] + 2 * cross + k.H[:, c, :]) / k.N2[:, c : c + 1]
        d = d2[:, others[c]].clamp_min(1e-12).sqrt()
        gap = torch.relu(k.margin[:, c, others[c]] - d).max(1).values
        neg = neg + gap.square()
        active[:, c] = gap > 0
    D2 = (k.D0n2 + 2 * (k.D0Q * V).sum((1, 2)) + V.square().sum((1, 2))).clamp_min(0)
    reg = D2.sqrt() / k.reg_scale
    pos = pos + k.ridge * D2
    loss = cfg.lambda_con * (pos + neg) / C + cfg.lambda_mse * mse / C + cfg.lambda_reg * reg
    return loss, active


@pytest.fixture(scope="module")
def layers() -> SyntheticLayers:
    return conflicting_layers(
        40, 24, concepts=5, layers=3, rows=(6, 9, 7, 11, 8), seed=7, shared_rows=3
    )


@pytest.mark.parametrize("cross", ["precomputed", "M-trick"])
@pytest.mark.parametrize("params", [{}, {"refine_ridge": True}, {"patience": 0, "iterations": 30}])
def test_batched_loss_gives_todays_merge(
    layers: SyntheticLayers, monkeypatch: pytest.MonkeyPatch, cross: str, params: dict
) -> None:
    p = parse("loraclr", params)
    if cross == "M-trick":
        monkeypatch.setattr(lc, "CROSS_BUDGET", 0)
    W_new, st_new = merge_batch(p, layers.W0, layers.deltas, layers.X)
    monkeypatch.setattr(lc, "_ours_loss", _per_concept_loss)
    W_old, st_old = merge_batch(p, layers.W0, layers.deltas, layers.X)
    scale = torch.stack(layers.deltas).abs().max()
    assert float((W_new - W_old).abs().max() / scale) <= TOL
    assert [s["iterations"] for s in st_new] == [s["iterations"] for s in st_old]
    assert [s["best_iter"] for s in st_new] == [s["best_iter"] for s in st_old]
    assert any(s["iterations"] > 3 for s in st_new)  # the steps ran, not just the start
