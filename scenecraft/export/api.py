"""``export_merge(plan, pipe, options)``: build (or fetch) the plan's merge, then write it as the
files other tools load: a LoRA, a single-file checkpoint, a diffusers folder, ComfyUI workflows.

    report = export_merge(loaded.plan, pipe, ExportOptions(lora=Path("cast.safetensors")))
    report.lora.layers      # per module: rank, relative error, full rank

Order: the merge (through the cache, `scenecraft.merge.api.merge`), then the LoRA, the
checkpoint and the workflows from the entry's ΔW* (the pipeline untouched), the diffusers folder
last (it applies the merge to ``pipe`` in place and saves it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scenecraft
from scenecraft.diagnostics import Diagnostic, error
from scenecraft.events import Reporter
from scenecraft.export.checkpoint import ldm_checkpoint
from scenecraft.export.comfyui import ModelFiles, plan_workflows
from scenecraft.export.comfyui_flux import plan_flux_workflows
from scenecraft.export.embeddings import embedding_name, write_embeddings
from scenecraft.export.flux import (
    display_name,
    factor_flux_kohya,
    flux_kohya_tensors,
    flux_lora_warnings,
    is_flux,
)
from scenecraft.export.lora import (
    DEFAULT_MAX_ERROR,
    KOHYA_ALPHA,
    LoRAFormat,
    LoRAReport,
    factor_all,
    file_dtype,
    header_metadata,
    lora_tensors,
)
from scenecraft.files import atomic_output, atomic_write_text
from scenecraft.merge.api import merge
from scenecraft.merge.apply import apply_merge, token_words
from scenecraft.merge.cache import load_entry
from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.plan import RenderPlan


@dataclass(frozen=True)
class ExportOptions:
    """What to write (``scenecraft export``'s flags); at least one of the four outputs."""

    lora: Path | None = None  # --lora OUT.safetensors
    lora_format: LoRAFormat = "kohya"  # --format: kohya (A1111/ComfyUI) or peft (diffusers)
    max_error: float | None = DEFAULT_MAX_ERROR  # --max-error: relative Frobenius, per layer
    rank: int | None = None  # --rank N: one rank for every layer instead of a budget
    precision: str = "fp16"  # --precision: tensors of the LoRA and checkpoint files
    checkpoint: Path | None = None  # --checkpoint OUT.safetensors (LDM names, merge fused)
    diffusers: Path | None = None  # --diffusers DIR (save_pretrained of the fused pipeline)
    comfyui: Path | None = None  # --comfyui DIR (one API-format workflow per image job)


@dataclass
class ExportReport:
    """What was written, for the CLI's table and ``--json``."""

    merge_key: str  # the plan's merge key
    entry: str  # the merge cache entry exported
    lora: LoRAReport | None = None
    checkpoint: dict[str, Any] | None = None  # path, bytes
    diffusers: str | None = None
    workflows: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "merge_key": self.merge_key,
            "entry": self.entry,
            "lora": self.lora.as_dict() if self.lora else None,
            "checkpoint": self.checkpoint,
            "diffusers": self.diffusers,
            "workflows": self.workflows,
            "embeddings": self.embeddings,
            "warnings": [d.as_dict() for d in self.warnings],
        }


def check_options(options: ExportOptions) -> None:
    """Refuse options that cannot be met, before any model is loaded."""
    if not (options.lora or options.checkpoint or options.diffusers or options.comfyui):
        raise error(
            "export-no-output",
            "`scenecraft export` was given nothing to write",
            help="pass `--lora OUT.safetensors`, `--checkpoint OUT.safetensors`, "
            "`--diffusers DIR` or `--comfyui DIR`",
        )
    if options.rank is not None and options.rank < 1:
        raise error(
            "export-bad-budget",
            f"`--rank` must be at least 1, not {options.rank}",
            help="pass a rank such as `--rank 16`, or an error budget with `--max-error 0.01`",
        )
    if options.rank is None and not (
        options.max_error is not None and 0.0 <= options.max_error < 1.0
    ):
        raise error(
            "export-bad-budget",
            f"`--max-error` must be in [0, 1), not {options.max_error}",
            help="the budget is a relative Frobenius error per layer: 0.01 keeps 99% of each ΔW",
        )
    if options.comfyui and not (options.lora or options.checkpoint):
        raise error(
            "export-comfyui-needs-model",
            "`--comfyui` workflows load the exported merge, but no `--lora` or `--checkpoint` "
            "is written",
            help="add `--lora OUT.safetensors` (loaded on the base) or `--checkpoint "
            "OUT.safetensors` (the merge fused)",
        )


def export_merge(
    plan: RenderPlan,
    pipe: Any,
    options: ExportOptions,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> ExportReport:
    """Merge (cached) and write every output ``options`` asks for; see the module docstring."""
    check_options(options)
    # 1. the merge, through the cache
    result = merge(plan.merge, pipe, cache_dir=cache_dir, force=force, reporter=reporter)
    if result.path is None:
        raise error(
            "export-nothing-merged",
            "the file merges nothing to export (merge `none`, or no concept has a LoRA)",
            help="give the concepts LoRA files and a merge method such as `merge loraclr`",
        )
    deltas, embeddings, manifest = load_entry(result.path)
    report = ExportReport(str(manifest.get("plan_key", "")), result.path.name)
    dtype = file_dtype(options.precision)
    names = {t: embedding_name(t) for rows in embeddings.values() for t in rows}
    # 2. the LoRA (+ the embeddings beside it)
    if options.lora is not None:
        report.lora = _write_lora(options, deltas, manifest, dtype, pipe)
        report.warnings += flux_lora_warnings(pipe, deltas, options.lora_format)
        report.embeddings += _embeddings_beside(options.lora, embeddings)
    # 3. the single-file checkpoint
    if options.checkpoint is not None:
        state = ldm_checkpoint(pipe, deltas, dtype, vocab=_base_vocab(pipe, embeddings))
        _save(options.checkpoint, state, {"scenecraft.merge_key": report.merge_key})
        report.checkpoint = {
            "path": str(options.checkpoint),
            "bytes": options.checkpoint.stat().st_size,
        }
        if options.lora is None:
            report.embeddings += _embeddings_beside(options.checkpoint, embeddings)
    # 4. the ComfyUI workflows
    if options.comfyui is not None:
        workflows, warnings = _write_workflows(plan, options, names, pipe, deltas)
        report.workflows, report.warnings = workflows, report.warnings + warnings
    # 5. the diffusers folder (applies the merge to `pipe`: last)
    if options.diffusers is not None:
        apply_merge(pipe, result)
        pipe.save_pretrained(str(options.diffusers), safe_serialization=True)
        report.diffusers = str(options.diffusers)
    return report


def _base_vocab(pipe: Any, embeddings: dict[str, dict[str, Any]]) -> int | None:
    """The tokenizer's size before the merge engine added the entry's tokens to ``pipe`` (they
    are added last), or None when none of them is in it."""
    tokenizer = getattr(pipe, "tokenizer", None)
    rows = embeddings.get("text_encoder", {})
    if tokenizer is None or not rows:
        return None
    added = tokenizer.added_tokens_encoder
    ids = [added[w] for t, v in rows.items() for w in token_words(t, v.shape[0]) if w in added]
    return min(ids) if ids else None


def _is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _save(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _write_lora(
    options: ExportOptions,
    deltas: dict[str, Any],
    manifest: dict[str, Any],
    dtype: Any,
    pipe: Any,
) -> LoRAReport:
    assert options.lora is not None
    max_error = None if options.rank is not None else options.max_error
    if is_flux(pipe) and options.lora_format == "kohya":  # fused BFL layers, alpha = rank
        shapes = ModuleIndex.from_pipe(pipe).shapes
        layers = factor_flux_kohya(
            deltas, shapes, max_error=max_error, rank=options.rank, dtype=dtype
        )
        tensors = flux_kohya_tensors(layers)
    else:
        alpha = KOHYA_ALPHA if options.lora_format == "kohya" else None  # peft: alpha = rank
        layers = factor_all(
            deltas, max_error=max_error, rank=options.rank, dtype=dtype, alpha=alpha
        )
        tensors = lora_tensors(layers, options.lora_format, sdxl=_is_sdxl(pipe))
    meta = header_metadata(
        manifest,
        layers,
        options.lora_format,
        max_error=max_error,
        rank=options.rank,
        version=scenecraft.__version__,
    )
    _save(options.lora, tensors, meta)
    return LoRAReport(
        path=str(options.lora),
        format=options.lora_format,
        modules=len(layers),
        bytes=options.lora.stat().st_size,
        max_error=max_error,
        rank=options.rank,
        layers=[
            {
                "module": display_name(f.module),
                "rank": f.rank,
                "error": f.error,
                "full_rank": f.full_rank,
            }
            for f in layers
        ],
    )


def _embeddings_beside(out: Path, embeddings: dict[str, dict[str, Any]]) -> list[str]:
    """``<stem>-embeddings/<NAME>.safetensors`` beside ``out``, when the merge adds tokens."""
    if not any(embeddings.values()):
        return []
    folder = out.parent / f"{out.stem}-embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    return [str(p) for p in write_embeddings(embeddings, folder).values()]


def _write_workflows(
    plan: RenderPlan,
    options: ExportOptions,
    names: dict[str, str],
    pipe: Any,
    deltas: dict[str, Any],
) -> tuple[list[str], list[Diagnostic]]:
    assert options.comfyui is not None
    if options.checkpoint is not None:
        files = ModelFiles(options.checkpoint.name, None, names)
    else:
        assert options.lora is not None
        clip = any(m.startswith("text_encoder") for m in deltas)
        base = base_checkpoint_name(plan.merge.base.source)
        files = ModelFiles(base, options.lora.name, names, lora_clip=clip)
    warnings: list[Diagnostic] = []
    if is_flux(pipe):
        workflows = plan_flux_workflows(plan, files)
    else:
        workflows, warnings = plan_workflows(plan, files)
    options.comfyui.mkdir(parents=True, exist_ok=True)
    written = []
    for name, workflow in workflows.items():
        path = options.comfyui / f"{name}.json"
        atomic_write_text(path, json.dumps(workflow, indent=2) + "\n")
        written.append(str(path))
    return written, warnings


def base_checkpoint_name(source: str) -> str:
    """The name a ComfyUI workflow loads the base by: a single file's own name, else the
    folder's or hub id's last part + ``.safetensors`` (docs/export.md)."""
    name = Path(source.rstrip("/")).name or "base"
    return name if name.endswith((".safetensors", ".ckpt")) else f"{name}.safetensors"
