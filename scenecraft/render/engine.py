"""The render engine: a RenderPlan to PNGs, a manifest and storyboards; progress as events.

``render`` runs these steps:
  1. select jobs (``only`` scenes/storyboards, ``shard``) and expand them to images;
  2. skip images whose PNG (or manifest entry) already carries the same image key;
  3. load the base model (unless a pipeline is given) and prepare it: the merged model applied
     in place (merge method != none), the base as is (none), or runtime LoRA adapters;
  4. render batches of compatible settings, one generator per image, halving on CUDA OOM;
  5. write each PNG atomically with provenance, and the manifest after every batch;
  6. draw the storyboards whose panels are on disk.
Steps 3-5 belong to the executor: `InProcess` here, or Ray actors (`scenecraft.render.executor`),
which render each batch through the same `_Session.run_batch` and hand the PNGs back.
Ctrl-C (KeyboardInterrupt) keeps every finished image and leaves a valid manifest.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scenecraft import __version__, models
from scenecraft.events import (
    BatchStarted,
    ImageWritten,
    JobSkipped,
    Notice,
    RenderFinished,
    RenderStarted,
    Reporter,
    StepDone,
    emit,
)
from scenecraft.merge.engine import ENGINE_REVISION
from scenecraft.plan import RenderPlan, generator_seed, stable_hash
from scenecraft.render import adapters as adapter_mod
from scenecraft.render.batching import (
    ImageTask,
    generators,
    image_key,
    make_batches,
    run_halving,
)
from scenecraft.render.finite import FiniteWatch
from scenecraft.render.layerwise import conditioned
from scenecraft.render.outputs import (
    METADATA_VERSION,
    Manifest,
    a1111_parameters,
    atomic_write,
    check_out_dir,
    check_unique_paths,
    confined,
    image_path,
    is_finished,
    write_png,
)
from scenecraft.render.regions import Adapters, regions_text
from scenecraft.render.samplers import make_scheduler, sampler_def
from scenecraft.render.selection import select_jobs
from scenecraft.render.storyboard import write_storyboards

if TYPE_CHECKING:
    from scenecraft.render.executor import Executor


@dataclass
class RenderResult:
    out_dir: Path  # the output root
    written: list[Path] = field(default_factory=list)  # images rendered by this run
    skipped: list[Path] = field(default_factory=list)  # images already up to date
    storyboards: list[Path] = field(default_factory=list)  # contact sheets and HTML pages
    manifest: Path | None = None  # the manifest written by this run
    seconds: float = 0.0  # wall time of the run
    mode: str = "merged"  # "merged", "base" or "adapters"
    merge_key: str = ""  # merge key recorded in every image

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "written": [str(p) for p in self.written],
            "skipped": [str(p) for p in self.skipped],
            "storyboards": [str(p) for p in self.storyboards],
            "manifest": str(self.manifest) if self.manifest else None,
            "seconds": round(self.seconds, 3),
            "mode": self.mode,
            "merge_key": self.merge_key,
        }


# ---------------------------------------------------------------------------- planning


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
        active = adapter_mod.active_adapters(plan.merge.concepts, job) if adapters else None
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
    `scenecraft.render.outputs.is_finished`)."""
    rel = task.path.relative_to(out_dir.resolve()).as_posix()
    size = (task.job.width, task.job.height)
    return is_finished(task.path, rel, task.key, manifest, size)


# ----------------------------------------------------------------------------- rendering


def render(
    plan: RenderPlan,
    out_dir: str | Path,
    *,
    pipe: Any = None,
    batch_size: int | None = None,
    only: Iterable[str] = (),
    shard: tuple[int, int] | None = None,
    force: bool = False,
    adapters: bool = False,
    reporter: Reporter | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
    executor: Executor | None = None,
) -> RenderResult:
    """Render ``plan`` into ``out_dir``; see the module docstring for the steps.

    ``executor`` decides where the batches run: in this process (None, the default) or on a
    Ray cluster (`scenecraft.render.executor.ray_executor`)."""
    start = time.perf_counter()
    out = Path(out_dir)
    check_out_dir(out)  # before any model loads
    mode = render_mode(plan, adapters)
    result = RenderResult(out.resolve(), mode=mode, merge_key=weights_key(plan, mode))
    # 1. Select and expand
    tasks = plan_images(plan, out, only=only, shard=shard, adapters=adapters)
    manifest = open_manifest(plan, out, mode, shard)
    result.manifest = manifest.path
    # 2. Skip what is up to date
    todo = []
    for task in tasks:
        if not force and is_up_to_date(task, manifest, result.out_dir):
            result.skipped.append(task.path)
            emit(reporter, JobSkipped(task.job.id, str(task.path), "up to date"))
        else:
            todo.append(task)
    size = max(1, batch_size or plan.batch_size)
    batches = make_batches(todo, size)
    emit(reporter, RenderStarted(len(todo), len(result.skipped), len(batches)))
    interrupted = ok = False
    try:
        if todo:
            session = _Session(plan, result, manifest, reporter, mode)
            work = Work(batches, size, pipe, device, dtype, cache_dir)
            (executor or InProcess()).run(session, work)
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        result.seconds = time.perf_counter() - start
        if ok or result.written:  # an error part-way still records the images it finished
            manifest.save(finished=ok, interrupted=interrupted)
        if ok:
            result.storyboards = write_storyboards(plan, out, adapters=adapters)
        if ok or interrupted:
            emit(
                reporter,
                RenderFinished(
                    len(result.written), len(result.skipped), result.seconds, interrupted
                ),
            )
    return result


def open_manifest(
    plan: RenderPlan, out: Path, mode: str, shard: tuple[int, int] | None
) -> Manifest:
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


@dataclass(frozen=True)
class Work:
    """The batches of one run and how to load the model that renders them (for an executor)."""

    batches: Sequence[Sequence[ImageTask]]  # grouped by `make_batches`, in order
    size: int  # images per pipeline call
    pipe: Any = None  # a loaded pipeline to reuse (in process only)
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | Path | None = None  # the merge cache


class InProcess:
    """The default executor: one pipeline in this process renders the batches in order."""

    def run(self, session: _Session, work: Work) -> None:
        pipe = session.prepare(work.pipe, work.device, work.dtype, work.cache_dir)
        session.run(pipe, work.batches, work.size)


class _Session:
    """State of one run: the prepared pipeline, schedulers by sampler, the output records."""

    def __init__(
        self,
        plan: RenderPlan,
        result: RenderResult,
        manifest: Manifest,
        reporter: Reporter | None,
        mode: str,
    ):

        self.plan, self.result, self.manifest, self.reporter = plan, result, manifest, reporter
        self.mode = mode
        self.model = models.model_info(plan.merge.base)
        self.schedulers: dict[str, Any] = {}
        self.scheduler_config: Any = None  # the model's own scheduler config, every sampler's base
        self.merge_entry = ""  # the merge engine's cache key, once the merge is applied
        self.confined: Adapters | None = None  # runtime adapters, confined to their regions

    # 3. Prepare the model
    def prepare(self, pipe: Any, device: str | None, dtype: str | None, cache_dir: Any) -> Any:
        if pipe is None:
            emit(self.reporter, Notice("info", f"loading {self.model.name}"))
            start = time.perf_counter()
            pipe = models.load_pipeline(self.plan.merge.base, device, dtype)
            took = time.perf_counter() - start
            emit(self.reporter, Notice("info", f"loaded {self.model.name} in {took:.1f} s"))

        if (note := models.sdxl_vae_note(pipe)) is not None:
            emit(self.reporter, Notice("info", note))
        pipe.set_progress_bar_config(disable=True)
        if self.mode == "adapters":
            adapter_mod.load_adapters(pipe, self.plan.merge.concepts, self.reporter)
            self.confined = Adapters(
                {
                    c.name: (adapter_mod.adapter_name(c), c.weight)
                    for c in self.plan.merge.concepts
                    if c.lora is not None
                }
            )
        elif self.mode == "merged":
            self.merge_entry = adapter_mod.build_and_apply_merge(
                pipe, self.plan.merge, cache_dir, self.reporter
            )
        return pipe

    # 4. Batches
    def run(self, pipe: Any, batches: Sequence[Sequence[ImageTask]], size: int) -> None:
        original = pipe.scheduler
        limit = size
        try:
            for index, batch in enumerate(batches):
                limit = self.run_batch(pipe, batch, index, len(batches), limit)
        finally:
            pipe.scheduler = original
            if self.mode == "adapters":
                adapter_mod.unload_adapters(pipe)

    def run_batch(
        self, pipe: Any, batch: Sequence[ImageTask], index: int, total: int, limit: int
    ) -> int:
        """Render one batch (one pipeline call, halved on OOM); returns the batch limit left.

        Every executor runs batches through here, in process or on a Ray worker."""
        steps = batch[0].job.steps
        emit(self.reporter, BatchStarted(index, total, tuple(t.job.id for t in batch), steps))
        for start in range(0, len(batch), limit):
            chunk = batch[start : start + limit]
            for done in run_halving(chunk, lambda part: self.call(pipe, part), self.on_oom):
                limit = min(limit, done)
        return limit

    def on_oom(self, old: int, new: int) -> None:
        emit(self.reporter, Notice("warning", f"out of memory at batch {old}; retrying with {new}"))

    def scheduler(self, pipe: Any, sampler: str) -> Any:
        if sampler not in self.schedulers:
            if self.scheduler_config is None:  # before any sampler replaced pipe.scheduler
                self.scheduler_config = pipe.scheduler.config
            self.schedulers[sampler] = make_scheduler(sampler, self.scheduler_config)
        return self.schedulers[sampler]

    def call(self, pipe: Any, tasks: Sequence[ImageTask]) -> None:
        job = tasks[0].job
        pipe.scheduler = self.scheduler(pipe, job.sampler)
        reporter = self.reporter
        watch = FiniteWatch(tasks)  # NaN/inf latents or pixels: nothing of the batch is written

        def on_step(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            watch.on_latents(i + 1, kwargs.get("latents"))
            emit(reporter, StepDone(i + 1, int(getattr(p, "num_timesteps", job.steps))))
            return kwargs

        if self.confined and self.confined.of and not job.regions:  # regional: confined
            adapter_mod.activate(pipe, self.plan.merge.concepts, tasks[0].adapters)
        with conditioned(pipe, [t.job for t in tasks], self.confined) as extra:
            prompts: dict[str, Any] = extra or {
                "prompt": [t.job.prompt for t in tasks],
                "negative_prompt": [job.negative_prompt] * len(tasks)
                if job.negative_prompt
                else None,
            }
            images = pipe(
                **prompts,
                width=job.width,
                height=job.height,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance,
                generator=generators(tasks),
                callback_on_step_end=on_step,
                output_type="np",  # checked for NaN/inf, then made PIL as diffusers would
            ).images
        images = watch.pictures(images)
        for task, image in zip(tasks, images, strict=True):
            self.write(task, image)
        self.flush()

    # 5. Outputs
    def write(self, task: ImageTask, image: Any) -> None:
        """Write one rendered image (a PIL image) with its provenance."""
        self.record(task, write_png(task.path, image, *self.png_text(task)))

    def store(self, task: ImageTask, png: bytes) -> None:
        """Write one image that was rendered and encoded elsewhere (a Ray worker)."""
        atomic_write(task.path, lambda f: f.write(png))
        self.record(task, hashlib.sha256(png).hexdigest())

    def flush(self) -> None:
        self.manifest.save(finished=False, interrupted=False)

    def png_text(self, task: ImageTask) -> tuple[str, dict[str, Any]]:
        """The PNG's A1111 ``parameters`` text and its ``scenecraft`` provenance."""
        job = task.job
        fields: dict[str, Any] = {
            "Steps": job.steps,
            "Sampler": job.sampler,
            "CFG scale": job.guidance,
            "Seed": task.seed,
            "Size": f"{job.width}x{job.height}",
            "Model hash": self.model.hash,
            "Model": self.model.name,
        }
        if self.mode == "merged":
            fields["Merge"] = f"{self.plan.merge.method} {self.result.merge_key[:10]}"
        elif self.mode == "adapters":
            fields["Lora"] = " ".join(c.name for c in self.plan.merge.concepts if c.lora)
        if job.regions:  # one value, quoted by a1111_parameters: A1111's PNG Info keeps it whole
            fields["Regions"] = regions_text(job)
        fields["Version"] = f"scenecraft {__version__}"
        provenance = {
            "version": METADATA_VERSION,
            "key": task.key,
            "job": job.model_dump(mode="json"),
            "n": task.n,
            "seed": task.seed,
            "span": job.span.model_dump(mode="json") if job.span else None,
            "merge_key": self.result.merge_key,
            "merge_method": self.plan.merge.method,
            "merge_entry": self.merge_entry,
            "mode": self.mode,
            "regions": [r.model_dump(mode="json") for r in job.regions],
            "model": {"name": self.model.name, "hash": self.model.hash},
            "plan": {"file": self.plan.file, "source_sha256": self.plan.source_sha256},
        }
        return a1111_parameters(job.prompt, job.negative_prompt, fields), provenance

    def record(self, task: ImageTask, digest: str) -> None:
        """Enter a written image (``digest``: the sha256 of its bytes) in the manifest."""
        job = task.job
        rel = task.path.relative_to(self.result.out_dir).as_posix()
        self.manifest.record(
            rel,
            {
                "key": task.key,
                "sha256": digest,
                "job": job.id,
                "scene": job.scene,
                "seed": task.seed,
                "n": task.n,
                **(
                    {"regions": [r.model_dump(mode="json") for r in job.regions]}
                    if job.regions
                    else {}
                ),
            },
        )
        self.result.written.append(task.path)
        emit(self.reporter, ImageWritten(job.id, str(task.path), job.scene, task.seed))
