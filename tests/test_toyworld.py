"""The embedded toy world: renderer + captions, the exact judge, the shipped weights, the trainers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scenecraft.toyworld import judge as J
from scenecraft.toyworld import world as W
from scenecraft.toyworld.model import (
    BASE_DIR,
    LORA_DIR,
    TINY,
    build_tokenizer,
    load_toyworld_pipeline,
)
from scenecraft.toyworld.train_base import TrainConfig, finetune_decoder, train_base
from scenecraft.toyworld.train_lora import LoraConfig, train_lora


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """One torch thread: on a shared 2-core box, OpenMP spin-waits made this file 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- world -------------------------------------------------------------------------------------


def test_captions_are_the_compilers_english() -> None:
    ziggy = W.CONCEPTS["ziggy"].as_sprite("a crown")
    scene = W.Scene((ziggy, W.Sprite("star", "red", "striped")), "left-of", "on grass")
    assert W.caption(scene) == "<ZIGGY> circle wearing a crown left of red striped star, on grass"
    assert W.caption(W.Scene((W.Sprite("square", "pink"),))) == "pink square"


def test_render_is_deterministic_and_sized() -> None:
    rng = random.Random(3)
    scene = W.random_scene(rng)
    a, b = np.asarray(W.render(scene, 1)), np.asarray(W.render(scene, 1))
    assert a.shape == (64, 64, 3)
    assert (a == b).all()


def test_concepts_are_distinct_and_include_a_same_class_pair() -> None:
    identities = {(c.sprite.shape, c.sprite.colour, c.sprite.pattern) for c in W.CONCEPTS.values()}
    assert len(identities) == len(W.CONCEPTS) >= 4
    z1, z2 = W.CONCEPTS["ziggy"].sprite, W.CONCEPTS["zaza"].sprite
    assert (z1.shape, z1.colour) == (z2.shape, z2.colour) and z1.pattern != z2.pattern


def test_tokenizer_keeps_concept_tokens_whole_and_truncates() -> None:
    tok = build_tokenizer(TINY)
    ids = tok("<ZIGGY> circle left of <ZAZA> circle").input_ids
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
]


@pytest.mark.parametrize(("names", "places", "attrs", "setting"), CASES)
def test_judge_gives_full_marks_on_ground_truth(
    names: list[str], places: list[tuple[str, str, str]], attrs: dict[str, str], setting: str | None
) -> None:
    expected = J.expected_scene(names, places, attrs, setting)
    scores = J.judge(W.render(J.ground_truth(expected)), expected)
    assert (scores.accuracy, scores.identity, scores.placement) == (1.0, 1.0, 1.0)
    assert scores.similarity > 0.9


@pytest.mark.parametrize(
    ("names", "places", "attrs", "setting"), [c for c in CASES if c[1] and c[1][0][1] != "beside"]
)
def test_swapped_placement_scores_zero(
    names: list[str], places: list[tuple[str, str, str]], attrs: dict[str, str], setting: str | None
) -> None:
    expected = J.expected_scene(names, places, attrs, setting)
    (s, rel, t) = places[0]
    swapped = J.ground_truth(J.expected_scene(names, [(t, rel, s)], attrs, setting))
    scores = J.judge(W.render(swapped), expected)
    assert scores.placement == 0.0
    assert scores.identity == 1.0


def test_missing_and_extra_sprites_lower_accuracy() -> None:
    expected = J.expected_scene(["ziggy", "blip"], [("ziggy", "left-of", "blip")])
    alone = W.render(W.Scene((W.CONCEPTS["ziggy"].sprite,)))
    missing = J.judge(alone, expected)
    assert missing.accuracy == 0.5 and missing.identity == 0.5 and missing.placement == 0.0
    single = J.expected_scene(["ziggy"])
    extra = J.judge(
        W.render(W.Scene((W.CONCEPTS["ziggy"].sprite, W.Sprite("star", "red")), "left-of")), single
    )
    assert extra.accuracy == 0.5 and extra.identity == 1.0


def test_judge_tells_the_same_class_pair_apart() -> None:
    # zaza drawn where ziggy is expected: right class, wrong identity
    expected = J.expected_scene(["ziggy"])
    scores = J.judge(W.render(W.Scene((W.CONCEPTS["zaza"].sprite,))), expected)
    assert scores.accuracy == 1.0 and scores.identity == 0.0


def test_judge_on_blank_image_scores_nothing() -> None:
    expected = J.expected_scene(["kiki"], setting="on grass")
    scores = J.judge(W.render(W.Scene((), None, "on grass")), expected)
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
