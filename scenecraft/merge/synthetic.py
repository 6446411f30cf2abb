"""Synthetic merge problems with known conflict, for tests and benchmarks (no models needed).

`conflicting_layers` builds L layers of one shape and C concepts whose LoRAs CONFLICT:
- inputs: concept c's features lie near a subspace mixing a shared part (all concepts) and its
  own part, X_c = Z_c [√o·B_shared | √(1−o)·B_c]ᵀ + small noise (o = ``overlap``), so the
  input distributions are distinct but overlap;
- updates: ΔW_c = s · U_c V_cᵀ with V_c reading from concept c's input subspace (so a LoRA fires on
  the other concepts' inputs through the shared part) and U_c writing into a mix of a shared
  output subspace and its own one (overlapping write subspaces).
- ``shared_rows``: the first rows of every concept's set are IDENTICAL across concepts (like the
  text encoder's positions before the concept token, "<BOS> photo of a", which a causal encoder
  computes the same for every concept): there the targets disagree and no merge can match all.
Loading all LoRAs at once (linear) then adds visible crosstalk on every concept's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SyntheticLayers:
    W0: torch.Tensor  # (L, out, in)
    deltas: list[torch.Tensor]  # C × (L, out, in)
    X: list[torch.Tensor]  # C × (L, n_c, in), ragged n_c


def _orth(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=g))[0]  # (rows, cols)


def conflicting_layers(
    n_out: int,
    n_in: int,
    concepts: int,
    layers: int = 1,
    rank: int = 4,
    rows: int | tuple[int, ...] = 48,
    overlap: float = 0.5,
    effect: float = 0.3,
    seed: int = 0,
    shared_rows: int = 0,
) -> SyntheticLayers:
    """L layers × C concepts; ``rows`` per concept (an int, or one per concept for ragged sets).

    ``effect`` sets ‖ΔW_c‖_F / ‖W0‖_F; ``overlap`` in [0, 1] the share of the shared subspaces;
    ``shared_rows`` rows (≤ every n_c) are common to all concepts.
    """
    g = torch.Generator().manual_seed(seed)
    n_rows = (rows,) * concepts if isinstance(rows, int) else rows
    d = max(2, min(n_in, n_out) // 8)  # dimension of each input/output subspace
    W0 = torch.randn(layers, n_out, n_in, generator=g) / n_in**0.5
    deltas: list[torch.Tensor] = [torch.empty(0)] * concepts
    X: list[torch.Tensor] = [torch.empty(0)] * concepts
    for layer in range(layers):
        shared_in, shared_out = _orth(n_in, d, g), _orth(n_out, d, g)
        a, b = overlap**0.5, (1 - overlap) ** 0.5
        common = torch.randn(shared_rows, d, generator=g) @ shared_in.T  # (shared_rows, in)
        for c in range(concepts):
            basis_in = torch.cat([a * shared_in, b * _orth(n_in, d, g)], 1)  # (in, 2d)
            basis_out = torch.cat([a * shared_out, b * _orth(n_out, d, g)], 1)  # (out, 2d)
            x = torch.randn(n_rows[c], 2 * d, generator=g) @ basis_in.T  # (n_c, in)
            x = x + 0.05 * torch.randn(n_rows[c], n_in, generator=g)
            x[:shared_rows] = common
            down = torch.randn(rank, 2 * d, generator=g) @ basis_in.T  # (r, in)
            up = basis_out @ torch.randn(2 * d, rank, generator=g)  # (out, r)
            dW = up @ down
            dW = dW * (effect * W0[layer].norm() / dW.norm())
            if layer == 0:
                deltas[c] = torch.empty(layers, n_out, n_in)
                X[c] = torch.empty(layers, n_rows[c], n_in)
            deltas[c][layer] = dW
            X[c][layer] = x
    return SyntheticLayers(W0, deltas, X)
