"""The embedded toy world: renderer + captions, the exact judge, the shipped weights, the trainers."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scenecraft.toyworld import judge as J
from scenecraft.toyworld import train_base as TB
from scenecraft.toyworld import train_data as TD
from scenecraft.toyworld import world as W
from scenecraft.toyworld.model import (
    BASE_DIR,
    LORA_DIR,
    TINY,
    build_components,
    build_tokenizer,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.train_base import (
    TrainConfig,
    finetune_decoder,
    train_base,
    warm_start,
)
from scenecraft.toyworld.train_lora import LoraConfig, orthogonal_basis, train_lora


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """One torch thread: on a shared 2-core box, OpenMP spin-waits made this file 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# world 2 (drawn layouts, up to four sprites), the shipped weights' world, named explicitly
def r2(scene: W.Scene, seed: int = 0) -> Any:
    return W.render(scene, seed, version=2)


def rb2(scene: W.Scene, seed: int = 0) -> Any:
    return W.render_with_boxes(scene, seed, version=2)


def lay2(scene: W.Scene, seed: int = 0) -> list[W.Box]:
    return W.layout(scene, seed, version=2)


# --- world -------------------------------------------------------------------------------------


def test_captions_are_the_compilers_english() -> None:
    ziggy = W.CONCEPTS["ziggy"].as_sprite("a crown")
    scene = W.pair(ziggy, "left-of", W.Sprite("star", "red", "striped"), "on grass")
    assert W.caption(scene) == "<ZIGGY> circle wearing a crown left of red striped star, on grass"
    assert W.caption(W.Scene((W.Sprite("square", "pink"),))) == "pink square"
    four = W.Scene(
        tuple(W.CONCEPTS[n].as_sprite() for n in ("lulu", "blip", "kiki", "momo")),
        ((0, "left-of", 1), (2, "on-top-of", 3)),
        "at sea",
    )
    assert W.caption(four) == (
        "<LULU> circle left of <BLIP> square, <KIKI> triangle on top of <MOMO> star, at sea"
    )


def test_render_is_deterministic_and_sized() -> None:
    rng = random.Random(3)
    scene = W.random_scene(rng, version=2)
    a, b = np.asarray(r2(scene, 1)), np.asarray(r2(scene, 1))
    assert a.shape == (64, 64, 3)
    assert (a == b).all()


def test_seeds_move_and_resize_sprites() -> None:
    scene = W.Scene(tuple(W.CONCEPTS[n].sprite for n in ("blip", "kiki")), setting="on grass")
    layouts = {tuple(lay2(scene, seed)) for seed in range(20)}
    assert len(layouts) >= 16  # nearly every seed draws its own boxes
    sizes = {x1 - x0 for boxes in layouts for x0, _, x1, _ in boxes}
    assert sizes == set(W.SIZES)


def test_random_scenes_hold_one_to_four_sprites_and_keep_their_placements() -> None:
    rng = random.Random(7)
    counts = set()
    for seed in range(300):
        scene = W.random_scene(rng, version=2)
        counts.add(len(scene.sprites))
        boxes = lay2(scene, seed)
        for i, relation, j in scene.placements:
            assert W.relation_holds(relation, boxes[i], boxes[j]), (W.caption(scene), boxes)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            top = y0 - (W.HAT if scene.sprites[k].attribute else 0)
            assert x0 >= W.MARGIN and x1 <= W.SIZE - W.MARGIN and top >= 0 and y1 <= W.SIZE
        for k in range(len(boxes)):  # bodies never touch
            for m in range(k):
                a, b = boxes[k], boxes[m]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    assert counts == {1, 2, 3, 4}


def test_placements_mean_what_they_say() -> None:
    a, b = W.CONCEPTS["blip"].sprite, W.CONCEPTS["kiki"].sprite
    for seed in range(10):
        left = lay2(W.pair(a, "left-of", b), seed)
        assert (left[0][0] + left[0][2]) < (left[1][0] + left[1][2])
        top, bottom = lay2(W.pair(a, "on-top-of", b), seed)
        assert top[3] + W.STACK_GAP == bottom[1]  # stacked: a stands on b
        assert abs((top[0] + top[2]) - (bottom[0] + bottom[2])) <= 8


def test_attributes_sit_on_their_wearer() -> None:
    crowned = W.CONCEPTS["momo"].sprite
    crowned = W.Sprite(crowned.shape, crowned.colour, crowned.pattern, "a crown")
    scene = W.Scene((crowned, W.CONCEPTS["blip"].sprite), setting="on grass")
    image, boxes = rb2(scene, 5)
    img = np.asarray(image)
    (x0, y0, x1, _), other = boxes
    above = img[y0 - 6 : y0, (x0 + x1) // 2 - 6 : (x0 + x1) // 2 + 6]
    assert (above == W.ATTRIBUTES["a crown"]).all(axis=-1).sum() >= 30
    orange = (img == W.ATTRIBUTES["a crown"]).all(axis=-1)
    assert not orange[max(0, other[1] - 8) : other[3], other[0] : other[2]].any()


def test_world_one_keeps_its_fixed_slots() -> None:
    a, b = W.CONCEPTS["ziggy"].sprite, W.CONCEPTS["blip"].sprite
    assert W.layout(W.pair(a, "left-of", b), 0, version=1) == [(4, 28, 28, 52), (36, 28, 60, 52)]
    assert W.layout(W.pair(a, "left-of", b), 9, version=1) == W.layout(
        W.pair(a, "left-of", b), 0, version=1
    )


def test_concepts_are_distinct_and_include_a_same_class_pair() -> None:
    identities = {c.sprite.identity for c in W.CONCEPTS.values()}
    assert len(identities) == len(W.CONCEPTS) == 8
    z1, z2 = W.CONCEPTS["ziggy"].sprite, W.CONCEPTS["zaza"].sprite
    assert (z1.shape, z1.colour) == (z2.shape, z2.colour) and z1.pattern != z2.pattern
    # four concepts of four classes exist, so a four-concept picture can avoid the hard pair
    assert len({W.CONCEPTS[n].class_noun for n in ("lulu", "blip", "kiki", "momo")}) == 4
    # four concepts of ONE class, differing only in colour and pattern (issue 26): each shares
    # its colour or its pattern with another of the four
    circles = [W.CONCEPTS[n].sprite for n in ("ziggy", "zaza", "mimi", "roro")]
    assert {(s.shape, s.attribute) for s in circles} == {("circle", None)}
    assert len({(s.colour, s.pattern) for s in circles}) == 4
    for s in circles:
        others = [o for o in circles if o is not s]
        assert any(o.colour == s.colour or o.pattern == s.pattern for o in others)


def test_tokenizer_keeps_concept_tokens_whole_and_truncates() -> None:
    tok = build_tokenizer(TINY)
    ids = tok("<ZIGGY> circle left of <LULU> circle").input_ids
    assert len(ids) == 8  # bos, 6 whole tokens, eos
    long = tok(
        "red star " * 40, padding="max_length", truncation=True, max_length=tok.model_max_length
    )
    assert len(long.input_ids) == TINY.max_tokens


# --- judge -------------------------------------------------------------------------------------

CASES = [
    (["ziggy", "zaza"], [("ziggy", "left-of", "zaza")], {}, "on grass"),
    (["blip", "kiki"], [("blip", "on-top-of", "kiki")], {}, "at sea"),
    (["momo"], [], {"momo": "a crown"}, "under a night sky"),
    (["kiki", "momo"], [("kiki", "right-of", "momo")], {"kiki": "a hat"}, "on a shelf"),
    (["zaza", "blip"], [("blip", "beside", "zaza")], {}, "in the desert"),
    (["ziggy", "momo"], [], {}, None),
    (["lulu", "blip", "kiki"], [("lulu", "left-of", "blip")], {"kiki": "a hat"}, "at sea"),
    (
        ["lulu", "blip", "kiki", "momo"],
        [("lulu", "left-of", "blip"), ("kiki", "on-top-of", "momo")],
        {"lulu": "a crown"},
        "on grass",
    ),
    (["ziggy", "zaza", "blip", "kiki"], [], {"ziggy": "a hat", "zaza": "a crown"}, None),
]


@pytest.mark.parametrize(("names", "places", "attrs", "setting"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_judge_gives_full_marks_on_ground_truth(
    names: list[str],
    places: list[tuple[str, str, str]],
    attrs: dict[str, str],
    setting: str | None,
    seed: int,
) -> None:
    expected = J.expected_scene(names, places, attrs, setting)
    image, boxes = rb2(J.ground_truth(expected), seed)
    scores = J.judge(image, expected)
    assert (scores.accuracy, scores.identity, scores.placement, scores.attribute) == (1, 1, 1, 1)
    assert scores.similarity == 1.0
    # the same picture judged against its own boxes (as a render job's regions give them)
    regions = {n: tuple(v / W.SIZE for v in box) for n, box in zip(names, boxes, strict=True)}
    boxed = J.judge(image, J.expected_scene(names, places, attrs, setting, boxes=regions))
    assert [c.placement for c in boxed.concepts] == [1.0] * len(names)


def test_judge_is_exact_on_random_ground_truth() -> None:
    rng = random.Random(5)
    for seed in range(60):
        scene = W.random_scene(rng, version=2)
        named = [(f"s{i}", s) for i, s in enumerate(scene.sprites)]
        expected = J.expected_scene(
            named,
            [(f"s{i}", r, f"s{j}") for i, r, j in scene.placements],
            {n: s.attribute for n, s in named if s.attribute},
            scene.setting,
        )
        scores = J.judge(r2(scene, seed), expected)
        assert (scores.accuracy, scores.identity, scores.placement, scores.attribute) == (
            1,
            1,
            1,
            1,
        ), W.caption(scene)


@pytest.mark.parametrize(
    ("names", "places", "attrs", "setting"), [c for c in CASES if c[1] and c[1][0][1] != "beside"]
)
def test_swapped_placement_scores_zero(
    names: list[str], places: list[tuple[str, str, str]], attrs: dict[str, str], setting: str | None
) -> None:
    expected = J.expected_scene(names, places, attrs, setting)
    (s, rel, t), *rest = places
    swapped = J.ground_truth(J.expected_scene(names, [(t, rel, s), *rest], attrs, setting))
    scores = J.judge(r2(swapped), expected)
    assert [c.placement for c in scores.concepts if c.name in (s, t)] == [0.0, 0.0]
    assert scores.identity == 1.0


def test_swapped_identities_fail_identity_or_placement() -> None:
    # kiki drawn where blip was asked for and blip where kiki was: with boxes, the identities
    # are right but both sprites sit in the other's box
    expected = J.expected_scene(["blip", "kiki"], setting="on grass")
    image, boxes = rb2(J.ground_truth(expected), 3)
    regions = {"blip": boxes[1], "kiki": boxes[0]}  # each box is where the other one is
    norm = {n: tuple(v / W.SIZE for v in b) for n, b in regions.items()}
    scores = J.judge(image, J.expected_scene(["blip", "kiki"], setting="on grass", boxes=norm))
    assert scores.identity == 1.0 and scores.placement == 0.0
    # the hard pair swapped: zaza drawn in both places where ziggy and zaza were asked for
    zaza = W.CONCEPTS["zaza"].sprite
    dup = r2(W.Scene((zaza, zaza), ((0, "left-of", 1),)), 2)
    scores = J.judge(dup, J.expected_scene(["ziggy", "zaza"], [("ziggy", "left-of", "zaza")]))
    assert scores.identity == 0.5 and scores.accuracy == 1.0
    assert [c.identity for c in scores.concepts] == [0.0, 1.0]


def test_duplicates_and_extras_lower_accuracy() -> None:
    ziggy = W.CONCEPTS["ziggy"].sprite
    scores = J.judge(r2(W.Scene((ziggy, ziggy, ziggy)), 4), J.expected_scene(["ziggy"]))
    assert scores.identity == 1.0 and scores.accuracy == pytest.approx(1 / 3)
    assert len(scores.found) == 3


def test_sprite_outside_its_box_fails_placement() -> None:
    image, boxes = rb2(W.Scene((W.CONCEPTS["momo"].sprite,), (), "at sea"), 6)
    x0, y0, x1, y1 = (v / W.SIZE for v in boxes[0])
    inside = J.expected_scene(["momo"], setting="at sea", boxes={"momo": (x0, y0, x1, y1)})
    assert J.judge(image, inside).placement == 1.0
    cx = (x0 + x1) / 2
    away = (0.0, 0.0, 0.5, 1.0) if cx > 0.5 else (0.5, 0.0, 1.0, 1.0)
    outside = J.expected_scene(["momo"], setting="at sea", boxes={"momo": away})
    scores = J.judge(image, outside)
    assert scores.placement == 0.0 and scores.identity == 1.0


def test_attribute_on_the_wrong_wearer_is_caught() -> None:
    blip, kiki = W.CONCEPTS["blip"].sprite, W.CONCEPTS["kiki"].sprite
    hat_on_kiki = W.Scene((blip, W.Sprite(kiki.shape, kiki.colour, kiki.pattern, "a hat")))
    expected = J.expected_scene(["blip", "kiki"], attributes={"blip": "a hat"})
    scores = J.judge(r2(hat_on_kiki, 1), expected)
    assert scores.identity == 1.0
    assert [c.attribute for c in scores.concepts] == [0.0, 0.0]


def test_missing_and_extra_sprites_lower_accuracy() -> None:
    expected = J.expected_scene(["ziggy", "blip"], [("ziggy", "left-of", "blip")])
    alone = r2(W.Scene((W.CONCEPTS["ziggy"].sprite,)))
    missing = J.judge(alone, expected)
    assert missing.accuracy == 0.5 and missing.identity == 0.5 and missing.placement == 0.0
    single = J.expected_scene(["ziggy"])
    extra = J.judge(
        r2(W.pair(W.CONCEPTS["ziggy"].sprite, "left-of", W.Sprite("star", "red"))), single
    )
    assert extra.accuracy == 0.5 and extra.identity == 1.0


def test_judge_tells_the_same_class_pair_apart() -> None:
    # zaza drawn where ziggy is expected: right class, wrong identity, at every world size
    expected = J.expected_scene(["ziggy"])
    for seed in range(6):
        scores = J.judge(r2(W.Scene((W.CONCEPTS["zaza"].sprite,)), seed), expected)
        assert scores.accuracy == 1.0 and scores.identity == 0.0


def test_judge_on_blank_image_scores_nothing() -> None:
    expected = J.expected_scene(["kiki"], setting="on grass")
    scores = J.judge(r2(W.Scene((), (), "on grass")), expected)
    assert (scores.accuracy, scores.identity, scores.similarity) == (0.0, 0.0, 0.0)


def test_expected_prompt_uses_tokens_and_placements() -> None:
    expected = J.expected_scene(
        ["ziggy", "blip"], [("blip", "right-of", "ziggy")], {"ziggy": "a hat"}, "at sea"
    )
    assert (
        J.expected_prompt(expected) == "<BLIP> square right of <ZIGGY> circle wearing a hat, at sea"
    )


# --- shipped weights ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shipped() -> Any:
    return load_toyworld_pipeline()


def _image(pipe: Any, prompt: str) -> np.ndarray:
    out = pipe(
        prompt,
        height=64,
        width=64,
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(0),
    )
    return np.asarray(out.images[0], dtype=np.float64)


def test_shipped_weights_are_small_and_complete() -> None:
    files = [p for p in (BASE_DIR.parent).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20
    assert (BASE_DIR / "model_index.json").exists()
    assert {p.stem for p in LORA_DIR.glob("*.safetensors")} == set(W.CONCEPTS)


def test_shipped_model_draws_a_non_degenerate_image(shipped: Any) -> None:
    img = _image(shipped, "red star left of yellow striped circle, on grass")
    assert img.shape == (64, 64, 3)
    assert np.isfinite(img).all()
    assert img.std() > 10  # not a flat or black frame
    assert J.find_sprites(J.Image.fromarray(img.astype(np.uint8)))  # something sprite-like drawn


def test_shipped_lora_loads_and_changes_the_image(shipped: Any) -> None:
    before = _image(shipped, "<ZIGGY> circle, on grass")
    shipped.load_lora_weights(str(LORA_DIR / "ziggy.safetensors"), adapter_name="ziggy")
    try:
        after = _image(shipped, "<ZIGGY> circle, on grass")
    finally:
        shipped.delete_adapters("ziggy")
    assert np.abs(after - before).mean() > 1.0


# --- trainers ----------------------------------------------------------------------------------


def test_trainers_run_a_few_steps(tmp_path: Path) -> None:
    cfg = TrainConfig(vae_steps=2, steps=2, n_data=16, batch=4, vae_batch=2)
    train_base(TINY, cfg, tmp_path / "base", log=lambda _: None)
    assert (tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    vae = load_toyworld_pipeline(path=tmp_path / "base").vae
    encoder_before = [p.clone() for p in vae.encoder.parameters()]
    decoder_before = [p.clone() for p in vae.decoder.parameters()]
    finetune_decoder(vae, cfg, minutes=1.0, log=lambda _: None)
    assert all(
        torch.equal(a, b) for a, b in zip(encoder_before, vae.encoder.parameters(), strict=True)
    )
    assert not all(
        torch.equal(a, b) for a, b in zip(decoder_before, vae.decoder.parameters(), strict=True)
    )
    out = tmp_path / "ziggy.safetensors"
    train_lora(
        "ziggy", LoraConfig(steps=2, n_data=8, batch=4), tmp_path / "base", out, log=lambda _: None
    )
    pipe = load_toyworld_pipeline(path=tmp_path / "base")
    pipe.load_lora_weights(str(out))
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder"}


def _downs(pipe: Any) -> dict[str, torch.Tensor]:
    """Every adapter's lora_A weight (r x in), by module name."""
    return {
        f"{prefix}.{name}": m.lora_A["default"].weight.detach().clone()
        for prefix, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder))
        for name, m in model.named_modules()
        if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)
    }


def _ups(pipe: Any) -> list[torch.Tensor]:
    return [
        m.lora_B["default"].weight.detach().clone()
        for model in (pipe.unet, pipe.text_encoder)
        for m in model.modules()
        if isinstance(getattr(m, "lora_B", None), torch.nn.ModuleDict)
    ]


def test_orthogonal_mode_freezes_mutually_orthogonal_down_projections() -> None:
    cfg = LoraConfig(steps=3, n_data=8, batch=4, orthogonal_count=4)
    pipes = {
        i: train_lora(("lulu", "blip")[i], replace(cfg, orthogonal=i), log=lambda _: None)
        for i in (0, 1)
    }
    downs = {i: _downs(p) for i, p in pipes.items()}
    assert len(downs[0]) == 92  # every adapted module (UNet incl. the 16x16 blocks + text encoder)
    for name, a0 in downs[0].items():
        rank, dim = a0.shape
        # A is exactly the slot of the shared basis it was given: not moved by training
        basis = orthogonal_basis(name, dim) * (dim**0.5 / rank)
        assert torch.equal(a0, basis[:rank])
        assert torch.equal(downs[1][name], basis[rank : 2 * rank])
        # the two concepts' rows are mutually orthogonal; each concept's rows are not degenerate
        assert (a0 @ downs[1][name].T).abs().max() < 1e-4 * float(a0.norm() ** 2)
        assert torch.linalg.matrix_rank(a0) == rank
    # B did train (peft's B starts at zero)
    assert any(b.abs().max() > 0 for b in _ups(pipes[0]))


def test_warm_start_adds_16x16_cross_attention_as_a_no_op(tmp_path: Path) -> None:
    old = TINY  # world 1's UNet: no cross-attention at 16x16
    cfg = TrainConfig(vae_steps=1, steps=1, n_data=8, batch=2, vae_batch=2)
    train_base(old, cfg, tmp_path / "old", log=lambda _: None)
    before = load_toyworld_pipeline(path=tmp_path / "old")
    fresh = build_components(replace(TINY, finest_cross_attention=True))
    warm_start(fresh, tmp_path / "old", log=lambda _: None)
    unet = fresh["unet"]
    kinds = [type(b).__name__ for b in unet.down_blocks]
    assert kinds[0] == "CrossAttnDownBlock2D"  # attends to the prompt at the finest grid
    assert type(before.unet.down_blocks[0]).__name__ == "DownBlock2D"
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    ids = before.tokenizer(
        ["<ZIGGY> circle left of red star"] * 2,
        padding="max_length",
        max_length=TINY.max_tokens,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        a = before.unet(z, 10, before.text_encoder(ids)[0]).sample
        b = unet(z, 10, fresh["text_encoder"](ids)[0]).sample
    torch.testing.assert_close(a, b)


def test_scene_batch_redraws_a_scene_whose_layout_search_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a training run once died here, 10 minutes in: one crowded draw in ~70,000 had no layout
    crowded = W.Scene(
        tuple(W.Sprite(s, "red", "plain", "a hat") for s in W.SHAPES)
        + (W.Sprite("circle", "pink", "plain", "a hat"),),
        (),
        None,
    )
    with pytest.raises(ValueError, match="no layout fits"):
        lay2(crowded)
    draws = iter([crowded, crowded])
    real = W.random_scene

    def random_scene(rng: random.Random, version: int = 2) -> W.Scene:
        return next(draws, None) or real(rng, version=version)

    monkeypatch.setattr(TD, "random_scene", random_scene)  # where scene_batch draws
    images, captions = TB.scene_batch(random.Random(0), 3, world=2)
    assert images.shape == (3, 3, 64, 64) and len(captions) == 3
    assert W.caption(crowded) not in captions


def test_vae_fine_tune_starts_from_the_given_vae_and_saves_it(tmp_path: Path) -> None:
    cfg = TrainConfig(vae_steps=1, steps=1, n_data=8, batch=2, vae_batch=2)
    train_base(TINY, cfg, tmp_path / "v0", log=lambda _: None, vae_only=True)
    from diffusers import AutoencoderKL

    before = AutoencoderKL.from_pretrained(tmp_path / "v0").state_dict()
    tuned = replace(cfg, vae_steps=2, vae_init=True, world=2)
    train_base(
        TINY, tuned, tmp_path / "v1", log=lambda _: None, vae_dir=tmp_path / "v0", vae_only=True
    )
    after = AutoencoderKL.from_pretrained(tmp_path / "v1").state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and any(k.startswith("encoder.") for k in changed)
    # two steps from v0 stay close to v0 (a fresh VAE would differ everywhere by its init)
    delta = max(float((before[k] - after[k]).abs().max()) for k in before)
    assert delta < 0.05


def test_vae_roundtrip_scores_a_lossless_vae_as_exact_and_a_lossy_one_lower() -> None:
    from types import SimpleNamespace

    from scenecraft.toyworld.evaluate import vae_roundtrip

    class Lossless:
        def encode(self, x: torch.Tensor) -> Any:
            return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

        def decode(self, z: torch.Tensor) -> Any:
            return SimpleNamespace(sample=z)

    class Blurry(Lossless):
        def decode(self, z: torch.Tensor) -> Any:  # 8x down and up: shapes and patterns go
            small = torch.nn.functional.avg_pool2d(z, 8)
            return SimpleNamespace(sample=torch.nn.functional.interpolate(small, scale_factor=8))

    assert vae_roundtrip(Lossless(), n=4) == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 1.0}
    assert all(v < 0.5 for v in vae_roundtrip(Blurry(), n=4).values())


# --- regional training (--regional) -----------------------------------------------------------


def test_grown_boxes_tile_without_overlap_and_hold_their_sprites() -> None:
    rng = random.Random(0)
    sizes = []
    for seed in range(60):
        scene = W.random_scene(random.Random(seed), version=2)
        body = lay2(scene, seed)
        reaches = [W.reach(b, s) for b, s in zip(body, scene.sprites, strict=True)]
        boxes = TB.grown_boxes(reaches, rng)
        px = [tuple(round(v * W.SIZE) for v in b) for b in boxes]
        for r, b in zip(reaches, px, strict=True):
            assert b[0] <= r[0] and b[1] <= r[1] and b[2] >= r[2] and b[3] >= r[3]
            assert min(b) >= 0 and max(b) <= W.SIZE
        for a, b in itertools.combinations(px, 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        sizes += [(b[2] - b[0]) * (b[3] - b[1]) for b in px]
    # grown by a random amount: from (almost) the sprite alone to most of the canvas
    assert min(sizes) < 40 * 40 and max(sizes) >= 48 * 48


def test_region_text_is_the_compilers_regions_on_rule() -> None:
    blip, kiki = W.CONCEPTS["blip"].sprite, W.CONCEPTS["kiki"].sprite
    scene = W.pair(blip, "left-of", replace(kiki, attribute="a hat"), "on grass")
    text = TB.scene_regions(scene, lay2(scene), random.Random(0))
    # what `scenecraft compile` writes for `blip left of kiki` (benchmarks/toyworld_eval 2a)
    assert text.prompt == "square left of triangle, on grass"
    assert [p for _, p in text.regions] == [
        "purple spotted square, square left of triangle, on grass",
        "red striped triangle wearing a hat, square left of triangle, on grass",
    ]


def test_a_regional_training_step_reads_each_box_from_its_own_prompt() -> None:
    torch.manual_seed(0)
    parts = build_components(replace(TINY, finest_cross_attention=True))
    unet, te, sched, tok = (parts[k] for k in ("unet", "text_encoder", "scheduler", "tokenizer"))
    before = {k: type(p) for k, p in unet.attn_processors.items()}
    scenes = [W.pair(W.CONCEPTS["blip"].sprite, "left-of", W.CONCEPTS["kiki"].sprite)] * 2
    texts = [TB.scene_regions(s, lay2(s), random.Random(i)) for i, s in enumerate(scenes)]
    empty = TB.tokenize(tok, [""])[0]
    regions, prompts = TB.region_batch([1], texts[1:], tok, empty, 2)  # row 0: not regional
    ids = TB.tokenize(tok, ["square left of triangle", prompts[0]])
    z0 = torch.randn(2, 4, 16, 16)

    def loss(r: Any) -> torch.Tensor:
        return TB.diffusion_loss(unet, te, sched, z0, ids, torch.Generator().manual_seed(1), r)

    plain, regional = loss(None), loss(regions)
    assert regions[0].shape == (2, 2, ids.shape[1]) and regions[1][0] == [None, None]
    assert not torch.allclose(plain, regional)
    regional.backward()  # the region prompts train the text encoder too
    assert te.get_input_embeddings().weight.grad is not None
    assert {k: type(p) for k, p in unet.attn_processors.items()} == before


def test_evaluate_regions_uses_the_compilers_layout_and_region_text() -> None:
    from scenecraft.toyworld.evaluate import regional_text

    blip, kiki = W.CONCEPTS["blip"].sprite, W.CONCEPTS["kiki"].sprite
    scene = J.expected_scene(
        [("a", blip), ("b", kiki)], [("a", "left-of", "b")], setting="on grass"
    )
    prompt, regions = regional_text(scene)
    assert prompt == "square left of triangle, on grass"
    assert regions == [
        ((0.0, 0.0, 0.5, 1.0), "purple spotted square, square left of triangle, on grass"),
        ((0.5, 0.0, 1.0, 1.0), "red striped triangle, square left of triangle, on grass"),
    ]
