"""What a run would render, without a model: images, their keys and paths, what is up to date.

    tasks = plan_images(plan, "out")            # every image of the selection, keyed
    view = preview(plan, "out", cache_dir=...)  # + up to date or not, + the merge cache (dry run)

Pure Python and PIL: `scenecraft render --dry-run` plans through here and never imports torch
(`scenecraft.render.engine.render` runs the same functions before it loads the model).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scenecraft import __version__
from scenecraft.merge.cache import EntryInfo, entries, resolve_cache_dir
from scenecraft.merge.config import ENGINE_REVISION
from scenecraft.plan import RenderPlan, generator_seed, stable_hash
from scenecraft.render.adapters import active_adapters
from scenecraft.render.batching import ImageTask, image_key
from scenecraft.render.manifest import Manifest, is_finished
from scenecraft.render.paths import check_unique_paths, confined, image_path
from scenecraft.render.samplers import sampler_def
from scenecraft.render.selection import select_jobs

UP_TO_DATE, RENDER = "up to date", "render"


def render_mode(plan: RenderPlan, adapters: bool) -> str:
    if adapters:
        return "adapters"
    return "base" if plan.merge.method == "none" else "merged"


def weights_key(plan: RenderPlan, mode: str) -> str:
    """The key of the weights an image is rendered with (base only, or base + LoRAs)."""
    if mode == "base":
        return stable_hash(plan.merge.base.model_dump(mode="json"))
    return plan.merge.key or stable_hash(plan.merge.model_dump(mode="json"))


def plan_images(
    plan: RenderPlan,
    out_dir: str | Path,
    *,
    only: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
    adapters: bool = False,
) -> list[ImageTask]:
    """Every image the selection asks for, with its path and key (nothing is rendered)."""
    out = Path(out_dir)
    mode = render_mode(plan, adapters)
    wkey = weights_key(plan, mode)
    revision = ENGINE_REVISION if mode == "merged" else None  # merged weights: engine-made
    suffix = ".adapters" if adapters else ""
    tasks = []
    memo: dict[tuple[str, ...], Path] = {}  # resolved folders, for this pass only
    for job in select_jobs(plan, only, shard):
        sampler_def(job.sampler)  # unknown samplers fail before any work
        path = image_path(out, job, suffix, memo)
        active = active_adapters(plan.merge.concepts, job) if adapters else None
        key = image_key(job, job.index, wkey, mode, active, revision)
        tasks.append(ImageTask(job, job.index, generator_seed(job), path, key, active or ()))
    check_unique_paths(_output_sources(plan, out, tasks, suffix))  # before anything renders
    return tasks


def _output_sources(
    plan: RenderPlan, out: Path, tasks: list[ImageTask], suffix: str
) -> Iterable[tuple[Path, str]]:
    """(path, what writes it) for every image and storyboard sheet of the selection."""
    for t in tasks:
        j = t.job
        where = f"scene `{j.scene}`"
        if j.storyboard is not None:
            where = f"storyboard `{j.storyboard}` panel {(j.panel or 0) + 1} ({where})"
        yield t.path, f"{where} seed {t.seed}"
    stem = Path(plan.file).stem or "scene"
    for board in plan.storyboards:
        yield confined(out, stem, board.name + suffix + ".png"), f"storyboard `{board.name}`"


def is_up_to_date(task: ImageTask, manifest: Manifest, out_dir: Path) -> bool:
    """A complete PNG of the job's size with the task's key (verified:
    `scenecraft.render.manifest.is_finished`)."""
    rel = task.path.relative_to(out_dir.resolve()).as_posix()
    size = (task.job.width, task.job.height)
    return is_finished(task.path, rel, task.key, manifest, size)


def open_manifest(
    plan: RenderPlan, out: Path, mode: str, shard: tuple[int, int] | None
) -> Manifest:
    """The run's manifest (``<stem>/manifest[.adapters][.shard-i-of-n].json``) with its header."""
    name = "manifest"
    if mode == "adapters":
        name += ".adapters"
    if shard is not None:
        name += f".shard-{shard[0]}-of-{shard[1]}"
    path = confined(out, Path(plan.file).stem or "scene", name + ".json")
    header = {
        "scenecraft": __version__,
        "plan_file": plan.file,
        "plan_path": plan_path(plan),  # the resolved source: its output folder's owner
        "source_sha256": plan.source_sha256,
        "template_vars": plan.template_vars,
        "mode": mode,
        "merge_method": plan.merge.method,
        "merge_key": weights_key(plan, mode),
        "base": plan.merge.base.model_dump(mode="json"),
        "shard": list(shard) if shard else None,
        # what `scenecraft review` shows beside each image (references are absolute paths)
        "concepts": {
            c.name: {
                "tokens": list(c.tokens),
                "class": c.class_noun,
                "references": list(c.references),
            }
            for c in plan.merge.concepts
        },
    }
    return Manifest.open(path, header)


def plan_path(plan: RenderPlan) -> str:
    """The scene file's resolved path (as given when it cannot be resolved)."""
    try:
        return str(Path(plan.file).resolve())
    except (OSError, RuntimeError):
        return plan.file


# ---------------------------------------------------------------------------- the dry run


@dataclass(frozen=True)
class CachedMerges:
    """What the merge cache holds for a plan's merge (manifests only, no model)."""

    found: list[EntryInfo]  # entries built for this plan's merge key (any dtype)
    older: int  # entries that do not record their plan key (cannot be matched)


@dataclass(frozen=True)
class Preview:
    """A run as `render` would do it, rendered nothing: each image with its status."""

    plan: RenderPlan
    mode: str  # "merged", "base" or "adapters"
    merge_key: str  # the weights' key every image records
    out_root: Path  # the resolved output root
    rows: list[tuple[ImageTask, str]]  # (image, UP_TO_DATE or RENDER), in plan order
    cache_dir: str | Path | None = None

    @property
    def needed(self) -> bool:
        """Whether any image would be rendered."""
        return any(status == RENDER for _, status in self.rows)

    @functools.cached_property
    def merges(self) -> CachedMerges:
        """The merge cache's entries for this plan's merge (read once, when asked)."""
        listed = entries(resolve_cache_dir(self.cache_dir))
        found = [e for e in listed if e.plan_key == self.plan.merge.key]
        return CachedMerges(found, sum(1 for e in listed if not e.plan_key))


def preview(
    plan: RenderPlan,
    out_dir: str | Path,
    *,
    only: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
    adapters: bool = False,
    force: bool = False,
    cache_dir: str | Path | None = None,
) -> Preview:
    """What ``render`` with the same arguments would render and skip (``--dry-run``)."""
    tasks = plan_images(plan, out_dir, only=only, shard=shard, adapters=adapters)
    mode = render_mode(plan, adapters)
    manifest = open_manifest(plan, Path(out_dir), mode, shard)
    out_root = Path(out_dir).resolve()
    rows = [
        (t, UP_TO_DATE if not force and is_up_to_date(t, manifest, out_root) else RENDER)
        for t in tasks
    ]
    return Preview(plan, mode, weights_key(plan, mode), out_root, rows, cache_dir)
