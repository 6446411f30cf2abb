"""Merge I/O figures on the tiny model: LoRA read time per format, cache miss vs hit, entry size.

    PYTHONPATH=. python benchmarks/merge_io.py [--out benchmarks/results/merge_io.json]

The merge itself is a plain linear sum here (W* = W0 + Σ ΔW_c) so the figures measure reading,
hashing, saving and serving the cache, not a merge method.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scenecraft.merge.api import merge
from scenecraft.merge.apply import module_weight
from scenecraft.merge.formats import read_concept_lora
from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.merge.types import ConceptLoRA
from scenecraft.plan import BaseModelSpec, ConceptSpec, MergeSpec
from scenecraft.testing import quiet_libraries, tiny_pipeline
from tests._lora_files import lora_modules, write_edlora, write_kohya_lora, write_peft_lora


@dataclass
class _Outcome:
    weights: dict[str, torch.Tensor]
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def linear_run(
    pipe: Any, concepts: list[ConceptLoRA], method: str, params: Any, reporter: Any
) -> _Outcome:
    weights: dict[str, torch.Tensor] = {}
    for concept in concepts:
        for module in concept.layers:
            w0 = module_weight(pipe, module).detach().float()
            weights[module] = weights.get(module, w0) + concept.delta(module).reshape(w0.shape)
    return _Outcome(weights)


def best_of(fn: Callable[[], Any], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/merge_io.json"))
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on a shared machine
    pipe = tiny_pipeline(0)
    index = ModuleIndex.from_pipe(pipe)
    modules = lora_modules(pipe)
    folder = Path(tempfile.mkdtemp(prefix="scenecraft-bench-"))
    files = {
        "peft": folder / "a.safetensors",
        "kohya": folder / "b.safetensors",
        "edlora": folder / "c.pth",
    }
    write_peft_lora(files["peft"], pipe, modules, rank=8, seed=1, alpha=4.0)
    write_kohya_lora(files["kohya"], pipe, modules, rank=8, seed=2, alpha=4.0)
    write_edlora(files["edlora"], pipe, modules, rank=8, seed=3, tokens=("<c>",))
    figures: dict[str, Any] = {"modules": len(modules), "rank": 8, "read_seconds": {}}
    for fmt, path in files.items():
        figures["read_seconds"][fmt] = best_of(
            lambda p=path: read_concept_lora(
                p, name="x", tokens=("<c>",), pipe_or_module_index=index
            )
        )
    spec = MergeSpec(
        base=BaseModelSpec(source="tiny"),
        concepts=tuple(
            ConceptSpec(
                name=fmt, tokens=("<c>",) if fmt == "edlora" else (f"<{fmt}>",), lora=str(p)
            )
            for fmt, p in files.items()
        ),
        method="linear",
    )
    cache = folder / "cache"
    start = time.perf_counter()
    result = merge(spec, pipe, cache_dir=cache, run=linear_run)
    figures["miss_seconds"] = time.perf_counter() - start
    figures["hit_seconds"] = best_of(lambda: merge(spec, pipe, cache_dir=cache, run=linear_run))
    assert result.path is not None
    figures["entry_bytes"] = sum(p.stat().st_size for p in result.path.iterdir())
    figures["base_unet_bytes_fp32"] = 4 * sum(p.numel() for p in pipe.unet.parameters())
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
