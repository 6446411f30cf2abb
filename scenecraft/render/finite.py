"""Non-finite pictures: NaN or infinite latents or pixels are `non-finite-image`, never a PNG.

A LoRA whose weights are finite but huge (or float16 overflow) makes the UNet or the VAE produce
NaN/inf; cast to 8 bits that is a uniform black picture that would otherwise be written, recorded
in the manifest and skipped as up to date by every later run. `FiniteWatch` looks at the latents
after every denoising step (through the pipeline's step callback) and at the decoded pixels (the
pipeline is asked for ``output_type="np"``; the PIL images are made here exactly as diffusers
makes them), and `FiniteWatch.pictures` raises before anything of the batch is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scenecraft.diagnostics import DiagnosticError, error
from scenecraft.render.batching import ImageTask


class FiniteWatch:
    """Which images of one pipeline call went non-finite, and where (latents or pixels)."""

    def __init__(self, tasks: Sequence[ImageTask]) -> None:
        self.tasks = tasks
        self.bad: dict[int, str] = {}  # task index -> "latents at step N" or "decoded pixels"

    def on_latents(self, step: int, latents: Any) -> None:
        """Called with the latents after denoising step ``step`` (1-based)."""
        if not isinstance(latents, torch.Tensor) or latents.ndim == 0:
            return
        finite = torch.isfinite(latents.detach().flatten(1)).all(dim=1).tolist()
        if len(finite) != len(self.tasks):  # a pipeline with another batch layout: any = all
            finite = [all(finite)] * len(self.tasks)
        for i, ok in enumerate(finite):
            if not ok:
                self.bad.setdefault(i, f"latents after step {step}")

    def pictures(self, images: Any) -> list[Any]:
        """PIL images of a call's output (numpy floats in [0, 1], or PIL images as they come);
        `non-finite-image` when any image or its latents held NaN/inf."""
        if not isinstance(images, list) or (images and not hasattr(images[0], "save")):
            import numpy as np

            array = np.asarray(images)
            for i, ok in enumerate(np.isfinite(array.reshape(len(array), -1)).all(axis=1)):
                if not ok:
                    self.bad.setdefault(i, "decoded pixels")
            self.check()
            return to_pil(array)
        self.check()
        return images

    def check(self) -> None:
        if self.bad:
            raise non_finite(self.tasks, self.bad)


def to_pil(array: Any) -> list[Any]:
    """diffusers' ``numpy_to_pil``: floats in [0, 1], (n, h, w, c), to 8-bit PIL images."""
    import numpy as np
    from PIL import Image

    pixels = (np.asarray(array) * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p.squeeze(-1), mode="L") for p in pixels]
    return [Image.fromarray(p) for p in pixels]


def non_finite(tasks: Sequence[ImageTask], bad: dict[int, str]) -> DiagnosticError:
    first = min(bad)
    task = tasks[first]
    job = task.job
    where = f"scene `{job.scene}` seed {task.seed}"
    if job.storyboard is not None:
        where = f"storyboard `{job.storyboard}` panel {(job.panel or 0) + 1} ({where})"
    others = [f"also {tasks[i].job.scene} seed {tasks[i].seed}: {bad[i]}" for i in sorted(bad)[1:]]
    return error(
        "non-finite-image",
        f"the picture of {where} (job {job.id[:10]}) has NaN or infinite values",
        notes=(
            f"found in the {bad[first]}",
            *others,
            "nothing was written for this batch; images finished before are kept",
        ),
        help="a LoRA or merge with extreme weights does this (lower its weight or use another "
        "checkpoint); in float16, try `--dtype bfloat16` or `--dtype float32`",
    )
