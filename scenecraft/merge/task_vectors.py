"""TIES, DARE, DARE-TIES and magnitude pruning over a whole stack of layers at once.

The same results as ``peft.utils.merge_utils`` (``ties``, ``dare_linear``, ``dare_ties``,
``magnitude_prune`` with weights 1 and majority sign method ``total``), tested to 1e-6 in
tests/test_task_vectors.py, at the cost of one selection per task tensor instead of PEFT's
``topk`` (a partial sort of half the tensor on CPU) and without a Python loop over layers.

Input: deltas D (C, L, out, in), the C concepts' task tensors for L layers of one shape.
Each (concept, layer) pair is one PEFT task tensor.

Magnitude pruning keeps the k = int(density · numel) entries of largest magnitude. The k-th
largest magnitude t is found with ``kthvalue`` (a selection, not a sort); the mask is |x| ≥ t.
That keeps exactly k entries unless several entries share the magnitude t. PEFT's ``topk`` then
keeps an implementation-chosen k of them; where that happens with t > 0 the tensor falls back to
PEFT's own ``topk`` call, so the kept set is PEFT's. Where t = 0 the extra entries kept are
zeros, which change neither a sum nor TIES' sign vote (sign 0 matches no elected sign).

DARE draws its Bernoulli masks in PEFT's order (layer by layer, concept by concept): one draw of
shape (L, C, out, in) gives the same numbers as L·C successive draws on CPU (the generator is
consumed element by element), tested against PEFT with the same seed.
"""

from __future__ import annotations

import torch


def magnitude_mask(D: torch.Tensor, density: float) -> torch.Tensor | None:
    """Keep-mask of PEFT's ``magnitude_based_pruning`` for every (concept, layer) tensor of
    D (C, L, out, in): bool of D's shape, or None where density ≥ 1 (PEFT prunes nothing)."""
    if density >= 1:
        return None
    C, L = D.shape[:2]
    flat = D.reshape(C * L, -1)
    n = flat.shape[1]
    k = int(density * n)
    if k == 0:
        return torch.zeros_like(D, dtype=torch.bool)
    mags = flat.abs()
    thr = kth_largest(mags, k)  # (C·L, 1)
    mask = mags >= thr
    tied = ((mask.sum(1) != k) & (thr[:, 0] > 0)).nonzero().flatten().tolist()
    for r in tied:  # magnitudes tied at the threshold: PEFT's topk decides which stay
        row = torch.zeros(n, dtype=torch.bool, device=D.device)
        row[torch.topk(mags[r], k=k, largest=True).indices] = True
        mask[r] = row
    return mask.reshape(D.shape)


SAMPLE = 2**14  # entries per row the bracket of the k-th largest is estimated from


def kth_largest(mags: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of every row of mags (R, n), (R, 1): exactly ``kthvalue``'s.

    A strided sample of each row brackets the k-th largest between two of its order
    statistics; entries above the bracket are counted and the few inside it are selected
    from with ``kthvalue``, so the full rows are only compared, never selected from. A row
    whose bracket misses (the count says so) takes ``kthvalue`` on the whole row."""
    R, n = mags.shape
    if n <= 8 * SAMPLE:
        return mags.kthvalue(n - k + 1, dim=1, keepdim=True).values
    sample = mags[:, :: n // SAMPLE].sort(dim=1).values  # (R, s), ascending
    s = sample.shape[1]
    pos = (1 - k / n) * s  # where the k-th largest sits in the sorted sample
    slack = 4 * (s * (k / n) * (1 - k / n)) ** 0.5 + 2  # ~4 standard deviations of that position
    lo = sample[:, max(0, int(pos - slack)) : max(0, int(pos - slack)) + 1]
    hi = sample[:, min(s - 1, int(pos + slack)) : min(s - 1, int(pos + slack)) + 1]
    above = (mags > hi).sum(1)  # (R,)
    out = torch.empty(R, 1, dtype=mags.dtype, device=mags.device)
    for r in range(R):
        cand = mags[r][(mags[r] >= lo[r]) & (mags[r] <= hi[r])]
        need = k - int(above[r])  # how many of the bracket's entries are among the top k
        if 1 <= need <= cand.numel():
            out[r] = cand.kthvalue(cand.numel() - need + 1).values
        else:  # the bracket missed: select on the whole row
            out[r] = mags[r].kthvalue(n - k + 1).values
    return out


def _disjoint_merge(T: torch.Tensor) -> torch.Tensor:
    """TIES' sign election (method ``total``) and disjoint mean over dim 0 of T (C, ...)."""
    majority = torch.where(T.sum(0) >= 0, 1.0, -1.0).to(T.dtype)
    agree = T.sign() == majority
    kept = torch.where(agree, T, torch.zeros((), dtype=T.dtype, device=T.device)).sum(0)
    return kept / torch.clamp(agree.sum(0), min=1.0)


def _magnitude_pruned(D: torch.Tensor, density: float) -> torch.Tensor:
    mask = magnitude_mask(D, density)
    return D if mask is None else D * mask


def _dare_pruned(D: torch.Tensor, density: float) -> torch.Tensor:
    """PEFT's ``random_pruning`` with rescale, masks drawn layer-major as PEFT's loop does."""
    if density >= 1:
        return D
    C, L = D.shape[:2]
    probs = torch.full((L, C, *D.shape[2:]), density, dtype=D.dtype, device=D.device)
    mask = torch.bernoulli(probs).transpose(0, 1)  # (C, L, out, in)
    return D * mask / density


def merge_task_vectors(method: str, D: torch.Tensor, density: float) -> torch.Tensor:
    """Merged task vector (L, out, in) of D (C, L, out, in) by ``method`` (ties, dare,
    dare-ties, magnitude-prune). DARE draws from torch's global generator: seed it first."""
    if method == "ties":
        return _disjoint_merge(_magnitude_pruned(D, density))
    if method == "magnitude-prune":
        return _magnitude_pruned(D, density).sum(0)
    if method == "dare":
        return _dare_pruned(D, density).sum(0)
    if method == "dare-ties":
        return _disjoint_merge(_dare_pruned(D, density))
    raise ValueError(f"not a task-vector method: {method}")
