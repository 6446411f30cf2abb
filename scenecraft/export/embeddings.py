"""New tokens of a merge as A1111 / ComfyUI textual-inversion files, one per token.

SD 1.x/2.x: ``{"emb_params": (n, dim)}``; SDXL: ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``
(``text_encoder`` rows as ``clip_l``, ``text_encoder_2`` rows as ``clip_g``). A1111 and ComfyUI
name an embedding by its file name, so the file is the token without characters a file name
or a prompt cannot hold (``<ZIGGY>`` -> ``ZIGGY.safetensors``): prompts then say ``ZIGGY``
(A1111) or ``embedding:ZIGGY`` (ComfyUI); diffusers loads it with
``load_textual_inversion(path, token="<ZIGGY>")``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def embedding_name(token: str) -> str:
    """The file stem for a token: ``<ZIGGY>`` -> ``ZIGGY``, ``<my dog>`` -> ``my_dog``."""
    return _UNSAFE.sub("_", token).strip("_.") or "token"


def embedding_states(
    embeddings: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[str, dict[str, torch.Tensor]]:
    """token -> the tensors of its file (``emb_params``, or ``clip_l``/``clip_g`` for SDXL)."""
    sdxl = "text_encoder_2" in embeddings
    out: dict[str, dict[str, torch.Tensor]] = {}
    for component, rows in embeddings.items():
        key = ("clip_g" if component == "text_encoder_2" else "clip_l") if sdxl else "emb_params"
        for token, value in rows.items():
            out.setdefault(token, {})[key] = value.detach().float().contiguous().cpu()
    return out


def write_embeddings(
    embeddings: Mapping[str, Mapping[str, torch.Tensor]], folder: Path
) -> dict[str, Path]:
    """One ``<name>.safetensors`` per token in ``folder``; token -> file written."""
    from safetensors.torch import save_file

    written: dict[str, Path] = {}
    for token, tensors in embedding_states(embeddings).items():
        path = folder / f"{embedding_name(token)}.safetensors"
        save_file(tensors, str(path), metadata={"scenecraft.token": token})
        written[token] = path
    return written
