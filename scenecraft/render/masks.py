"""Region boxes as token masks: each UNet level's grid, and how much of each cell a box covers.

masks_for([[(0, 0, 0.5, 1), None]], h, w)   # (B, R, h*w): the share of each token in a box
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the picture


def token_grid(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """(h, w) of a UNet level with ``tokens`` image tokens: the latent downsampled by 2^k
    (ceil, as stride-2 convolutions with padding do)."""
    height, width = latent_hw
    for k in range(8):
        h, w = math.ceil(height / 2**k), math.ceil(width / 2**k)
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} tokens match no downsampling of a {height}x{width} latent")


def coverage(box: Box, h: int, w: int) -> torch.Tensor:
    """(h, w): the share of each token cell that ``box`` covers, in [0, 1]."""
    x0, y0, x1, y1 = box

    def axis(lo: float, hi: float, n: int) -> torch.Tensor:
        edges = torch.arange(n + 1, dtype=torch.float64) / n
        inside = torch.minimum(edges[1:], torch.tensor(hi)) - torch.maximum(
            edges[:-1], torch.tensor(lo)
        )
        return (inside.clamp(min=0) * n).float()  # (n,)

    return axis(y0, y1, h)[:, None] * axis(x0, x1, w)[None, :]


def masks_for(boxes: Sequence[Sequence[Box | None]], h: int, w: int) -> torch.Tensor:
    """(B, R, h*w) coverage masks; a missing region (None) is all zero."""
    out = torch.zeros(len(boxes), max((len(b) for b in boxes), default=0), h * w)
    for i, image in enumerate(boxes):
        for r, box in enumerate(image):
            if box is not None:
                out[i, r] = coverage(box, h, w).flatten()
    return out
