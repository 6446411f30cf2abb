"""Session fixtures for the merge-engine tests: the tiny pipeline and random concept LoRAs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from scenecraft.merge.types import ConceptLoRA, LoRALayer
from scenecraft.testing import quiet_libraries, tiny_pipeline


def linear_paths(pipe: Any, component: str, needle: str = "") -> list[str]:
    """Component-prefixed paths of the Linear modules of ``component`` containing ``needle``."""
    root = getattr(pipe, component)
    return [
        f"{component}.{name}"
        for name, m in root.named_modules()
        if isinstance(m, torch.nn.Linear) and needle in name
    ]


def random_concept(
    pipe: Any, name: str, token: str, paths: list[str], rank: int = 4, seed: int = 0
) -> ConceptLoRA:
    """A ConceptLoRA with random rank-``rank`` updates on ``paths`` and a new token embedding."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for path in paths:
        component, _, sub = path.partition(".")
        w = getattr(pipe, component).get_submodule(sub).weight
        out_f, in_f = w.shape[0], w.shape[1]
        up = torch.randn(out_f, rank, generator=g) * 0.2
        down = torch.randn(rank, in_f, generator=g) / in_f**0.5
        layers[path] = LoRALayer(path, up, down, alpha=float(rank))
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    emb = {"text_encoder": {token: torch.randn(1, dim, generator=g) * 0.02}}
    return ConceptLoRA(name, (token,), layers, 1.0, emb, class_noun="man")


@pytest.fixture(scope="session", name="engine_pipe")
def engine_pipe_fixture() -> Any:
    """The tiny SD pipeline for engine tests (run_merge leaves its weights unchanged)."""
    quiet_libraries()
    return tiny_pipeline(0)


@pytest.fixture(scope="session", name="engine_concepts")
def engine_concepts_fixture(engine_pipe: Any) -> list[ConceptLoRA]:
    """Three concepts: two share text-encoder q/v/fc and UNet layers, one has a single layer."""
    te = [
        p
        for p in linear_paths(engine_pipe, "text_encoder")
        if p.endswith(("q_proj", "v_proj", "fc1", "fc2"))
    ]
    kv = [p for p in linear_paths(engine_pipe, "unet", "attn2") if p.endswith(("to_k", "to_v"))]
    spatial = [p for p in linear_paths(engine_pipe, "unet", "attn1") if p.endswith("to_q")]
    a = random_concept(engine_pipe, "ziggy", "<ziggy>", te + kv + spatial, seed=1)
    b = random_concept(engine_pipe, "rex", "<rex>", te + kv + spatial, seed=2)
    solo = "text_encoder.encoder.layers.0.self_attn.k_proj"
    c = random_concept(engine_pipe, "solo", "<solo>", [solo], seed=3)
    return [a, b, c]


@pytest.fixture(scope="module", name="one_thread", autouse=True)
def one_thread_fixture() -> Iterator[None]:
    """Small problems: one thread is ~30× faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
