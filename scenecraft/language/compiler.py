"""Checked program -> RenderPlan: the merge to build and one job per image.

Deterministic: the same input gives byte-identical JSON. Prompts are composed by
`scenecraft.prompts` (token + class noun, attributes bound to their subject).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from scenecraft import layout
from scenecraft import plan as p
from scenecraft.diagnostics import Diagnostic, DiagnosticError
from scenecraft.files import sha256_file
from scenecraft.language import nodes as n
from scenecraft.language.check import Checked, ConceptInfo, SceneInfo
from scenecraft.merge.config import Stages, parse
from scenecraft.prompts import SceneText, Subject, alone, anonymous, region_prompt, scene_prompt

CLIP_WINDOW = 77
MAX_JOBS = 100_000  # images per plan; `--max-jobs N` raises it (`too-many-jobs`)
MAX_SEED = 2**32 - 1  # generator seeds are 32-bit: image n of seed s uses s + n
# CLIP's pre-tokenizer: words, single digits, runs of punctuation.
_WORDS = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+"
)


def estimate_tokens(prompt: str) -> int:
    """CLIP tokens a prompt uses, start and end tokens included.

    An estimate without the model's tokenizer: each pre-token counts one BPE token, plus one
    per 8 letters beyond the first 8 (long rare words split). Exact counts need the base model.
    """
    count = 2
    for word in _WORDS.findall(prompt.lower()):
        count += 1 + max(len(word) - 8, 0) // 8
    return count


def file_digest(path: str) -> str:
    """sha256 of a LoRA file for the merge key ("missing" when there is no regular file)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return "missing"
    if not stat.S_ISREG(st.st_mode):  # `lora ""` names the folder itself
        return "missing"
    return sha256_file(path)


# --------------------------------------------------------------------------------- concepts


def concept_words(info: ConceptInfo) -> str:
    words = " ".join(info.tokens)
    if info.kind == "style":
        return f"{words} {info.class_noun or 'style'}"
    return f"{words} {info.class_noun}" if info.class_noun else words


def concept_spec(info: ConceptInfo) -> p.ConceptSpec:
    return p.ConceptSpec(
        name=info.name,
        tokens=info.tokens,
        lora=info.lora,
        weight=info.weight,
        class_noun=info.class_noun,
        kind=info.kind,  # type: ignore[arg-type]
        embedding=info.embedding,
        references=info.references,
        placeholder=info.placeholder,
    )


def scene_prompts(checked: Checked, composed: dict[str, Composed]) -> dict[str, tuple[str, ...]]:
    """concept -> the distinct prompts the plan renders it with, in scene order (what merge
    `scene_prompts` hands the merge as extra feature prompts): its region prompts in regional
    scenes, the scene's prompt where it is drawn from one prompt."""
    out: dict[str, list[str]] = {}

    def add(concept: str, prompt: str) -> None:
        if prompt not in out.setdefault(concept, []):
            out[concept].append(prompt)

    for scene in composed.values():
        for r in scene.regions:
            if r.subject in checked.concepts:
                add(r.subject, r.prompt)
        if not scene.regions:
            for name in dict.fromkeys(_names(scene.text, checked)):
                if name in checked.concepts:
                    add(name, scene.prompt)
    return {c: tuple(ps) for c, ps in out.items()}


def merge_spec(checked: Checked, used: list[str], composed: dict[str, Composed]) -> p.MergeSpec:
    model = checked.model
    base = (
        p.BaseModelSpec(source=model.source, family=model.family, revision=model.revision)  # type: ignore[arg-type]
        if model
        else p.BaseModelSpec(source="")
    )
    concepts = tuple(concept_spec(checked.concepts[c]) for c in checked.concepts if c in used)
    params = parse(checked.merge_method, checked.merge_params)  # checked: rules hold
    if isinstance(params, Stages) and params.scene_prompts:  # the merge reads them: key
        prompts = scene_prompts(checked, composed)
        concepts = tuple(
            c.model_copy(update={"prompts": prompts.get(c.name, ())}) for c in concepts
        )
    spec = p.MergeSpec(
        base=base,
        concepts=concepts,
        params=params,
    )
    files = [
        (file_digest(c.lora) if c.lora else None, file_digest(c.embedding) if c.embedding else None)
        for c in concepts
    ]
    key = p.merge_key(spec, files)
    return spec.model_copy(update={"key": key})


# ----------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Composed:
    """A scene's settings and prompts, derived once per compile: read by the merge
    (`scene_prompts`) and by the scene's jobs."""

    settings: dict[str, Any]  # `defaults` overridden by the scene's own settings
    text: SceneText  # the whole scene
    prompt: str  # the global prompt (the setting, style, interactions with regions on)
    regions: tuple[p.Region, ...]  # () when the scene is drawn from one prompt


def compose(checked: Checked, scene: SceneInfo) -> Composed:
    settings = {**checked.defaults, **scene.settings}
    text = scene_text(checked, scene, settings)
    global_text, regions = scene_regions(checked, scene, settings, text)
    return Composed(settings, text, scene_prompt(global_text), regions)


def clean(text: str) -> str:
    """Prompt text on one line: runs of whitespace (from multi-line strings) become one space."""
    return " ".join(text.split())


def _opt(settings: dict[str, Any], key: str) -> str | None:
    value = settings.get(key)
    return clean(value) if value else None


def scene_text(checked: Checked, scene: SceneInfo, settings: dict[str, Any]) -> SceneText:
    """The scene as prompt structure, from what the checker resolved (``scene.body``)."""
    body = scene.body
    order = body.order
    attrs = {name: [(verb, clean(text)) for verb, text in a] for name, a in body.attributes.items()}
    clauses = body.clauses
    activity = clean(body.activity) if body.activity else None
    subjects = []
    styles = []
    for name in order:
        info = checked.concepts.get(name)
        if info is not None and info.kind == "style":
            styles.append(concept_words(info))
            continue
        words = concept_words(info) if info else clean(scene.objects[name])
        subjects.append(Subject(name, words, tuple(attrs.get(name, ())), info is None))
    named_style = settings.get("style_concept")  # `style noir` naming a style concept
    if named_style and named_style in checked.concepts:
        styles.append(concept_words(checked.concepts[named_style]))
    free_style = _opt(settings, "style")
    style = ", ".join([*dict.fromkeys(styles), *([free_style] if free_style else [])]) or None
    light = [x for x in (_opt(settings, "time"), _opt(settings, "lighting")) if x]
    return SceneText(
        subjects=tuple(subjects),
        clauses=tuple(clauses),
        activity=activity,
        setting=_opt(settings, "setting"),
        lighting=", ".join(light) or None,
        style=style,
        prefix=_opt(settings, "prefix"),
        extra=tuple(clean(x) for x in settings.get("extra", ())),
    )


def _span(s: n.Span) -> p.SourceSpan:
    return p.SourceSpan(file=s.file, line=s.line, col=s.col, end_line=s.end_line, end_col=s.end_col)


def scene_regions(
    checked: Checked, scene: SceneInfo, settings: dict[str, Any], text: SceneText
) -> tuple[SceneText, tuple[p.Region, ...]]:
    """The global text and one region per subject, or (text, ()) when the scene has none.

    A scene is regional with two or more concepts, or any explicit area, unless `regions off`.
    Single-concept scenes keep their one prompt (and so their images) exactly. A region's
    prompt leads with its subject's identity and attributes, token first as its LoRA was
    trained, then the global prompt (`regions on`), or is the subject alone in the setting
    (`regions alone`, Mix-of-Show's region prompts).
    """
    concepts = [s.name for s in text.subjects if s.name in checked.concepts]
    mode = settings.get("regions", "on")
    if mode == "off" or (len(concepts) < 2 and not scene.body.areas):
        return text, ()
    placements = [(c.subject, c.verb, c.targets[0]) for c in text.clauses if c.is_placement]
    names = [s.name for s in text.subjects]
    boxes = layout.derive(names, placements, scene.body.areas, settings.get("layout", "auto"))
    plain = {c: checked.concepts[c].class_noun or "someone" for c in concepts}
    regions = []
    for name in names:
        info = checked.concepts.get(name)
        if mode == "alone":  # Mix-of-Show: the subject alone in the setting
            prompt = scene_prompt(alone(text, name))
        else:  # this subject's identity and attributes first, then the global prompt
            prompt = region_prompt(text, plain, name)
        regions.append(
            p.Region(
                subject=name,
                box=boxes[name],
                prompt=prompt,
                negative_prompt=clean(info.negative) if info and info.negative else None,
                prompt_tokens=estimate_tokens(prompt),
            )
        )
    return anonymous(text, plain), tuple(regions)


def _warn_long(
    what: str, prompt: str, tokens: int, anchor: n.Span, warnings: list[Diagnostic]
) -> None:
    if tokens > CLIP_WINDOW:
        warnings.append(
            Diagnostic(
                "prompt-too-long",
                f"the prompt of {what} uses about {tokens} tokens; "
                f"the text encoder reads only {CLIP_WINDOW}",
                anchor,
                severity="warning",
                notes=(f"prompt: {prompt}",),
                help="Stable Diffusion silently drops the rest: shorten attributes or the setting",
            )
        )


def scene_jobs(
    checked: Checked,
    scene: SceneInfo,
    composed: Composed,
    merge_key: str,
    warnings: list[Diagnostic],
) -> list[p.RenderJob]:
    settings, text = composed.settings, composed.text
    prompt, regions = composed.prompt, composed.regions
    tokens = estimate_tokens(prompt)
    anchor = scene.anchor
    _warn_long(f"scene `{scene.name}`", prompt, tokens, anchor, warnings)
    for r in regions:
        _warn_long(
            f"region `{r.subject}` of scene `{scene.name}`",
            r.prompt,
            r.prompt_tokens,
            anchor,
            warnings,
        )
    concepts = tuple(x for x in _names(text, checked) if x in checked.concepts)
    objects = tuple(s.name for s in text.subjects if s.name in scene.objects)
    placements = tuple(
        p.Placement(subject=c.subject, relation=c.verb, target=c.targets[0])  # type: ignore[arg-type]
        for c in text.clauses
        if c.is_placement
    )
    width, height = settings["size"]
    _warn_overlapping_seeds(scene, settings, anchor, warnings)
    jobs = []
    for seed in settings["seeds"]:
        for k in range(settings["images_per_seed"]):
            fields: dict[str, Any] = {
                "prompt": prompt,
                "negative_prompt": clean(settings["negative"]),
                "seed": seed,
                "index": k,
                "width": width,
                "height": height,
                "steps": settings["steps"],
                "guidance": settings["guidance"],
                "sampler": settings["sampler"],
            }
            if regions:  # region-less jobs keep the ids (and image keys) they always had
                fields["regions"] = regions
            job_id = p.stable_hash(
                {
                    **fields,
                    "regions": [r.model_dump(mode="json") for r in regions],
                    "merge": merge_key,
                }
                if regions
                else {**fields, "merge": merge_key},
                16,
            )
            jobs.append(
                p.RenderJob(
                    id=job_id,
                    file=checked.program.main.path,
                    scene=scene.name,
                    storyboard=scene.storyboard,
                    concepts=concepts,
                    objects=objects,
                    placements=placements,
                    span=_span(anchor),
                    prompt_tokens=tokens,
                    **fields,
                )
            )
    return jobs


def _warn_overlapping_seeds(
    scene: SceneInfo, settings: dict[str, Any], anchor: n.Span, warnings: list[Diagnostic]
) -> None:
    """Image n of seed s uses seed s + n (A1111's convention): say when two images coincide."""
    per_seed = settings["images_per_seed"]
    if per_seed <= 1:
        return
    used = [s + k for s in settings["seeds"] for k in range(per_seed)]
    if len(set(used)) < len(used):
        warnings.append(
            Diagnostic(
                "overlapping-seeds",
                f"scene `{scene.name}` renders some images twice: with `images_per_seed "
                f"{per_seed}`, seed s also renders "
                + ("seed s+1" if per_seed == 2 else f"seeds s+1 to s+{per_seed - 1}"),
                anchor,
                severity="warning",
                help=f"space the seeds at least {per_seed} apart, e.g. `seeds 1, {1 + per_seed}`",
            )
        )


def _names(text: SceneText, checked: Checked) -> list[str]:
    names = [s.name for s in text.subjects]
    for c in text.clauses:
        names.extend([c.subject, *c.targets])
    for name, info in checked.concepts.items():
        if info.kind == "style" and any(t in (text.style or "") for t in info.tokens):
            names.append(name)
    return list(dict.fromkeys(names))


def used_concepts(checked: Checked) -> list[str]:
    used: set[str] = set()
    for scene in checked.scenes.values():
        used |= scene.body.mentions
    return [c for c in checked.concepts if c in used]


def check_image_bounds(checked: Checked, max_jobs: int) -> None:
    """Before any job exists: every seed s + n fits 32 bits, and the plan's images <= max_jobs."""
    errors: list[Diagnostic] = []
    total = 0
    largest: tuple[int, SceneInfo] | None = None
    for scene in checked.scenes.values():
        settings = {**checked.defaults, **scene.settings}
        seeds, per_seed = settings["seeds"], settings["images_per_seed"]
        anchor = scene.node.name if scene.node.name.name else scene.node
        if seeds and max(seeds) + per_seed - 1 > MAX_SEED:
            errors.append(
                Diagnostic(
                    "value-out-of-range",
                    f"scene `{scene.name}` renders seed {max(seeds) + per_seed - 1}: with "
                    f"`images_per_seed {per_seed}`, image n of seed s uses seed s + n, and "
                    f"seeds must be in [0, {MAX_SEED}]",
                    anchor.span,
                    help=f"use seeds up to {MAX_SEED - per_seed + 1}",
                )
            )
        images = len(seeds) * per_seed
        total += images
        if largest is None or images > largest[0]:
            largest = (images, scene)
    if total > max_jobs and largest is not None:
        anchor = largest[1].node.name if largest[1].node.name.name else largest[1].node
        errors.append(
            Diagnostic(
                "too-many-jobs",
                f"the file asks for {total:,} images in all (at most {max_jobs:,} per plan)",
                anchor.span,
                label=f"the largest scene: {largest[0]:,} images",
                help="render fewer scenes or seeds per file, or raise the cap with `--max-jobs N`",
            )
        )
    if errors:
        raise DiagnosticError(errors)


def compile_plan(
    checked: Checked,
    *,
    source_text: str,
    template_vars: dict[str, Any] | None = None,
    rendered_source: str | None = None,
    max_jobs: int | None = None,
) -> tuple[p.RenderPlan, list[Diagnostic]]:
    """The RenderPlan of a checked program, plus compile-time warnings."""
    check_image_bounds(checked, MAX_JOBS if max_jobs is None else max_jobs)
    warnings: list[Diagnostic] = []
    composed = {name: compose(checked, scene) for name, scene in checked.scenes.items()}
    merge = merge_spec(checked, used_concepts(checked), composed)
    jobs: list[p.RenderJob] = []
    by_scene: dict[str, list[p.RenderJob]] = {}
    for name, scene in checked.scenes.items():
        scene_list = scene_jobs(checked, scene, composed[name], merge.key, warnings)
        by_scene[name] = scene_list
        jobs.extend(scene_list)
    boards = []
    for board in checked.storyboards.values():
        panels = tuple(
            p.PanelSpec(
                index=i,
                scene=panel.scene,
                caption=panel.caption,
                job_ids=tuple(j.id for j in by_scene.get(panel.scene, ())),
            )
            for i, panel in enumerate(board.panels)
        )
        boards.append(
            p.StoryboardSpec(
                name=board.name, columns=board.columns, title=board.title, panels=panels
            )
        )
    jobs = _with_panels(jobs, checked.storyboards.values())
    plan = p.RenderPlan(
        file=checked.program.main.path,
        source_sha256=hashlib.sha256(source_text.encode()).hexdigest(),
        template_vars=template_vars or {},
        rendered_source=rendered_source,
        merge=merge,
        batch_size=checked.defaults["batch_size"],
        images_per_seed=checked.defaults["images_per_seed"],
        jobs=tuple(_dedupe(jobs)),
        storyboards=tuple(boards),
    )
    return plan, warnings


def _with_panels(jobs: list[p.RenderJob], boards: Iterable[Any]) -> list[p.RenderJob]:
    """Each storyboard job with its panel's caption and 0-based index (one pass, by dict)."""
    where: dict[str, dict[str, tuple[str | None, int | None]]] = {}
    for board in boards:
        found = where.setdefault(board.name, {})
        for i, panel in enumerate(board.panels):
            caption = str(panel.caption) if panel.caption is not None else None
            found.setdefault(panel.scene, (caption, i))  # the first panel showing the scene
    out = []
    for j in jobs:
        if j.storyboard is not None and j.storyboard in where:
            caption, index = where[j.storyboard].get(j.scene, (None, None))
            j = j.model_copy(update={"caption": caption, "panel": index})
        out.append(j)
    return out


def _dedupe(jobs: list[p.RenderJob]) -> list[p.RenderJob]:
    seen: set[tuple[str, str]] = set()
    out = []
    for j in jobs:
        key = (j.scene, j.id)
        if key not in seen:
            seen.add(key)
            out.append(j)
    return out
