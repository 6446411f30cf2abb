"""The regional sampler on the tiny pipeline: masks, CFG, one UNet pass, restoring processors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scenecraft.plan import Region, RenderJob
from scenecraft.render.masks import coverage, masks_for, token_grid
from scenecraft.render.regions import RegionalAttnProcessor, cross_attention_names, regional
from tests._fixtures_render import SIZE, STEPS, make_job, tiny_pipe
from tests._fixtures_render import one_thread as one_thread  # noqa: F401  (autouse)

GLOBAL = "a photo of a man"
OTHER = "a dog"


def regional_job(regions: tuple[Region, ...], seed: int = 7, **kw: Any) -> RenderJob:
    job = make_job("duo", seed, GLOBAL, **kw)
    return job.model_copy(update={"regions": regions})


def region(box: tuple[float, float, float, float], prompt: str = OTHER, **kw: Any) -> Region:
    return Region(subject="ziggy", box=box, prompt=prompt, **kw)


def render(jobs: list[RenderJob], prompts: list[str] | None = None) -> np.ndarray:
    """The pipeline's images (float, 0..1) for ``jobs``, as the engine calls it."""
    pipe = tiny_pipe()
    job = jobs[0]
    with regional(pipe, jobs):
        out = pipe(
            prompt=prompts or [j.prompt for j in jobs],
            negative_prompt=[job.negative_prompt] * len(jobs),
            width=SIZE,
            height=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=job.guidance,
            generator=[torch.Generator().manual_seed(j.seed) for j in jobs],
            output_type="np",
        )
    return np.asarray(out.images)


# ------------------------------------------------------------------------------------ masks


def test_token_grid_at_every_level() -> None:
    # a 512x768 SD image: 64x96 latents, then 32x48, 16x24, 8x12
    for k, (h, w) in enumerate([(64, 96), (32, 48), (16, 24), (8, 12)]):
        assert token_grid((64, 96), h * w) == (h, w), k
    assert token_grid((9, 9), 25) == (5, 5)  # odd sides round up, as padded convolutions do
    with pytest.raises(ValueError):
        token_grid((64, 96), 1000)


def test_coverage_is_exact_area() -> None:
    left = coverage((0.0, 0.0, 0.5, 1.0), 4, 4)
    assert left.tolist() == [[1.0, 1.0, 0.0, 0.0]] * 4
    # a box edge through the middle of a cell covers half of it
    third = coverage((0.0, 0.0, 1 / 3, 1.0), 2, 2)
    assert third[:, 0].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert third[:, 1].tolist() == [0.0, 0.0]
    for h, w in [(4, 4), (8, 12), (5, 7)]:
        box = (0.1, 0.2, 0.65, 0.9)
        assert float(coverage(box, h, w).sum()) == pytest.approx(0.55 * 0.7 * h * w, rel=1e-5)


def test_masks_pad_missing_regions_with_zero() -> None:
    m = masks_for([[(0.0, 0.0, 1.0, 1.0), None], [None, (0.0, 0.0, 0.5, 0.5)]], 2, 2)
    assert m.shape == (2, 2, 4)
    assert m[0, 0].tolist() == [1, 1, 1, 1] and m[0, 1].tolist() == [0, 0, 0, 0]
    assert m[1, 1].tolist() == [1, 0, 0, 0]


# ----------------------------------------------------------------------------- the sampler


def test_region_less_jobs_install_nothing_and_keep_their_pixels() -> None:
    pipe = tiny_pipe()
    before = dict(pipe.unet.attn_processors)
    job = make_job("solo", 3, GLOBAL)
    seen: list[bool] = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, a: seen.append(
            any(isinstance(p, RegionalAttnProcessor) for p in m.attn_processors.values())
        )
    )
    try:
        a = render([job])
    finally:
        hook.remove()
    assert seen and not any(seen)
    b = np.asarray(
        pipe(
            prompt=[GLOBAL],
            negative_prompt=["blurry"],
            width=SIZE,
            height=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=[torch.Generator().manual_seed(3)],
            output_type="np",
        ).images
    )
    assert np.array_equal(a, b)
    assert dict(pipe.unet.attn_processors) == before


def test_whole_canvas_region_equals_its_prompt_alone() -> None:
    regional_image = render([regional_job((region((0.0, 0.0, 1.0, 1.0)),))])
    alone = render([make_job("duo", 7, OTHER)])
    assert np.abs(regional_image - alone).max() < 1e-4
    assert np.abs(regional_image - render([make_job("duo", 7, GLOBAL)])).max() > 1e-3


def test_region_with_the_global_prompt_changes_nothing() -> None:
    same = render([regional_job((region((0.0, 0.0, 0.5, 1.0), prompt=GLOBAL),))])
    plain = render([make_job("duo", 7, GLOBAL)])
    assert np.abs(same - plain).max() < 1e-4


def test_a_half_box_changes_only_its_half_most() -> None:
    left = render([regional_job((region((0.0, 0.0, 0.5, 1.0)),))])
    plain = render([make_job("duo", 7, GLOBAL)])
    diff = np.abs(left - plain).mean(axis=(0, 3))  # (H, W)
    assert diff.max() > 1e-3
    assert diff[:, : SIZE // 2].mean() > diff[:, SIZE // 2 :].mean()


def test_unconditional_branch_uses_the_region_negative() -> None:
    box = (0.0, 0.0, 1.0, 1.0)
    own = render([regional_job((region(box, negative_prompt="a man"),))])
    default = render([regional_job((region(box),))])  # the job's negative: "blurry"
    assert np.abs(own - default).max() > 1e-3
    # = the region prompt rendered alone with that negative
    alone = render([make_job("duo", 7, OTHER, negative="a man")])
    assert np.abs(own - alone).max() < 1e-4


def test_without_guidance_the_regions_still_apply() -> None:
    box = (0.0, 0.0, 1.0, 1.0)
    regional_image = render([regional_job((region(box),), guidance=1.0)])
    alone = render([make_job("duo", 7, OTHER, guidance=1.0)])
    assert np.abs(regional_image - alone).max() < 1e-4


def test_batched_images_equal_their_single_renders() -> None:
    a = regional_job((region((0.0, 0.0, 0.5, 1.0)), region((0.5, 0.0, 1.0, 1.0), "a man")))
    b = regional_job((region((0.0, 0.0, 1.0, 0.5)),), seed=9)  # fewer regions: padded
    both = render([a, b])
    assert np.abs(both[0] - render([a])[0]).max() < 1e-4
    assert np.abs(both[1] - render([b])[0]).max() < 1e-4


def test_one_unet_pass_per_step() -> None:
    pipe = tiny_pipe()
    calls: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    four = tuple(
        region((i / 4, 0.0, (i + 1) / 4, 1.0), p)
        for i, p in enumerate(["a dog", "a man", "a photo", "a dog"])
    )
    try:
        render([regional_job(four)])
    finally:
        hook.remove()
    assert len(calls) == STEPS


def test_processors_are_put_back_even_on_error() -> None:
    pipe = tiny_pipe()
    before = dict(pipe.unet.attn_processors)
    job = regional_job((region((0.0, 0.0, 0.5, 1.0)),))
    with pytest.raises(RuntimeError, match="boom"), regional(pipe, [job]):
        assert all(
            isinstance(pipe.unet.attn_processors[n], RegionalAttnProcessor)
            for n in cross_attention_names(pipe.unet)
        )
        assert not any(
            isinstance(p, RegionalAttnProcessor)
            for n, p in pipe.unet.attn_processors.items()
            if n not in cross_attention_names(pipe.unet)
        )
        raise RuntimeError("boom")
    assert dict(pipe.unet.attn_processors) == before


def test_regions_round_trip_through_the_png_and_the_manifest(tmp_path: Any) -> None:
    import json

    from scenecraft.render.engine import render as render_plan
    from scenecraft.render.outputs import parse_parameters, read_png_metadata
    from tests._fixtures_render import make_plan

    plan = make_plan(scenes=("duo",), seeds=(1,))
    regions = (
        region((0.0, 0.0, 0.5, 1.0), "a man, in a park", negative_prompt="a dog"),
        Region(subject="momo", box=(0.5, 0.0, 1.0, 1.0), prompt="a dog, in a park"),
    )
    jobs = tuple(j.model_copy(update={"regions": regions}) for j in plan.jobs)
    plan = plan.model_copy(update={"jobs": jobs})
    result = render_plan(plan, tmp_path, pipe=tiny_pipe())
    [path] = result.written
    meta = read_png_metadata(path)
    assert meta.scenecraft is not None
    assert [Region(**r) for r in meta.scenecraft["regions"]] == list(regions)
    assert RenderJob(**meta.scenecraft["job"]).regions == regions
    fields = parse_parameters(meta.parameters or "")
    assert fields["Regions"] == (
        "ziggy [0,0,0.5,1] a man, in a park (negative: a dog) | momo [0.5,0,1,1] a dog, in a park"
    )
    assert fields["Steps"] == str(STEPS) and fields["Prompt"] == jobs[0].prompt
    manifest = json.loads(Path(result.manifest or "").read_text())
    [entry] = manifest["images"].values()
    assert [Region(**r) for r in entry["regions"]] == list(regions)


# ------------------------------------------------------------------ region-confined adapters


@pytest.fixture
def two_adapters() -> Any:
    """The tiny pipeline with two random LoRAs loaded as adapters `ziggy` and `momo`."""
    import warnings

    from tests._fixtures_render import lora_files

    pipe = tiny_pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, path in zip(("ziggy", "momo"), lora_files(), strict=True):
            pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(["ziggy", "momo"], adapter_weights=[1.0, 0.8])
    yield pipe
    pipe.unload_lora_weights()


def confined_render(pipe: Any, jobs: list[RenderJob], adapters: Any) -> np.ndarray:
    with regional(pipe, jobs, adapters) as extra:
        out = pipe(
            **extra,
            width=SIZE,
            height=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=jobs[0].guidance,
            generator=[torch.Generator().manual_seed(j.seed) for j in jobs],
            output_type="np",
        )
    return np.asarray(out.images)


def test_a_confined_adapter_over_the_whole_canvas_is_that_adapter_alone(two_adapters: Any) -> None:
    from scenecraft.render.regions import Adapters

    pipe = two_adapters
    adapters = Adapters({"ziggy": ("ziggy", 1.0), "momo": ("momo", 0.8)})
    job = regional_job((region((0.0, 0.0, 1.0, 1.0)),))  # subject ziggy, prompt OTHER
    confined = confined_render(pipe, [job], adapters)
    active = pipe.get_active_adapters()
    assert sorted(active) == ["momo", "ziggy"]  # every adapter active again afterwards

    pipe.set_adapters(["ziggy"], adapter_weights=[1.0])
    alone = render([make_job("duo", 7, OTHER)])
    pipe.set_adapters(["ziggy", "momo"], adapter_weights=[1.0, 0.8])
    both = render([make_job("duo", 7, OTHER)])
    assert np.abs(confined - alone).max() < 1e-4
    assert np.abs(confined - both).max() > 1e-3


def test_confined_adapters_act_only_inside_their_regions(two_adapters: Any) -> None:
    from scenecraft.render.regions import (
        Adapters,
        confined_adapters,
        lora_delta,
        regional_state,
    )

    pipe = two_adapters
    adapters = Adapters({"ziggy": ("ziggy", 1.0), "momo": ("momo", 0.8)})
    job = regional_job(
        (region((0.0, 0.0, 0.5, 1.0)), Region(subject="momo", box=(0.5, 0, 1, 0.5), prompt="a"))
    )
    with torch.no_grad():
        state = regional_state(pipe, [job], adapters)
    name, layer = next(
        (n, m)
        for n, m in pipe.unet.named_modules()
        if n.endswith("attn1.to_q") and hasattr(m, "lora_A")
    )
    h, w = SIZE // 2 // 2, SIZE // 2 // 2  # the tiny UNet's attention level: 8x8 tokens
    x = torch.randn(2, h * w, layer.base_layer.in_features)  # a CFG batch of one image
    with torch.no_grad(), confined_adapters(pipe.unet, state):
        delta = (layer(x) - layer.base_layer(x)).view(2, h, w, -1)
        ziggy = lora_delta(layer, "ziggy", x).view(2, h, w, -1)
        momo = lora_delta(layer, "momo", x).view(2, h, w, -1)
    assert torch.allclose(delta[:, :, : w // 2], ziggy[:, :, : w // 2], atol=1e-6), name
    assert torch.allclose(delta[:, : h // 2, w // 2 :], momo[:, : h // 2, w // 2 :], atol=1e-6)
    assert delta[:, h // 2 :, w // 2 :].abs().max() == 0  # no region: no adapter
    with torch.no_grad():  # afterwards the layer is the normal PEFT layer again: both adapters
        everywhere = (layer(x) - layer.base_layer(x)).view(2, h, w, -1)
    assert torch.allclose(everywhere, ziggy + momo, atol=1e-5)
    assert sorted(pipe.get_active_adapters()) == ["momo", "ziggy"]


def test_blocks_that_attend_only_to_the_prompt_are_regional_too() -> None:
    # the toy world's 16x16 blocks use only_cross_attention: attn1 reads the prompt as well,
    # so a region must steer it, and the merge must fit its K/V on prompt tokens
    from dataclasses import replace

    from scenecraft.merge.engine import KV, stage_of
    from scenecraft.sdparts import cross_attention_kv
    from scenecraft.toyworld.model import TINY, assemble, build_components

    torch.manual_seed(0)
    pipe = assemble(build_components(replace(TINY, finest_cross_attention=True)))
    pipe.set_progress_bar_config(disable=True)
    names = cross_attention_names(pipe.unet)
    assert any(".attn1." in n for n in names) and any(".attn2." in n for n in names)
    assert all(n.startswith(("down_blocks.0", "up_blocks.2")) for n in names if ".attn1." in n)
    kv = cross_attention_kv(pipe.unet, "unet.")
    path = next(p for p in sorted(kv) if ".attn1.to_k" in p)
    assert stage_of(path, pipe.unet.get_submodule(path[5:]), False, kv) == KV

    def draw(job: RenderJob) -> np.ndarray:
        with regional(pipe, [job]):
            out = pipe(
                prompt=[job.prompt],
                negative_prompt=[job.negative_prompt],
                width=64,
                height=64,
                num_inference_steps=2,
                guidance_scale=4.0,
                generator=[torch.Generator().manual_seed(3)],
                output_type="np",
            )
        return np.asarray(out.images)

    whole = regional_job((region((0.0, 0.0, 1.0, 1.0), prompt="red star"),), seed=3, size=64)
    alone = draw(make_job("duo", 3, "red star", size=64))
    assert np.abs(draw(whole) - alone).max() < 1e-4
    assert np.abs(draw(make_job("duo", 3, GLOBAL, size=64)) - alone).max() > 1e-3


def test_gathered_attention_equals_the_dense_mix() -> None:
    # each attention runs only on the tokens it weighs in; the result is the formula's, where
    # boxes overlap, cut through cells, leave the global prompt some tokens, or are padding
    from diffusers.models.attention_processor import Attention

    from scenecraft.render.regions import RegionalState

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    boxes: list[list[Any]] = [
        [(0.0, 0.0, 0.55, 1.0), (0.4, 0.1, 1.0, 0.8)],  # overlap, edges through cells
        [(0.25, 0.25, 0.75, 0.75), None],  # one region (padding), the global prompt around it
    ]
    embeds = torch.randn(2, 2, 5, 8)  # (R, B, T, D)
    state = RegionalState(embeds, embeds.clone(), boxes, (6, 6))
    x, ctx = torch.randn(2, 36, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        got = RegionalAttnProcessor(state)(attn, x, ctx)

        def dense(prompt: torch.Tensor) -> torch.Tensor:  # (B, N, C) before to_out
            q = attn.to_q(x).unflatten(-1, (2, 8)).transpose(1, 2)
            k = attn.to_k(prompt).unflatten(-1, (2, 8)).transpose(1, 2)
            v = attn.to_v(prompt).unflatten(-1, (2, 8)).transpose(1, 2)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return o.transpose(1, 2).flatten(2)

        m = masks_for(boxes, 6, 6)  # (B, R, N)
        cover = m.sum(1)[..., None]  # (B, N, 1)
        o_r = torch.stack([dense(embeds[r]) for r in range(2)], 1)  # (B, R, N, C)
        mix = (m[..., None] * o_r).sum(1) / cover.clamp(min=1) + (1 - cover.clamp(max=1)) * dense(
            ctx
        )
        want = attn.to_out[0](mix)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_confined_adapters_without_cross_attention_kv_render() -> None:
    # a LoRA trained on image-side layers only leaves the cross-attention to_k / to_v plain
    # Linear layers: confining it must not look for a PEFT base layer there
    import warnings

    from safetensors.torch import load_file

    from scenecraft.render.regions import Adapters
    from tests._fixtures_render import lora_files

    pipe = tiny_pipe()
    image_side = {
        k: v
        for k, v in load_file(str(lora_files()[0])).items()
        if k.startswith("unet.") and ".attn2.to_k." not in k and ".attn2.to_v." not in k
    }
    assert image_side and any(".attn1." in k for k in image_side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.load_lora_weights(image_side, adapter_name="ziggy")
    try:
        kv = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_k"))
        assert not hasattr(kv, "base_layer")  # the case this test is about
        job = regional_job((region((0.0, 0.0, 1.0, 1.0)),))
        confined = confined_render(pipe, [job], Adapters({"ziggy": ("ziggy", 1.0)}))
        alone = render([make_job("duo", 7, OTHER)])  # the adapter everywhere, one prompt
        assert np.abs(confined - alone).max() < 1e-4
    finally:
        pipe.unload_lora_weights()
