"""Shared helpers for the SDXL tests: one tiny SDXL pipeline per session (both text encoders with
a generated vocabulary, a text_time UNet, a tiny VAE; `scenecraft.testing.tiny_sdxl_components`),
its saved folder, and LoRA / embedding files in kohya (SGM layout) and PEFT form."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.merge.types import LoRALayer
from tests._lora_files import kohya_state, lora_modules, random_concept_layers, save_peft_lora

TEXT_PROJECTION = "text_encoder_2.text_projection"  # the pooled path into the UNet


@functools.cache
def sdxl_pipe() -> Any:
    """The session's tiny SDXL pipeline (fp32, CPU). Tests must leave it as they found it."""
    from scenecraft.testing import quiet_libraries, tiny_sdxl_pipeline

    quiet_libraries()
    return tiny_sdxl_pipeline(0)


@functools.cache
def sdxl_index() -> ModuleIndex:
    return ModuleIndex.from_pipe(sdxl_pipe())


@functools.cache
def session_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="scenecraft-sdxl-tests-"))


@functools.cache
def sdxl_dir() -> Path:
    """The tiny SDXL pipeline saved as a diffusers folder (loaded through the real path)."""
    from scenecraft.testing import save_tiny_sdxl_pipeline

    return save_tiny_sdxl_pipeline(session_dir() / "tiny-sdxl")


def sdxl_lora_modules() -> list[str]:
    """Attention / feed-forward / proj layers of the UNet, both text encoders' attention and
    MLP layers, and text_encoder_2's projection."""
    return [*lora_modules(sdxl_pipe()), TEXT_PROJECTION]


def write_kohya_sdxl(path: Path, layers: dict[str, LoRALayer]) -> None:
    """A kohya sd-scripts SDXL file: lora_te1_/lora_te2_/lora_unet_ with SGM block names."""
    state = kohya_state(layers, sdxl_index().shapes, sdxl=True, sgm_layers_per_block=2)
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": "4"}
    save_file(state, str(path), metadata=meta)


@functools.cache
def ziggy_layers() -> dict[str, LoRALayer]:
    """The factors ziggy's files hold (rank 4, alpha 2)."""
    return random_concept_layers(sdxl_pipe(), sdxl_lora_modules(), rank=4, seed=1, alpha=2.0)


@functools.cache
def sdxl_files() -> dict[str, Path]:
    """``ziggy`` (kohya, SGM names), ``momo`` (PEFT), ``ziggy_peft`` (ziggy's factors in PEFT
    form) and ``ziggy_emb`` (an SDXL textual inversion: clip_l and clip_g, 2 vectors each)."""
    ziggy = ziggy_layers()
    momo = random_concept_layers(sdxl_pipe(), sdxl_lora_modules(), rank=4, seed=2, alpha=4.0)
    files = {
        "ziggy": session_dir() / "ziggy-kohya.safetensors",
        "ziggy_peft": session_dir() / "ziggy-peft.safetensors",
        "momo": session_dir() / "momo-peft.safetensors",
        "ziggy_emb": session_dir() / "ziggy-emb.safetensors",
    }
    write_kohya_sdxl(files["ziggy"], ziggy)
    save_peft_lora(files["ziggy_peft"], ziggy, sdxl_index().shapes)
    save_peft_lora(files["momo"], momo, sdxl_index().shapes)
    g = torch.Generator().manual_seed(5)
    save_file(
        {
            "clip_l": 0.02 * torch.randn(2, 32, generator=g),
            "clip_g": 0.02 * torch.randn(2, 48, generator=g),
        },
        str(files["ziggy_emb"]),
    )
    return files


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two spin-wait badly on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
