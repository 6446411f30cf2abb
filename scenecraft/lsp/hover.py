"""Hover: what a name under the cursor stands for, in Markdown.

A concept: its token, class, kind, weight and LoRA file, with the file's format, rank and
family from its safetensors header. A scene: its compiled prompts, seeds and region boxes. A
merge parameter: its doc, range and default. A setting: its doc and type. An include: the file.
"""

from __future__ import annotations

from pathlib import Path

from lsprotocol.types import Hover, MarkupContent, MarkupKind, Position

from scenecraft.language import schema
from scenecraft.language.loader import resolve_path
from scenecraft.lsp.analysis import Analysis
from scenecraft.lsp.completion import BLOCK_KEYS, param_detail
from scenecraft.lsp.index import Index, Occurrence, setting_text
from scenecraft.lsp.lora_info import lora_info
from scenecraft.lsp.merge_params import merge_parameter, merge_parameters
from scenecraft.lsp.positions import Lines

MAX_JOBS_SHOWN = 8  # a scene's distinct prompts listed in a hover


def hover(analysis: Analysis, index: Index, pos: Position) -> Hover | None:
    lines = Lines(analysis.text)
    occ = index.at(analysis.name, pos.line + 1, lines.column(pos) + 1)
    if occ is None:
        return None
    text = describe(analysis, index, occ)
    if not text:
        return None
    return Hover(MarkupContent(MarkupKind.Markdown, text), lines.range_of(occ.span))


def describe(analysis: Analysis, index: Index, occ: Occurrence) -> str:
    if occ.kind == "concept":
        return concept_text(analysis, index, occ.name)
    if occ.kind == "scene":
        return scene_text(analysis, occ.name)
    if occ.kind == "merge-param":
        p = merge_parameter(occ.owner, occ.name)
        return (
            f"**merge `{occ.owner}` parameter `{p.name}`**: {param_detail(p)}\n\n{p.doc}"
            if p
            else ""
        )
    if occ.kind == "merge-method":
        params = merge_parameters().get(occ.name)
        if params is None:
            return ""
        rows = "\n".join(f"- `{p.name}`: {param_detail(p)}" for p in params) or "no parameters"
        return f"**merge method `{occ.name}`**\n\n{rows}"
    if occ.kind == "setting":
        table = BLOCK_KEYS.get(occ.owner, {})
        key = table.get(occ.name)
        return f"**`{occ.name}`** ({key.kind}{_range(key)}): {key.doc}" if key else ""
    if occ.kind == "include":
        return include_text(index, occ)
    if occ.kind == "storyboard":
        board = index.storyboards.get(occ.name)
        return f"**storyboard `{occ.name}`**: {len(board.panels)} panels" if board else ""
    if occ.kind == "object":
        return f"**object `{occ.name}`** of scene `{occ.owner}`"
    return ""


def _range(key: schema.Key) -> str:
    if key.choices:
        return ": " + ", ".join(key.choices)
    if key.lo is not None or key.hi is not None:
        return f" in [{key.lo}, {key.hi}]"
    return ""


def concept_text(analysis: Analysis, index: Index, name: str) -> str:
    node = index.concepts.get(name)
    if node is None:
        return f"**`{name}`**: not a concept of this file or its includes"
    rows = [f"**concept `{name}`**"]
    for key, label in (
        ("token", "token"),
        ("class", "class"),
        ("kind", "kind"),
        ("weight", "weight"),
    ):
        value = setting_text(node, key)
        if value:
            rows.append(f"- {label}: `{value}`")
    written = setting_text(node, "lora")
    if written:
        path = resolve_path(Path(node.span.file).parent, written)
        rows.append(f"- LoRA: `{written}`" + ("" if path.is_file() else " (missing)"))
        info = lora_info(path) if path.is_file() else None
        if info is not None:
            rows.append(f"- format: {info.format}, {info.tensors} tensors")
            rows.append(f"- rank: {info.rank if info.rank is not None else 'unknown'}")
            told = info.metadata.get("ss_base_model_version") or info.metadata.get(
                "modelspec.architecture"
            )
            family = info.family or (f"`{told}` (metadata)" if told else "not told by the file")
            rows.append(f"- family: {family}")
    return "\n".join(rows)


def scene_text(analysis: Analysis, name: str) -> str:
    plan = analysis.plan
    if plan is None:
        return f"**scene `{name}`**\n\n(the file has errors: fix them to see the compiled prompts)"
    jobs = [j for j in plan.jobs if j.scene == name]
    if not jobs:
        return f"**scene `{name}`**: no images"
    first = jobs[0]
    seeds = ", ".join(str(s) for s in dict.fromkeys(j.seed for j in jobs))
    rows = [
        f"**scene `{name}`**: {len(jobs)} image{'s' if len(jobs) != 1 else ''}, "
        f"{first.width}x{first.height}, {first.steps} steps, `{first.sampler}`, seeds {seeds}",
        "",
    ]
    for prompt in list(dict.fromkeys(j.prompt for j in jobs))[:MAX_JOBS_SHOWN]:
        rows.append(f"prompt: `{prompt}`")
    if first.negative_prompt:
        rows.append(f"\nnegative: `{first.negative_prompt}`")
    if first.regions:
        rows.append("\nregions (x0, y0, x1, y1):")
        for r in first.regions:
            box = ", ".join(f"{x:.2f}" for x in r.box)
            rows.append(f"- `{r.subject}` ({box}): `{r.prompt}`")
    return "\n".join(rows)


def include_text(index: Index, occ: Occurrence) -> str:
    target = next((p for s, p in index.includes.items() if s == occ.span), None)
    if target is None:
        target = resolve_path(Path(occ.span.file).parent, occ.name)
    state = "" if target.is_file() else " (missing)"
    return f"**include** `{target}`{state}"
