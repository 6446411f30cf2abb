"""The per-batch worker every executor renders through, and where its images go.

`Session` holds one prepared pipeline's state (schedulers by sampler, the confined adapters, the
merge entry) and renders a batch in one pipeline call (`Session.run_batch`: halved on OOM,
NaN/inf checked), encoding each picture with `scenecraft.render.png.encode_png`. The encoded
bytes go to a `Sink`:

- `Recorder` (the driver: in process, or the Ray driver receiving a worker's bytes) writes the
  PNG atomically, enters it in the manifest and reports `ImageWritten`;
- `Kept` (a Ray worker) keeps the bytes for the driver.

So the bytes of an image are the same whichever executor rendered it. `Work` is what
`scenecraft.render.engine.render` hands an executor (`scenecraft.render.executor`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from scenecraft import __version__, models
from scenecraft.events import BatchStarted, ImageWritten, Notice, Reporter, StepDone, emit
from scenecraft.plan import RenderPlan
from scenecraft.render import adapters as adapter_mod
from scenecraft.render.batching import ImageTask
from scenecraft.render.finite import FiniteWatch
from scenecraft.render.halving import generators, run_halving
from scenecraft.render.layerwise import conditioned
from scenecraft.render.manifest import Manifest
from scenecraft.render.paths import atomic_write
from scenecraft.render.png import METADATA_VERSION, a1111_parameters, encode_png
from scenecraft.render.regions import Adapters, regions_text
from scenecraft.render.samplers import make_scheduler


class Sink(Protocol):
    """Where a session's encoded images go."""

    def put(self, task: ImageTask, png: bytes) -> None: ...

    def flush(self) -> None: ...


@dataclass
class Recorder:
    """The driver's sink: each PNG written atomically and entered in the manifest."""

    manifest: Manifest
    out_dir: Path  # the resolved output root (manifest entries are relative to it)
    reporter: Reporter | None = None
    written: list[Path] = field(default_factory=list)  # in the order they were written

    def put(self, task: ImageTask, png: bytes) -> None:
        atomic_write(task.path, lambda f: f.write(png))
        self.record(task, hashlib.sha256(png).hexdigest())

    def flush(self) -> None:
        self.manifest.save(finished=False, interrupted=False)

    def record(self, task: ImageTask, digest: str) -> None:
        """Enter a written image (``digest``: the sha256 of its bytes) in the manifest."""
        job = task.job
        entry: dict[str, Any] = {
            "key": task.key,
            "sha256": digest,
            "job": job.id,
            "scene": job.scene,
            "seed": task.seed,
            "n": task.n,
        }
        if job.regions:
            entry["regions"] = [r.model_dump(mode="json") for r in job.regions]
        self.manifest.record(task.path.relative_to(self.out_dir).as_posix(), entry)
        self.written.append(task.path)
        emit(self.reporter, ImageWritten(job.id, str(task.path), job.scene, task.seed))


@dataclass
class Kept:
    """A Ray worker's sink: the PNG bytes of the batch, in order, for the driver to write."""

    out: list[bytes] = field(default_factory=list)

    def put(self, task: ImageTask, png: bytes) -> None:
        self.out.append(png)

    def flush(self) -> None:
        pass


@dataclass(frozen=True)
class Work:
    """One run for an executor: what to render, how to load the model, where the images go."""

    plan: RenderPlan
    mode: str  # "merged", "base" or "adapters"
    merge_key: str  # the weights' key every image records
    recorder: Recorder  # the driver's records (every executor writes through it)
    batches: Sequence[Sequence[ImageTask]]  # grouped by `make_batches`, in order
    size: int  # images per pipeline call
    pipe: Any = None  # a loaded pipeline to reuse (in process only)
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | Path | None = None  # the merge cache

    @property
    def reporter(self) -> Reporter | None:
        return self.recorder.reporter


class Session:
    """State of one prepared pipeline: schedulers by sampler, adapters, the merge entry."""

    def __init__(
        self, plan: RenderPlan, mode: str, merge_key: str, reporter: Reporter | None, sink: Sink
    ):
        self.plan, self.mode, self.merge_key = plan, mode, merge_key
        self.reporter, self.sink = reporter, sink
        self.model = models.model_info(plan.merge.base)
        self.schedulers: dict[str, Any] = {}
        self.scheduler_config: Any = None  # the model's own scheduler config, every sampler's base
        self.merge_entry = ""  # the merge engine's cache key, once the merge is applied
        self.confined: Adapters | None = None  # runtime adapters, confined to their regions

    # 3. Prepare the model
    def load(self, device: str | None, dtype: str | None) -> Any:
        """The base pipeline, loaded (and timed in a notice)."""
        emit(self.reporter, Notice("info", f"loading {self.model.name}"))
        start = time.perf_counter()
        pipe = models.load_pipeline(self.plan.merge.base, device, dtype)
        took = time.perf_counter() - start
        emit(self.reporter, Notice("info", f"loaded {self.model.name} in {took:.1f} s"))
        return pipe

    def prepare(self, pipe: Any, device: str | None, dtype: str | None, cache_dir: Any) -> Any:
        """The pipeline ready to render: loaded when None, the merge applied (built or from
        the cache) or the runtime adapters loaded."""
        pipe = self.load(device, dtype) if pipe is None else pipe
        self.quiet(pipe)
        if self.mode == "adapters":
            self.load_adapters(pipe)
        elif self.mode == "merged":
            self.merge_entry = adapter_mod.build_and_apply_merge(
                pipe, self.plan.merge, cache_dir, self.reporter
            )
        return pipe

    def quiet(self, pipe: Any) -> None:
        """The VAE note of an SDXL pipeline, and no progress bar of diffusers'."""
        if (note := models.sdxl_vae_note(pipe)) is not None:
            emit(self.reporter, Notice("info", note))
        pipe.set_progress_bar_config(disable=True)

    def load_adapters(self, pipe: Any) -> None:
        adapter_mod.load_adapters(pipe, self.plan.merge.concepts, self.reporter)
        self.confined = Adapters(
            {
                c.name: (adapter_mod.adapter_name(c), c.weight)
                for c in self.plan.merge.concepts
                if c.lora is not None
            }
        )

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
        """One pipeline call for ``tasks``; each picture encoded and handed to the sink."""
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
            self.sink.put(task, encode_png(image, *self.png_text(task)))
        self.sink.flush()

    # 5. Outputs
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
            fields["Merge"] = f"{self.plan.merge.method} {self.merge_key[:10]}"
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
            "merge_key": self.merge_key,
            "merge_method": self.plan.merge.method,
            "merge_entry": self.merge_entry,
            "mode": self.mode,
            "regions": [r.model_dump(mode="json") for r in job.regions],
            "model": {"name": self.model.name, "hash": self.model.hash},
            "plan": {"file": self.plan.file, "source_sha256": self.plan.source_sha256},
        }
        return a1111_parameters(job.prompt, job.negative_prompt, fields), provenance
