"""Loading the base model: a hub id, a local diffusers folder, or one .safetensors/.ckpt file.

`load_pipeline` picks the pipeline class from the model family (SD 1.x and 2.x ->
`StableDiffusionPipeline`, SDXL -> `StableDiffusionXLPipeline`), detected from `model_index.json`
and the UNet config of a folder, or from the key names and shapes of a single file's state dict.
Device and dtype are chosen automatically (cuda fp16, mps fp16, cpu fp32) unless given.
Offline mode (``HF_HUB_OFFLINE=1``) is respected; a model that is not available locally is a
`model-not-found` diagnostic that says what to fetch, never a hub traceback.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scenecraft.diagnostics import DiagnosticError, did_you_mean, error
from scenecraft.files import (
    MODEL_FILE_SUFFIXES,
    load_error_note,
    looks_like_hub_id,
    path_problem,
    sha256_file,
)
from scenecraft.interrupts import interrupts_kept
from scenecraft.names import FAMILY_BY_CROSS_DIM
from scenecraft.plan import BaseModelSpec, Family, stable_hash

SINGLE_FILE_SUFFIXES = MODEL_FILE_SUFFIXES
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
}
# Checkpoint key whose shape (320, cross_attention_dim) identifies an original-layout file.
_SD_ATTN2_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars and info logs; the UI draws progress."""
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    # SDXL in fp16 decodes with an fp32 VAE (see `sdxl_vae_note`); diffusers warns on every call
    # that its helper for that is deprecated, which is not the user's business
    warnings.filterwarnings("ignore", message=".*upcast_vae.*", category=FutureWarning)


def sdxl_vae_note(pipe: Any) -> str | None:
    """What happens to an SDXL pipeline's VAE in half precision (None when nothing special).

    SDXL's VAE overflows in fp16 (NaN latents decode to black images). scenecraft keeps the
    diffusers behaviour: when ``vae.config.force_upcast`` is true — SDXL's own VAE config says
    so — each decode runs on an fp32 copy of the VAE; the UNet and text encoders stay fp16.
    A VAE whose config says false (the fp16-fixed SDXL VAE) decodes in fp16. bf16 has fp32's
    range and needs no upcast.
    """
    vae = getattr(pipe, "vae", None)
    if getattr(pipe, "text_encoder_2", None) is None or vae is None or vae.dtype != torch.float16:
        return None
    if getattr(vae.config, "force_upcast", False):
        return (
            "SDXL in float16: the VAE decodes in float32 (its config's force_upcast), as SDXL's "
            "VAE overflows in float16; --dtype bfloat16 or an fp16-fixed VAE avoids the upcast"
        )
    return (
        "SDXL in float16 with a VAE that decodes in float16 (force_upcast false): right for the "
        "fp16-fixed SDXL VAE; black images mean this VAE overflows, use --dtype bfloat16"
    )


def is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------- device and dtype


def choose_device(device: str | None = None) -> torch.device:
    """``device`` if given (``cuda``, ``cuda:1``, ``mps``, ``cpu``), else the best available."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise error(
            "unknown-device",
            f"unknown device `{device}`",
            help="use `cuda`, `cuda:N`, `mps`, `cpu` or `auto`",
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise error(
            "device-unavailable",
            f"device `{device}` is not available on this machine",
            help="omit --device to pick the best available device, or use `--device cpu`",
        )
    return chosen


def choose_dtype(
    device: torch.device, dtype: str | torch.dtype | None = None, family: Family | None = None
) -> torch.dtype:
    """``dtype`` if given, else fp16 on cuda/mps and fp32 on cpu (fp16 matmuls are slow on cpu);
    FLUX gets bf16 on cuda (its activations overflow fp16, and it was trained in bf16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if family == "flux" and device.type == "cuda":
            return torch.bfloat16
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise error(
            "unknown-dtype",
            f"unknown dtype `{dtype}`",
            help=did_you_mean(key, DTYPES) or f"use one of: {', '.join(sorted(DTYPES))}",
        )
    return DTYPES[key]


# ------------------------------------------------------------------------- family detection


def family_from_cross_attention(dim: int | None) -> Family | None:
    return FAMILY_BY_CROSS_DIM.get(dim) if dim is not None else None


def family_from_model_index(index: dict[str, Any], unet_config: dict[str, Any] | None) -> Family:
    """Family of a diffusers folder from its ``model_index.json`` and ``unet/config.json``."""
    if "Flux" in str(index.get("_class_name", "")):
        return "flux"
    if "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index:
        return "sdxl"
    dim = (unet_config or {}).get("cross_attention_dim")
    found = family_from_cross_attention(dim if isinstance(dim, int) else None)
    return found if found is not None and found != "sdxl" else "sd15"


def family_from_state_dict(shapes: dict[str, tuple[int, ...]]) -> Family | None:
    """Family of an original-layout (A1111/ComfyUI) checkpoint from its key names and shapes."""
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        return "sdxl"
    if any(
        k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in shapes
    ):
        return "flux"  # BFL's single-file FLUX.1 transformer
    if _SD_ATTN2_KEY in shapes and len(shapes[_SD_ATTN2_KEY]) == 2:
        return family_from_cross_attention(shapes[_SD_ATTN2_KEY][1])
    if any(k.startswith("cond_stage_model.model.transformer.") for k in shapes):
        return "sd2"  # OpenCLIP text encoder
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        return "sd15"  # CLIP ViT-L text encoder
    return None


def read_checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a single-file checkpoint, without loading tensors where possible."""
    problem = path_problem(path)
    if problem is not None:
        raise error(
            "unreadable-checkpoint",
            f"cannot read base model `{path}`: it is {problem}",
            help="point `base` at a .safetensors/.ckpt file or a diffusers folder",
        )
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # truncated header, garbage, I/O errors
            raise error(
                "unreadable-checkpoint",
                f"cannot read `{path}`: it is truncated or not a safetensors file",
                notes=(f"{type(exc).__name__}: {str(exc)[:200]}",),
                help="download or export the model again",
            ) from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickles with code in them are refused by weights_only
        raise error(
            "unreadable-checkpoint",
            f"cannot read `{path}` as a weights-only checkpoint",
            notes=(load_error_note(exc),),
            help="convert it to .safetensors; scenecraft never unpickles code from checkpoints",
        ) from None
    state = data.get("state_dict", data) if isinstance(data, dict) else {}
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def detect_family(source: str | Path) -> Family | None:
    """Family of a local folder or single file; None when it cannot be told."""
    path = Path(source)
    if path.is_dir():
        index = _read_json(path / "model_index.json") or {}
        return family_from_model_index(index, _read_json(path / "unet" / "config.json"))
    if path.is_file():
        return family_from_state_dict(read_checkpoint_shapes(path))
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class ModelInfo:
    """What the renderer records about the base model (PNG metadata, manifest)."""

    name: str  # short display name: folder or file stem, or the hub id
    hash: str  # A1111-style 10 hex digits: sha256 of a single file, else of the folder's configs
    family: Family | None  # detected or declared family


def pipeline_class(family: Family | None) -> Any:
    from diffusers import FluxPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "flux":
        return FluxPipeline
    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _extra_kwargs(family: Family | None) -> dict[str, Any]:
    """SD 1.x/2.x pipelines are loaded without their safety checker; the others have none."""
    if family in ("sdxl", "flux"):
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def load_pipeline(
    base: BaseModelSpec,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Any:
    """Load ``base`` as a diffusers pipeline on ``device`` in ``dtype`` (chosen if None).

    Raises DiagnosticError: ``model-not-found`` (missing path, or hub id not cached while
    offline), ``model-damaged`` (a local folder with a broken or missing file),
    ``model-family-mismatch`` (declared family differs from the detected one),
    ``model-load-failed`` (anything else the loader rejects). Ctrl-C during the load always
    raises KeyboardInterrupt once it is over (`interrupts_kept`), even where a library
    swallowed it.
    """
    with interrupts_kept():
        return _load_pipeline(base, device, dtype)


def _load_pipeline(
    base: BaseModelSpec, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> Any:
    quiet_libraries()
    dev = device if isinstance(device, torch.device) else choose_device(device)
    path = Path(base.source).expanduser()
    local = not looks_like_hub_id(base.source) and path.exists()
    torch_dtype = choose_dtype(dev, dtype, base.family or (detect_family(path) if local else None))
    problem = path_problem(path)
    if problem not in (None, "missing", "a folder"):  # a symlink loop, FIFO, device, ...
        raise error(
            "model-not-found",
            f"base model `{base.source}` cannot be read: it is {problem}",
            help="give the path of a diffusers folder or a .safetensors/.ckpt file",
        )
    with warnings.catch_warnings():  # newer diffusers renamed torch_dtype; older lack `dtype`
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        if looks_like_hub_id(base.source):  # `org/name`, whatever the current folder holds
            pipe = _load_hub(base, torch_dtype)
        elif path.exists():
            family = _check_family(base, detect_family(path))
            pipe = _load_local(path, family, torch_dtype, base)
        else:
            raise _not_found_path(base.source)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _check_family(base: BaseModelSpec, detected: Family | None) -> Family | None:
    if base.family and detected and base.family != detected:
        raise error(
            "model-family-mismatch",
            f"`{base.source}` looks like a `{detected}` model but the scene declares `{base.family}`",
            help=f"declare `family {detected}` or point `base` at a `{base.family}` model",
        )
    return base.family or detected


def _not_found_path(source: str) -> DiagnosticError:
    return error(
        "model-not-found",
        f"base model `{source}` does not exist",
        help="give the path of a diffusers folder or a .safetensors/.ckpt file, "
        "or a hub id such as `stable-diffusion-v1-5/stable-diffusion-v1-5`",
    )


def _load_local(path: Path, family: Family | None, dtype: torch.dtype, base: BaseModelSpec) -> Any:
    cls = pipeline_class(family)
    extra = _extra_kwargs(family)
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise error(
                    "model-not-found",
                    f"`{path}` is not a diffusers model folder (no model_index.json)",
                    help="give a folder written by `save_pretrained`, or a single .safetensors file",
                )
            return cls.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True, **extra)
        return cls.from_single_file(
            str(path), torch_dtype=dtype, local_files_only=is_offline(), **extra
        )
    except DiagnosticError:
        raise
    except Exception as exc:
        bad = damaged_file(path) if path.is_dir() else None
        if bad is not None:
            raise _damaged(base, path, *bad, exc) from None
        raise _load_failed(base, exc, single_file=path.is_file()) from None


def _damaged(
    base: BaseModelSpec, folder: Path, bad: Path, why: str, exc: Exception
) -> DiagnosticError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return error(
        "model-damaged",
        f"base model folder `{base.source}` is damaged: `{bad.relative_to(folder)}` {why}",
        notes=(f"the loader said: {first}",),
        help="copy or download the model again (a partial copy or an interrupted download "
        "leaves such files)",
    )


_MAX_CHECKED = 2000  # files looked at in a damaged folder (a model folder holds a few dozen)


def damaged_file(folder: Path) -> tuple[Path, str] | None:
    """The first broken file of a diffusers folder, with what is wrong, in words: a component
    folder that ``model_index.json`` lists but is missing, a JSON file that does not parse, a
    ``.safetensors`` file whose header or length is wrong. None when nothing is found."""
    from safetensors import safe_open

    index = _read_json(folder / "model_index.json") or {}
    for name, value in index.items():
        listed = isinstance(value, list) and len(value) == 2 and value[0] is not None
        if not name.startswith("_") and listed and not (folder / name).is_dir():
            return folder / name, "is missing (model_index.json lists it)"
    for n, file in enumerate(sorted(folder.rglob("*"))):
        if n >= _MAX_CHECKED:
            break
        if file.suffix == ".json" and file.is_file() and _read_json(file) is None:
            return file, "is not valid JSON"
        if file.suffix == ".safetensors" and file.is_file():
            try:
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                        f.get_slice(key)
            except Exception as exc:  # a torn header, garbage, a short file
                return file, f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def _load_hub(base: BaseModelSpec, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    offline = is_offline()
    try:
        with warnings.catch_warnings():  # hub deprecation chatter is not the user's business
            warnings.simplefilter("ignore")
            index = DiffusionPipeline.load_config(
                base.source, revision=base.revision, local_files_only=offline
            )
    except Exception as exc:
        raise _load_failed(base, exc, single_file=False) from None
    family = _check_family(base, family_from_model_index(dict(index), None))
    cls = pipeline_class(family)
    extra = _extra_kwargs(family)
    try:
        return cls.from_pretrained(
            base.source,
            revision=base.revision,
            torch_dtype=dtype,
            local_files_only=offline,
            **extra,
        )
    except Exception as exc:
        raise _load_failed(base, exc, single_file=False) from None


def _load_failed(base: BaseModelSpec, exc: Exception, *, single_file: bool) -> DiagnosticError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    missing = isinstance(exc, (OSError, FileNotFoundError)) or "offline" in first.lower()
    if missing and single_file:
        return error(
            "model-not-found",
            f"the configs needed to load `{base.source}` are not available locally",
            notes=(first,),
            help="the single-file loader fetches the family's configs from the hub once: run it "
            "once online, or convert the file to a diffusers folder and give that folder",
        )
    if missing:
        where = "offline (HF_HUB_OFFLINE=1)" if is_offline() else "from the hub"
        return error(
            "model-not-found",
            f"base model `{base.source}` is not available locally and cannot be fetched {where}",
            notes=(first,),
            help=f"fetch it with `hf download {base.source}` on a machine with network access, "
            "or set `base` to a local diffusers folder or .safetensors file",
        )
    return error(
        "model-load-failed",
        f"cannot load base model `{base.source}`: {first}",
        help="check that the path holds a Stable Diffusion 1.x, 2.x, SDXL or FLUX.1 model",
    )


# ------------------------------------------------------------------------------ identity


def model_info(base: BaseModelSpec) -> ModelInfo:
    """Name and A1111-style short hash of the base model (cheap for folders and hub ids)."""
    path = Path(base.source).expanduser()
    if path.is_file():
        return ModelInfo(path.stem, _file_hash(path), base.family)
    if path.is_dir():
        configs = {
            str(p.relative_to(path)): (
                p.read_text(encoding="utf-8", errors="replace") if p.suffix == ".json" else ""
            )
            + f"#{p.stat().st_size}"
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return ModelInfo(path.name, stable_hash(configs, 10), base.family or detect_family(path))
    return ModelInfo(base.source, stable_hash([base.source, base.revision], 10), base.family)


def _file_hash(path: Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's sha256."""
    return sha256_file(path)[:10]
