"""Layer-level quality figures of a merge (docs/loraclr.md, "Quality figures").

For concept c at a layer, Ŷ_c = X_c W*ᵀ, Y_c = X_c (W0 + ΔW_c)ᵀ:

    fidelity    e_c = ‖Ŷ_c − Y_c‖_F / ‖Y_c − X_c W0ᵀ‖_F      0 = exact, 1 = as if the LoRA were absent
    separation  s_c = ‖Ŷ_c − Y_c‖_F / min_{c'≠c} ‖Ŷ_c − Y_{c←c'}‖_F,  Y_{c←c'} = X_c (W0 + ΔW_c')ᵀ
                                                             < 1: closer to its own target than to
                                                             what any other LoRA does to its inputs

Both are ratios, so any normalisation of d cancels. Concepts with no LoRA at a layer have no
e_c / s_c there (NaN, left out of the aggregates). `QualityLog` aggregates per stage (mean, worst)
and per concept, with the loraclr repel-active share, into a JSON-able dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from scenecraft.merge.loraclr import compress_rows


def batch_quality(
    W: torch.Tensor, W0: torch.Tensor, deltas: list[torch.Tensor], X: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """e, s of L equal-shape layers: W, W0 (L, out, in), deltas C × (L, out, in), X C × (L, n_c, in).

    Returns two (L, C) float tensors (NaN where concept c has no update at the layer).
    """
    C, L = len(deltas), W.shape[0]
    e = torch.full((L, C), math.nan)
    s = torch.full((L, C), math.nan)
    D = (W.float() - W0.float()).transpose(1, 2)  # (L, in, out)
    for c in range(C):
        R = compress_rows(X[c].float())  # (L, k, in)
        P = R @ D  # (L, k, out) = Ŷ_c − X_c W0ᵀ
        own = R @ deltas[c].float().transpose(1, 2)  # (L, k, out) = Y_c − X_c W0ᵀ
        err = (P - own).flatten(1).norm(dim=1)  # (L,)
        effect = own.flatten(1).norm(dim=1)
        ok = effect > 1e-6 * (R @ W0.float().transpose(1, 2)).flatten(1).norm(dim=1)
        e[:, c] = torch.where(ok, err / effect.clamp_min(1e-30), math.nan).cpu()
        if C == 1:
            continue
        nearest = torch.full_like(err, math.inf)
        for c2 in range(C):
            if c2 != c:
                other = R @ deltas[c2].float().transpose(1, 2)
                nearest = torch.minimum(nearest, (P - other).flatten(1).norm(dim=1))
        s[:, c] = torch.where(ok, err / nearest.clamp_min(1e-30), math.nan).cpu()
    return e, s


def _agg(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {"mean": None, "worst": None}
    return {"mean": sum(vals) / len(vals), "worst": max(vals)}


@dataclass
class _Stage:
    layers: int = 0
    e: list[list[float]] = field(default_factory=list)  # per layer, per concept
    s: list[list[float]] = field(default_factory=list)
    repel: list[float] = field(default_factory=list)  # loraclr repel-active share per layer
    iterations: list[int] = field(default_factory=list)  # loraclr optimiser steps per layer
    solved: int = 0  # layers merged by the method (others: single concept or fallback)


class QualityLog:
    """Collects per-layer figures during a merge; `summary` gives the JSON-able dict."""

    def __init__(self, concepts: list[str]):
        self.concepts = concepts
        self.stages: dict[str, _Stage] = {}

    def stage(self, name: str) -> _Stage:
        return self.stages.setdefault(name, _Stage())

    def add(
        self,
        stage: str,
        e: torch.Tensor,
        s: torch.Tensor,
        stats: list[dict[str, Any]] | None = None,
        concept_index: list[int] | None = None,
    ) -> None:
        """e, s (L, C_batch); ``concept_index`` maps batch columns to `self.concepts`."""
        st = self.stage(stage)
        idx = concept_index if concept_index is not None else list(range(e.shape[1]))
        for layer in range(e.shape[0]):
            row_e = [math.nan] * len(self.concepts)
            row_s = [math.nan] * len(self.concepts)
            for j, c in enumerate(idx):
                row_e[c], row_s[c] = float(e[layer, j]), float(s[layer, j])
            st.e.append(row_e)
            st.s.append(row_s)
        st.layers += e.shape[0]
        for item in stats or []:
            if "repel_active" in item:
                st.repel.append(float(item["repel_active"]))
                st.iterations.append(int(item["iterations"]))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, st in self.stages.items():
            flat_e = [v for row in st.e for v in row]
            flat_s = [v for row in st.s for v in row]
            per_concept = {
                concept: {
                    "fidelity": _agg([row[c] for row in st.e]),
                    "separation": _agg([row[c] for row in st.s]),
                }
                for c, concept in enumerate(self.concepts)
            }
            entry: dict[str, Any] = {
                "layers": st.layers,
                "solved": st.solved,
                "fidelity": _agg(flat_e),
                "separation": _agg(flat_s),
                "per_concept": per_concept,
            }
            if st.repel:
                entry["repel_active"] = sum(st.repel) / len(st.repel)
                entry["mean_iterations"] = sum(st.iterations) / len(st.iterations)
            out[name] = entry
        return out
