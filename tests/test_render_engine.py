"""End to end through `scenecraft.render.engine.render` on the tiny in-process model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scenecraft.diagnostics import DiagnosticError
from scenecraft.events import (
    BatchStarted,
    ImageWritten,
    JobSkipped,
    RenderFinished,
    RenderStarted,
    StepDone,
)
from scenecraft.render.engine import plan_images, render
from scenecraft.render.outputs import read_png_metadata
from tests._fixtures_render import (
    Recorder,
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    pixels,
    tiny_pipe,
)


def test_two_concepts_render_base_and_adapters_side_by_side(tmp_path: Path) -> None:
    plan = make_plan(batch_size=2)
    pipe = tiny_pipe()
    base = render(plan, tmp_path, pipe=pipe)
    assert base.mode == "base" and len(base.written) == 4 and not base.skipped
    rec = Recorder()
    adapted = render(plan, tmp_path, pipe=pipe, adapters=True, reporter=rec)
    assert adapted.mode == "adapters"
    assert [p.name for p in adapted.written] == ["1.adapters.png", "2.adapters.png"] * 2
    # the LoRAs change the picture; the adapters are gone afterwards (base renders as before)
    for b, a in zip(base.written, adapted.written, strict=True):
        assert b.parent == a.parent
        assert np.abs(pixels(b).astype(int) - pixels(a)).max() > 8
    again = render(plan, tmp_path / "again", pipe=pipe)
    for first, second in zip(base.written, again.written, strict=True):
        assert np.array_equal(pixels(first), pixels(second))
    assert not getattr(pipe.unet, "peft_config", None)
    meta = read_png_metadata(adapted.written[0])
    assert meta.fields["Lora"] == "ziggy momo" and meta.scenecraft["mode"] == "adapters"
    # events: started, batches with steps, one ImageWritten per image, finished
    assert rec.of(RenderStarted)[0].total == 4 and rec.of(RenderStarted)[0].batches == 2
    assert [e.index for e in rec.of(BatchStarted)] == [0, 1]
    assert [e.step for e in rec.of(StepDone)] == [1, 2, 1, 2]
    assert len(rec.of(ImageWritten)) == 4 and rec.of(RenderFinished)[0].written == 4


def test_merged_mode_without_merge_engine_is_a_diagnostic(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "scenecraft.merge.api", None)  # import fails
    with pytest.raises(DiagnosticError) as exc:
        render(make_plan(method="linear"), tmp_path, pipe=tiny_pipe())
    assert exc.value.errors[0].code == "merge-unavailable"


def test_rerun_skips_up_to_date_images_without_loading_a_model(tmp_path: Path) -> None:
    plan = make_plan(seeds=(1,), base=str(tmp_path / "no-such-model"))
    first = render(plan, tmp_path, pipe=tiny_pipe())
    assert len(first.written) == 2
    stamp = {p: p.stat().st_mtime_ns for p in first.written}
    rec = Recorder()
    second = render(plan, tmp_path, reporter=rec)  # pipe=None: loading would fail
    assert second.written == [] and sorted(second.skipped) == sorted(first.written)
    assert len(rec.of(JobSkipped)) == 2 and rec.of(RenderStarted)[0].total == 0
    assert {p: p.stat().st_mtime_ns for p in first.written} == stamp
    # --force renders again (and so needs a model)
    forced = render(plan, tmp_path, pipe=tiny_pipe(), force=True)
    assert sorted(forced.written) == sorted(first.written)
    # a changed job (more steps) changes the key: only that scene is redone
    changed = make_plan(seeds=(1,), base=str(tmp_path / "no-such-model"), steps=3)
    redo = render(changed, tmp_path, pipe=tiny_pipe(), only=["solo"])
    assert [p.parent.name for p in redo.written] == ["solo"] and redo.skipped == []


def test_manifest_does_not_vouch_for_a_png_without_our_chunk(tmp_path: Path) -> None:
    """Provenance is the picture's own: a PNG without our chunk is rendered again even when
    the manifest names its key (issue 32: a foreign black PNG was adopted that way)."""
    from PIL import Image

    plan = make_plan(seeds=(1,), scenes=("solo",))
    result = render(plan, tmp_path, pipe=tiny_pipe())
    path = result.written[0]
    Image.open(path).convert("RGB").save(path)  # strips text chunks (an optimiser did it)
    assert read_png_metadata(path).scenecraft is None
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert again.written == [path] and not again.skipped


def test_ctrl_c_keeps_finished_images_and_a_valid_manifest(tmp_path: Path) -> None:
    plan = make_plan(seeds=(1, 2), batch_size=1)  # 4 images, 4 batches

    def second_batch_step(event: object, rec: Recorder) -> bool:
        return isinstance(event, StepDone) and len(rec.of(BatchStarted)) == 3

    rec = Recorder(raise_at=second_batch_step)
    with pytest.raises(KeyboardInterrupt):
        render(plan, tmp_path, pipe=tiny_pipe(), reporter=rec)
    pngs = sorted(tmp_path.rglob("*.png"))
    assert len(pngs) == 2 and not list(tmp_path.rglob("*.tmp"))
    manifest = json.loads((tmp_path / "story" / "manifest.json").read_text())
    assert manifest["interrupted"] is True and manifest["finished"] is False
    assert sorted(manifest["images"]) == sorted(p.relative_to(tmp_path).as_posix() for p in pngs)
    assert rec.of(RenderFinished)[0].interrupted and rec.of(RenderFinished)[0].written == 2
    assert tiny_pipe().scheduler.__class__.__name__ == "DDIMScheduler"  # restored
    # resuming renders only the two that were missing
    resumed = render(plan, tmp_path, pipe=tiny_pipe())
    assert len(resumed.written) == 2 and len(resumed.skipped) == 2
    final = json.loads((tmp_path / "story" / "manifest.json").read_text())
    assert final["finished"] is True and len(final["images"]) == 4


def test_images_per_seed_and_only(tmp_path: Path) -> None:
    plan = make_plan(seeds=(5,), images_per_seed=2)
    tasks = plan_images(plan, tmp_path, only=["duo"])
    assert [(t.path.name, t.seed) for t in tasks] == [("5.png", 5), ("5-2.png", 6)]
    with pytest.raises(DiagnosticError) as exc:
        plan_images(plan, tmp_path, only=["dou"])
    assert exc.value.errors[0].code == "unknown-scene"
    assert exc.value.errors[0].help == "did you mean `duo`?"
    result = render(plan, tmp_path, pipe=tiny_pipe(), only=["duo"], batch_size=2)
    a, b = (read_png_metadata(p) for p in result.written)
    assert (a.fields["Seed"], b.fields["Seed"]) == ("5", "6")
    assert not np.array_equal(pixels(result.written[0]), pixels(result.written[1]))


def test_unknown_sampler_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(DiagnosticError) as exc:
        render(make_plan(sampler="Eular a"), tmp_path)
    assert exc.value.errors[0].code == "unknown-sampler"
    assert not list(tmp_path.iterdir())


def test_merged_linear_matches_runtime_adapters(tmp_path: Path) -> None:
    from scenecraft.events import MergeFinished
    from scenecraft.testing import tiny_pipeline

    plan = make_plan(method="linear", seeds=(1,))
    rec = Recorder()
    merged = render(
        plan, tmp_path / "m", pipe=tiny_pipeline(0), cache_dir=tmp_path / "cache", reporter=rec
    )
    assert merged.mode == "merged" and len(merged.written) == 2
    assert rec.of(MergeFinished)[0].cached is False
    meta = read_png_metadata(merged.written[0])
    assert meta.fields["Merge"] == f"linear {plan.merge.key[:10]}"
    adapted = render(plan, tmp_path / "a", pipe=tiny_pipe(), adapters=True)
    plain = make_plan(method="none", seeds=(1,))
    base_run = render(plain, tmp_path / "b", pipe=tiny_pipe())
    # W0 + Σ_c w_c ΔW_c baked in == the same LoRAs evaluated at run time (to 8-bit rounding)
    for m, a, b in zip(merged.written, adapted.written, base_run.written, strict=True):
        assert np.abs(pixels(m).astype(int) - pixels(a)).max() <= 1
        assert np.abs(pixels(m).astype(int) - pixels(b)).max() > 8
    # a second run on a fresh base with --force re-renders from the cached merge
    rec = Recorder()
    render(
        plan,
        tmp_path / "m",
        pipe=tiny_pipeline(0),
        cache_dir=tmp_path / "cache",
        force=True,
        reporter=rec,
    )
    assert rec.of(MergeFinished)[0].cached is True


def test_missing_model_fails_cleanly_and_writes_nothing(tmp_path: Path) -> None:
    plan = make_plan(seeds=(1,), base=str(tmp_path / "models" / "absent"))
    rec = Recorder()
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path / "out", reporter=rec)
    assert exc.value.errors[0].code == "model-not-found"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.*"))
    assert rec.of(RenderFinished) == []


def test_adapters_bind_a_textual_inversion_embedding(tmp_path: Path) -> None:
    import torch

    from tests._lora_files import write_embedding

    path = tmp_path / "ziggy-emb.safetensors"
    write_embedding(path, "<ZIGGY>", torch.randn(1, 32, generator=torch.Generator().manual_seed(5)))
    plan = make_plan(seeds=(1,), scenes=("duo",))
    ziggy = plan.merge.concepts[0].model_copy(update={"embedding": str(path)})
    merge = plan.merge.model_copy(update={"concepts": (ziggy, plan.merge.concepts[1])})
    job = plan.jobs[0].model_copy(update={"prompt": "photo of <ZIGGY>"})
    plan = plan.model_copy(update={"merge": merge, "jobs": (job,)})
    pipe = tiny_pipe()
    before = len(pipe.tokenizer)
    result = render(plan, tmp_path, pipe=pipe, adapters=True)
    assert len(result.written) == 1
    assert len(pipe.tokenizer) == before  # the token is gone again afterwards
    missing = plan.merge.model_copy(
        update={"concepts": (ziggy.model_copy(update={"embedding": str(tmp_path / "x.pt")}),)}
    )
    with pytest.raises(DiagnosticError) as exc:
        render(plan.model_copy(update={"merge": missing}), tmp_path / "b", pipe=pipe, adapters=True)
    assert exc.value.errors[0].code == "embedding-not-found"


def test_a_bad_adapter_leaves_the_pipeline_clean(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"unet.no.such.module.lora_A.weight": torch.zeros(4, 8)}, bad)
    plan = make_plan(seeds=(1,), scenes=("duo",))
    momo = plan.merge.concepts[1].model_copy(update={"lora": str(bad)})
    plan = plan.model_copy(
        update={"merge": plan.merge.model_copy(update={"concepts": (plan.merge.concepts[0], momo)})}
    )
    pipe = tiny_pipe()
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=pipe, adapters=True)
    assert exc.value.errors[0].code == "adapter-load-failed"
    assert not getattr(pipe.unet, "peft_config", None)  # ziggy's adapter was removed again


def test_every_sampler_is_built_from_the_models_own_scheduler_config(tmp_path: Path) -> None:
    """Not from whichever sampler ran before: `DPM++ 2M` after `DPM++ 2M Karras` must not
    inherit Karras sigmas (the order of batches, in process or on Ray workers, must not matter)."""
    from scenecraft.render.session import Kept, Session

    plan = make_plan()
    pipe = tiny_pipe()
    original = pipe.scheduler
    session = Session(plan, "base", "", None, Kept())
    try:
        pipe.scheduler = session.scheduler(pipe, "DPM++ 2M Karras")
        assert pipe.scheduler.config.use_karras_sigmas is True
        plain = session.scheduler(pipe, "DPM++ 2M")
        assert plain.config.use_karras_sigmas is False
    finally:
        pipe.scheduler = original


def test_adapters_are_active_only_for_the_concepts_a_picture_holds(tmp_path: Path) -> None:
    """--adapters draws each picture with its own concepts' LoRAs (what a user of runtime LoRAs
    writes per prompt), not every LoRA of the file: a one-concept picture equals that LoRA
    alone, a picture without concepts equals the base; one batch per set of active adapters."""
    plan = make_plan(seeds=(1,), scenes=("duo", "solo", "empty"), batch_size=3)
    held = {"duo": ("ziggy", "momo"), "solo": ("momo",), "empty": ()}
    jobs = tuple(j.model_copy(update={"concepts": held[j.scene]}) for j in plan.jobs)
    plan = plan.model_copy(update={"jobs": jobs})
    tasks = plan_images(plan, tmp_path, adapters=True)
    assert [t.adapters for t in tasks] == [("ziggy", "momo"), ("momo",), ()]
    rec = Recorder()
    pipe = tiny_pipe()
    adapted = render(plan, tmp_path / "a", pipe=pipe, adapters=True, reporter=rec)
    assert len(rec.of(BatchStarted)) == 3  # one pipeline call per set of active adapters
    by_scene = {p.parent.name: p for p in adapted.written}
    # momo alone: the plan with only momo's LoRA
    only_momo = plan.model_copy(
        update={
            "merge": plan.merge.model_copy(update={"concepts": plan.merge.concepts[1:]}),
            "jobs": tuple(j for j in jobs if j.scene == "solo"),
        }
    )
    [alone] = render(only_momo, tmp_path / "m", pipe=tiny_pipe(), adapters=True).written
    assert np.abs(pixels(by_scene["solo"]).astype(int) - pixels(alone)).max() <= 1
    # no concept: the base model
    base = render(plan, tmp_path / "b", pipe=tiny_pipe())
    base_empty = next(p for p in base.written if p.parent.name == "empty")
    assert np.abs(pixels(by_scene["empty"]).astype(int) - pixels(base_empty)).max() <= 1
    # both concepts: both LoRAs (differs from momo alone's picture of the same seed and prompt)
    assert np.abs(pixels(by_scene["duo"]).astype(int) - pixels(base.written[0])).max() > 8
    assert read_png_metadata(by_scene["solo"]).scenecraft["mode"] == "adapters"


def test_adapter_image_keys_follow_the_active_adapters(tmp_path: Path) -> None:
    from scenecraft.render.batching import image_key
    from scenecraft.render.engine import weights_key

    plan = make_plan(seeds=(1,), scenes=("solo",))
    [base] = plan_images(plan, tmp_path)
    job = plan.jobs[0]
    # keys of images rendered without --adapters are as before
    assert base.adapters == () and base.key == image_key(job, 0, weights_key(plan, "base"), "base")
    [both] = plan_images(plan, tmp_path, adapters=True)
    fewer = plan.model_copy(update={"jobs": (job.model_copy(update={"concepts": ("momo",)}),)})
    [one] = plan_images(fewer, tmp_path, adapters=True)
    assert both.adapters == ("ziggy", "momo") and one.adapters == ("momo",)
    assert one.job.id == both.job.id and one.key != both.key  # same job, other adapters
    assert image_key(job, 0, plan.merge.key, "adapters", ("momo",)) != image_key(
        job, 0, plan.merge.key, "adapters", ("ziggy", "momo")
    )


def test_merged_image_keys_follow_the_merge_engine_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer merge engine merges the same plan to other weights (its cache entries are new):
    images drawn with a merge are then out of date; base and runtime-adapter images are not."""
    from scenecraft.render import planning

    merged = make_plan(method="linear", seeds=(1,), scenes=("solo",))
    base = make_plan(seeds=(1,), scenes=("solo",))

    def keys() -> tuple[str, str, str]:
        [m] = plan_images(merged, tmp_path)
        [b] = plan_images(base, tmp_path)
        [a] = plan_images(base, tmp_path, adapters=True)
        return m.key, b.key, a.key

    before = keys()
    monkeypatch.setattr(planning, "ENGINE_REVISION", planning.ENGINE_REVISION + 1)
    after = keys()
    assert after[0] != before[0]
    assert after[1:] == before[1:]
