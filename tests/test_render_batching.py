"""Batching: grouping, per-image generators (batch-size invariance), OOM halving, shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scenecraft.diagnostics import DiagnosticError
from scenecraft.events import Notice
from scenecraft.render.batching import ImageTask, make_batches
from scenecraft.render.engine import render
from scenecraft.render.selection import parse_shard, select_jobs, shard_of
from tests._fixtures_render import (
    Recorder,
    make_job,
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    pixels,
    tiny_pipe,
)


def _task(job: Any, n: int = 0) -> ImageTask:
    return ImageTask(job, n, job.seed + n, Path(f"/x/{job.id}-{n}.png"), job.id)


def test_batches_group_compatible_settings_in_first_seen_order() -> None:
    jobs = [
        make_job("a", 1, "p"),
        make_job("b", 2, "p", steps=3),
        make_job("a", 3, "q"),
        make_job("c", 4, "p", negative="ugly"),
        make_job("a", 5, "r"),
        make_job("b", 6, "q", steps=3),
    ]
    batches = make_batches([_task(j) for j in jobs], 2)
    seeds = [[t.seed for t in b] for b in batches]
    assert seeds == [[1, 3], [5], [2, 6], [4]]
    assert make_batches([], 4) == []


def _render_seeds(pipe: Any, out: Path, batch_size: int, sampler: str) -> list[Any]:
    plan = make_plan(seeds=(7, 8, 9, 10), scenes=("duo",), batch_size=batch_size, sampler=sampler)
    result = render(plan, out, pipe=pipe)
    return [pixels(p) for p in result.written]


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_an_image_depends_on_its_seed_not_on_the_batch(tmp_path: Path, sampler: str) -> None:
    pipe = tiny_pipe()
    # fp64 makes the batched kernels' rounding (~1e-6 in fp32) invisible after 8-bit
    # quantisation, so any difference left would come from the noise: none is allowed.
    pipe.to(torch.float64)
    try:
        one = _render_seeds(pipe, tmp_path / "b1", 1, sampler)
        four = _render_seeds(pipe, tmp_path / "b4", 4, sampler)
    finally:
        pipe.to(torch.float32)
    for a, b in zip(one, four, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(one[0], one[1])  # seeds 7 and 8 differ
    # in fp32 the same holds up to one 8-bit level where a batched kernel rounds differently
    f1 = _render_seeds(pipe, tmp_path / "f1", 1, sampler)
    f4 = _render_seeds(pipe, tmp_path / "f4", 4, sampler)
    for a, b in zip(f1, f4, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1 and (a == b).mean() > 0.99


class OOMPipe:
    """Wraps a pipeline; raises CUDA OOM for calls with more than ``limit`` prompts."""

    def __init__(self, pipe: Any, limit: int) -> None:
        self.pipe, self.limit, self.calls = pipe, limit, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("pipe", "limit", "calls"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipe, name, value)

    def __call__(self, **kw: Any) -> Any:
        self.calls.append(len(kw["prompt"]))
        if len(kw["prompt"]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return self.pipe(**kw)


def test_oom_halves_the_batch_and_loses_no_image(tmp_path: Path) -> None:
    plan = make_plan(seeds=(1, 2, 3, 4, 5), scenes=("duo",), batch_size=4)
    fake = OOMPipe(tiny_pipe(), limit=1)
    rec = Recorder()
    result = render(plan, tmp_path, pipe=fake, reporter=rec)
    assert sorted(p.name for p in result.written) == [f"{s}.png" for s in (1, 2, 3, 4, 5)]
    # 4 -> OOM, 2 -> OOM, 1, 1, 2 -> OOM, 1, 1; then the last batch starts at the smaller size
    assert fake.calls == [4, 2, 1, 1, 2, 1, 1, 1]
    notices = [e.message for e in rec.of(Notice)]
    assert "out of memory at batch 4; retrying with 2" in notices
    reference = render(plan, tmp_path / "ref", pipe=tiny_pipe(), batch_size=1)
    for a, b in zip(sorted(result.written), sorted(reference.written), strict=True):
        assert np.abs(pixels(a).astype(int) - pixels(b)).max() <= 1


def test_oom_on_a_single_image_is_a_diagnostic(tmp_path: Path) -> None:
    plan = make_plan(seeds=(1,), scenes=("duo",))
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=OOMPipe(tiny_pipe(), limit=0))
    assert exc.value.errors[0].code == "out-of-memory"
    assert exc.value.errors[0].help is not None


def test_shards_partition_the_jobs_exactly_once() -> None:
    plan = make_plan(seeds=tuple(range(20)), scenes=("duo", "solo", "trio"))
    ids = [j.id for j in plan.jobs]
    for n in (1, 2, 3, 5):
        parts = [[j.id for j in select_jobs(plan, shard=(i, n))] for i in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(ids)  # every job exactly once
        assert parts == [[j.id for j in select_jobs(plan, shard=(i, n))] for i in range(1, n + 1)]
        if n > 1:
            assert all(parts)  # 60 jobs: no shard is empty
    assert shard_of("abc", 7) == shard_of("abc", 7)
    # the shard depends on the job id only, not on the job's position in the plan
    reversed_plan = plan.model_copy(update={"jobs": tuple(reversed(plan.jobs))})
    assert {j.id for j in select_jobs(reversed_plan, shard=(2, 3))} == {
        j.id for j in select_jobs(plan, shard=(2, 3))
    }


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", "-1/2"])
def test_bad_shards(text: str) -> None:
    with pytest.raises(DiagnosticError) as exc:
        parse_shard(text)
    assert exc.value.errors[0].code == "bad-shard"


def test_good_shard() -> None:
    assert parse_shard("2/4") == (2, 4) and parse_shard("1/1") == (1, 1)
