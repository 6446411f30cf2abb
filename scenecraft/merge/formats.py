"""Reading concepts' LoRA files, whatever tool wrote them, into `ConceptLoRA`.

Formats (docs/merge.md lists them with examples):
- diffusers / PEFT safetensors: ``unet.<module>.lora_A.weight`` / ``lora_B.weight``; alpha from
  diffusers' ``lora_adapter_metadata`` (else alpha = r);
- old diffusers attention-processor naming (``…processor.to_k_lora.down.weight``);
- kohya / A1111 safetensors: ``lora_unet_…``, ``lora_te_…``, ``lora_te1_/lora_te2_`` with
  ``.alpha``; converted by diffusers' own ``lora_state_dict`` (and ``convert_*_to_peft``), not by
  code of ours;
- Mix-of-Show ED-LoRA ``.pth``: ``params`` with ``new_concept_embedding``, ``text_encoder``, ``unet``;
- textual-inversion embeddings (see `scenecraft.merge.formats_embeddings`).

Every layer becomes ΔW_c = s_c · B_c A_c with s_c = w_c · alpha / r (docs/merge.md).
Pickled files are opened with ``torch.load(weights_only=True)`` only. All failures are
`DiagnosticError`s with the codes of docs/merge.md.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scenecraft.diagnostics import error
from scenecraft.files import load_error_note, path_problem, sha256_file
from scenecraft.merge import edlora, flux_formats
from scenecraft.merge.formats_embeddings import embeddings_from_state, is_embedding_dict
from scenecraft.merge.formats_index import (
    ModuleIndex,
    as_index,
    check_layers,
    make_layer,
)
from scenecraft.merge.types import ConceptLoRA, LoRALayer
from scenecraft.names import FAMILY_BY_CROSS_DIM

# Substrings of keys written by LoRA variants whose update is not s · B A.
_VARIANTS: tuple[tuple[str, str], ...] = (
    ("hada_", "LoHa (LyCORIS Hadamard product)"),
    ("lokr_", "LoKr (LyCORIS Kronecker product)"),
    ("lora_mid", "LoCon with a Tucker core (`lora_mid`)"),
    ("dora_scale", "DoRA"),
    ("lora_magnitude_vector", "DoRA"),
    ("oft_", "OFT"),
    (".diff", "a full-weight difference (`.diff`)"),
)
_VARIANT_HELP = (
    "merge it into its base model and extract a plain LoRA (LyCORIS `tools/merge.py`, then "
    "kohya sd-scripts `networks/extract_lora_from_models.py`)"
)
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"
# Keys only LoRA files have: a file holding one of them is never read as an embedding.
_LORA_KEY = re.compile(r"lora_(A|B|down|up)\b|lora\.(down|up)\b|\.alpha$|(^|\.)(down|up)\.weight$")
_OLD_DOWN, _OLD_UP = "down.weight", "up.weight"


@dataclass
class LoRAInfo:
    """What a LoRA file says about itself (``scenecraft merge`` and the checker show it)."""

    path: str
    format: str  # "peft" | "kohya" | "diffusers-old" | "edlora" | "embedding" | "flux-…"
    family: str | None  # "sd15" | "sd2" | "sdxl" when the file or its shapes tell
    modules: int  # low-rank layers in the file
    ranks: tuple[int, ...]  # distinct ranks, ascending
    components: tuple[str, ...]  # "unet", "text_encoder", ...
    tokens: tuple[str, ...] = ()  # tokens the file names (ED-LoRA concepts, embeddings)
    trigger_words: tuple[str, ...] = ()  # suggestions from kohya's ss_tag_frequency
    network_dim: int | None = None  # kohya ss_network_dim
    network_alpha: float | None = None  # kohya ss_network_alpha
    metadata: dict[str, str] = field(default_factory=dict)  # the safetensors header metadata


@dataclass
class _Parsed:
    """A file's contents before they are checked against a base model."""

    format: str
    layers: dict[str, LoRALayer]  # component-prefixed module name as the file spells it
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)  # raw embedding state (embedding form)
    metadata: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ file access


def load_state(
    path: str | Path, *, concept: str, kind: str = "lora"
) -> tuple[dict[str, Any], dict[str, str]]:
    """(state dict, safetensors header metadata) of a file; codes ``{kind}-not-found``/``-unreadable``."""
    path = Path(path)
    problem = path_problem(path)
    if problem == "missing":
        raise error(
            f"{kind}-not-found",
            f"concept `{concept}`: {kind} file `{path}` does not exist",
            help="check the path in the scene file (paths are relative to that file)",
        )
    if problem is not None:  # a folder, FIFO, device, symlink loop: never opened
        raise error(
            f"{kind}-unreadable",
            f"concept `{concept}`: cannot read {kind} file `{path}`: it is {problem}, not a file",
            help="point the scene file at the weights file itself",
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as fh:
                metadata = dict(fh.metadata() or {})
            return dict(load_file(str(path))), metadata
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, zip and unpickling errors all mean "cannot read"
        raise error(
            f"{kind}-unreadable",
            f"concept `{concept}`: cannot read `{path}`",
            notes=(load_error_note(exc),),
            help="the file is truncated, corrupt or not a weights file; download or export it again",
        ) from None
    if not isinstance(obj, dict):
        raise _unknown_format(concept, str(path), f"it holds a `{type(obj).__name__}`")
    return obj, {}


def _unknown_format(concept: str, source: str, why: str) -> Exception:
    return error(
        "lora-unknown-format",
        f"concept `{concept}`: `{source}` is not a LoRA file scenecraft can read",
        notes=(why,),
        help="use a diffusers/PEFT, kohya/A1111 or Mix-of-Show ED-LoRA file (docs/merge.md)",
    )


# ---------------------------------------------------------------------------------- parsing


def _check_variant(keys: list[str], concept: str, source: str) -> None:
    for marker, name in _VARIANTS:
        hit = next((k for k in keys if marker in k), None)
        if hit is not None:
            raise error(
                "lora-unsupported-variant",
                f"concept `{concept}`: `{source}` is {name}, not a plain low-rank LoRA",
                notes=(f"key `{hit}`",),
                help=_VARIANT_HELP,
            )


def _peft_names(component: str, keys: list[str]) -> dict[str, str]:
    """Old diffusers key -> PEFT key (``….lora_A.weight``), renamed by diffusers' converters.

    The converters only rename keys, so each key is tagged with its position to read the
    renaming back.
    """
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from diffusers.utils.state_dict_utils import StateDictType

    tags = {k: torch.tensor(i) for i, k in enumerate(keys)}
    if not component.startswith("text_encoder"):
        renamed = convert_unet_state_dict_to_peft(tags)
    else:
        # CLIP names first (to_q_lora -> q_proj, lora_linear_layer), then generic `.lora.down`
        # (SDXL's text_projection); the type is given, as inference fails on partial LoRAs
        clip = convert_state_dict_to_peft(tags, original_type=StateDictType.DIFFUSERS_OLD)
        renamed = convert_unet_state_dict_to_peft(clip)
    return {keys[int(tag)]: new for new, tag in renamed.items()}


def _to_peft(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All LoRA keys in PEFT naming, plus the original name of each renamed key."""
    old: dict[str, list[str]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        is_old = key.endswith((_OLD_DOWN, _OLD_UP))
        if is_old and not key.endswith(("lora_down.weight", "lora_up.weight")):
            old.setdefault(key.split(".", 1)[0], []).append(key)
        else:
            out[key] = value
    origin: dict[str, str] = {}
    for component, keys in old.items():
        for before, after in _peft_names(component, keys).items():
            out[after] = state[before]
            origin[after] = before
    return out, origin


def _kohya_alpha(alphas: Mapping[str, Any], old_down: str) -> float | None:
    """diffusers files kohya alphas under ``<down key>.alpha`` or ``<module>.alpha``."""
    stem = old_down.removesuffix(".lora.down.weight").removesuffix(".down.weight")
    for key in (f"{old_down}.alpha", f"{stem}.alpha"):
        if key in alphas:
            return float(alphas[key])
    return None


def _peft_alpha(meta: Mapping[str, Any], module: str, rank: int) -> float | None:
    """alpha from diffusers' ``lora_adapter_metadata`` (``unet.lora_alpha``, ``unet.alpha_pattern``)."""
    from peft.utils.other import get_pattern_key

    component, _, rel = module.partition(".")
    alpha = meta.get(f"{component}.lora_alpha")
    pattern = meta.get(f"{component}.alpha_pattern") or {}
    key = get_pattern_key(list(pattern), rel)
    if key in pattern:
        alpha = pattern[key]
    if alpha is None:
        return None
    if meta.get(f"{component}.use_rslora"):
        return float(alpha) * math.sqrt(rank)  # rsLoRA scales by alpha/√r; s = alpha'/r
    return float(alpha)


def _parse_lora_dict(
    state: Mapping[str, Any],
    metadata: Mapping[str, str],
    *,
    concept: str,
    source: str,
    unet_config: Any,
) -> _Parsed:
    """A LoRA state dict (PEFT, old diffusers or kohya) as layers named by module."""
    from diffusers import StableDiffusionPipeline

    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    is_kohya = bool(tensors) and all(k.startswith("lora_") for k in tensors)
    try:
        converted, alphas = StableDiffusionPipeline.lora_state_dict(
            dict(tensors), unet_config=unet_config
        )
        peft_state, origin = _to_peft(converted)
    except Exception as exc:  # diffusers' converters raise ValueError/KeyError on foreign keys
        raise _unknown_format(
            concept, source, f"diffusers could not convert it: {str(exc)[:200]}"
        ) from None
    meta = json.loads(metadata.get("lora_adapter_metadata", "{}") or "{}")
    layers: dict[str, LoRALayer] = {}
    for key, down in peft_state.items():
        if not key.endswith(_LORA_A) or key[: -len(_LORA_A)] + _LORA_B not in peft_state:
            continue
        module = key[: -len(_LORA_A)]
        up = peft_state[module + _LORA_B]
        rank = int(down.shape[0])
        if key in origin:
            alpha = _kohya_alpha(alphas or {}, origin[key])
        elif f"{module}.alpha" in peft_state:
            alpha = float(peft_state[f"{module}.alpha"])
        else:
            alpha = _peft_alpha(meta, module, rank)
        layers[module] = make_layer(module, down, up, alpha)
    used = {f"{m}{s}" for m in layers for s in (_LORA_A, _LORA_B, ".alpha")}
    stray = sorted(k for k in peft_state if k not in used)
    if not layers and stray and all(_LORA_KEY.search(k) for k in stray):
        raise error(  # halves of pairs: the other factor of each is missing
            "lora-unknown-keys",
            f"concept `{concept}`: `{source}` has {len(stray)} LoRA key(s) without their pair",
            notes=tuple(f"`{k}`" for k in stray[:8]),
            help="every `lora_A`/`lora_down` needs its `lora_B`/`lora_up`; export the LoRA again",
        )
    if not layers:
        raise _unknown_format(
            concept, source, "it holds no `lora_down`/`lora_up` (or `lora_A`/`lora_B`) pairs"
        )
    if stray:
        raise error(
            "lora-unknown-keys",
            f"concept `{concept}`: `{source}` has {len(stray)} key(s) that are not LoRA weights",
            notes=tuple(f"`{k}`" for k in stray[:8]),
            help="remove them, or re-save the LoRA with diffusers' `save_lora_weights`",
        )
    fmt = "kohya" if is_kohya else ("diffusers-old" if origin else "peft")
    return _Parsed(fmt, layers, metadata=dict(metadata))


def _parse_edlora(params: Mapping[str, Any], *, concept: str, source: str) -> _Parsed:
    """Mix-of-Show ED-LoRA (`scenecraft.merge.edlora`): LoRA pairs and per-token rows."""
    layers, rows, stray = edlora.split_params(params)
    if stray:
        _check_variant(stray, concept, source)
        raise error(
            "lora-unknown-keys",
            f"concept `{concept}`: `{source}` has {len(stray)} key(s) that are not LoRA weights",
            notes=tuple(f"`{k}`" for k in stray[:8]),
            help="re-export the ED-LoRA with Mix-of-Show's own tools",
        )
    return _Parsed("edlora", layers, {"text_encoder": rows} if rows else {})


def _parse(
    state: Mapping[str, Any],
    metadata: Mapping[str, str],
    *,
    concept: str,
    source: str,
    unet_config: Any = None,
    index: ModuleIndex | None = None,
) -> _Parsed:
    """Dispatch on the contents, never on the file name."""
    params = state.get("params")
    if isinstance(params, Mapping) and {"unet", "text_encoder", "new_concept_embedding"} & set(
        params
    ):
        return _parse_edlora(params, concept=concept, source=source)
    if is_embedding_dict(state) and not any(_LORA_KEY.search(str(k)) for k in state):
        return _Parsed("embedding", {}, state=state)
    _check_variant(list(state), concept, source)
    if flux_formats.is_flux_layout(list(state), index):  # scenecraft.merge.flux_formats
        meta = json.loads(metadata.get("lora_adapter_metadata", "{}") or "{}")
        layers = flux_formats.parse_flux(
            state,
            concept=concept,
            source=source,
            index=index,
            alpha_of=lambda module, rank: _peft_alpha(meta, module, rank),
        )
        return _Parsed(flux_formats.layout_name(list(state)), layers, metadata=dict(metadata))
    return _parse_lora_dict(
        state, metadata, concept=concept, source=source, unet_config=unet_config
    )


# --------------------------------------------------------------------------- family & tags


def family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """kohya ``ss_base_model_version`` / ``ss_v2`` or ``modelspec.architecture`` -> family."""
    version = str(metadata.get("ss_base_model_version", "")).lower()
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if version.startswith("sdxl") or "-xl-" in arch:
        return "sdxl"
    if version.startswith("sd_v2") or metadata.get("ss_v2") == "True" or "-v2" in arch:
        return "sd2"
    if version.startswith("sd_v1") or "-v1" in arch:
        return "sd15"
    return None


def family_from_layers(layers: Mapping[str, LoRALayer]) -> str | None:
    """From the width cross-attention keys read (768 / 1024 / 2048); MM-DiT blocks are flux."""
    if any(m.startswith("transformer.single_transformer_blocks.") for m in layers):
        return "flux"
    if any(m.startswith("text_encoder_2.") for m in layers):
        return "sdxl"
    for module, layer in layers.items():
        if module.endswith(("attn2.to_k", "attn2.to_v")):
            return FAMILY_BY_CROSS_DIM.get(int(layer.down.shape[1]))
    return None


def trigger_words(metadata: Mapping[str, str], limit: int = 5) -> tuple[str, ...]:
    """The most frequent caption tags (kohya ``ss_tag_frequency``), or the modelspec trigger."""
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase")
    if phrase:
        words.append(phrase)
    try:
        freq = json.loads(metadata.get("ss_tag_frequency", "{}") or "{}")
    except json.JSONDecodeError:
        freq = {}
    counts: Counter[str] = Counter()
    for tags in freq.values() if isinstance(freq, dict) else ():
        if isinstance(tags, dict):
            counts.update({str(t).strip(): int(n) for t, n in tags.items() if str(t).strip()})
    words += [t for t, _ in counts.most_common() if t not in words]
    return tuple(words[:limit])


def _number(metadata: Mapping[str, str], key: str) -> float | None:
    try:
        return float(metadata[key])
    except (KeyError, ValueError):
        return None


# ----------------------------------------------------------------------------- entry points


def read_concept_lora(
    path: str | Path,
    *,
    name: str,
    tokens: tuple[str, ...] = (),
    weight: float = 1.0,
    pipe_or_module_index: Any,
) -> ConceptLoRA:
    """Read any supported LoRA (or embedding) file and check it against the base model."""
    index = as_index(pipe_or_module_index)
    source = str(path)
    state, metadata = load_state(path, concept=name)
    parsed = _parse(
        state, metadata, concept=name, source=source, unet_config=index.unet_config, index=index
    )
    family = family_from_metadata(metadata) or family_from_layers(parsed.layers)
    layers = check_layers(parsed.layers, index, concept=name, source=source, family=family)
    embeddings = parsed.embeddings
    if parsed.format == "embedding":
        embeddings = embeddings_from_state(
            parsed.state, tokens=tokens, index=index, concept=name, source=source
        )
    elif parsed.format == "edlora":  # rows per cross-attention layer (Mix-of-Show's order)
        rows = embeddings.get("text_encoder", {})
        edlora.check_tokens(rows, tokens, index, concept=name, source=source)
        bound = edlora.bind_rows(rows, len(edlora.index_layers(index)))
        embeddings = {"text_encoder": bound} if bound else {}
    return ConceptLoRA(
        name=name,
        tokens=tuple(tokens),
        layers=layers,
        weight=weight,
        embeddings=embeddings,
        source=source,
        sha256=sha256_file(path),
        family=family,
        metadata={**parsed.metadata, "format": parsed.format},
    )


def read_embedding(
    path: str | Path, *, name: str, tokens: tuple[str, ...], pipe_or_module_index: Any
) -> dict[str, dict[str, torch.Tensor]]:
    """A textual-inversion file bound to the concept's token: component -> token -> (n, dim)."""
    index = as_index(pipe_or_module_index)
    state, _ = load_state(path, concept=name, kind="embedding")
    if not is_embedding_dict(state):
        raise error(
            "embedding-unreadable",
            f"concept `{name}`: `{path}` is not a textual-inversion embedding",
            help="pass a diffusers `learned_embeds` file or an A1111 embedding",
        )
    return embeddings_from_state(state, tokens=tokens, index=index, concept=name, source=str(path))


def inspect_lora(path: str | Path) -> LoRAInfo:
    """Describe a LoRA file without a base model: format, family, ranks, trigger suggestions."""
    concept = Path(path).stem
    state, metadata = load_state(path, concept=concept)
    parsed = _parse(state, metadata, concept=concept, source=str(path))
    tokens: tuple[str, ...] = ()
    if parsed.format == "embedding":
        file_token = next(iter(state)) if len(state) == 1 else state.get("name")
        tokens = (file_token,) if isinstance(file_token, str) else ()
    else:
        tokens = tuple(parsed.embeddings.get("text_encoder", {}))
    dim = _number(metadata, "ss_network_dim")
    return LoRAInfo(
        path=str(path),
        format=parsed.format,
        family=family_from_metadata(metadata) or family_from_layers(parsed.layers),
        modules=len(parsed.layers),
        ranks=tuple(sorted({layer.rank for layer in parsed.layers.values()})),
        components=tuple(sorted({m.split(".", 1)[0] for m in parsed.layers})),
        tokens=tokens,
        trigger_words=trigger_words(metadata),
        network_dim=int(dim) if dim is not None else None,
        network_alpha=_number(metadata, "ss_network_alpha"),
        metadata=dict(metadata),
    )
