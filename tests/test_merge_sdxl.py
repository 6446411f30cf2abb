"""SDXL through the merge engine on a tiny SDXL built in-process: LoRA files (kohya SGM and PEFT),
SDXL textual inversion in both tokenizers, feature collection over both text encoders and the
2048-style concatenated context, LoRACLR / gradient fusion, the cache, apply and render."""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from scenecraft.diagnostics import DiagnosticError
from scenecraft.merge import features as F
from scenecraft.merge.api import merge
from scenecraft.merge.apply import apply_merge, module_weight
from scenecraft.merge.config import GradientFusion, Stages, parse
from scenecraft.merge.engine import MergeConfig, run_merge
from scenecraft.merge.formats import read_concept_lora, read_embedding
from scenecraft.merge.types import ConceptLoRA
from scenecraft.models import detect_family
from scenecraft.plan import BaseModelSpec, ConceptSpec, MergeSpec
from scenecraft.render.encode import encode_prompts
from tests._fixtures_sdxl import (
    TEXT_PROJECTION,
    one_thread,  # noqa: F401  (autouse)
    sdxl_dir,
    sdxl_files,
    sdxl_index,
    sdxl_lora_modules,
    sdxl_pipe,
    ziggy_layers,
)

PROMPTS = ["photo of a man", "a dog", "photo of a <zig> man"]


def _concepts() -> list[ConceptLoRA]:
    files = sdxl_files()
    ziggy = read_concept_lora(
        files["ziggy"], name="ziggy", tokens=("<zig>",), pipe_or_module_index=sdxl_index()
    )
    ziggy.embeddings = read_embedding(
        files["ziggy_emb"], name="ziggy", tokens=("<zig>",), pipe_or_module_index=sdxl_index()
    )
    ziggy.class_noun = "man"
    momo = read_concept_lora(
        files["momo"],
        name="momo",
        tokens=("<momo>",),
        weight=0.8,
        pipe_or_module_index=sdxl_index(),
    )
    momo.class_noun = "dog"
    return [ziggy, momo]


def _snapshot(pipe: Any) -> dict[str, torch.Tensor]:
    return {
        f"{comp}.{k}": v.clone()
        for comp in ("unet", "text_encoder", "text_encoder_2")
        for k, v in getattr(pipe, comp).state_dict().items()
    }


# ------------------------------------------------------------------------------ the model


def test_tiny_sdxl_has_sdxl_structure(tmp_path: Path) -> None:
    pipe = sdxl_pipe()
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipe.unet.config.addition_embed_type == "text_time"
    widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size)
    assert widths[0] != widths[1] and pipe.unet.config.cross_attention_dim == sum(widths)
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.tokenizer_2.pad_token == "!" != pipe.tokenizer.pad_token  # as SDXL's
    assert detect_family(sdxl_dir()) == "sdxl"


# ---------------------------------------------------------------------------------- files


def test_same_lora_in_kohya_and_peft_form_gives_identical_deltas() -> None:
    files, layers = sdxl_files(), ziggy_layers()
    kohya = read_concept_lora(files["ziggy"], name="k", pipe_or_module_index=sdxl_index())
    peft = read_concept_lora(files["ziggy_peft"], name="p", pipe_or_module_index=sdxl_index())
    assert kohya.metadata["format"] == "kohya" and peft.metadata["format"] == "peft"
    assert kohya.family == peft.family == "sdxl"
    assert set(kohya.layers) == set(peft.layers) == set(layers)
    components = {m.split(".", 1)[0] for m in kohya.layers}
    assert components == {"unet", "text_encoder", "text_encoder_2"}
    assert TEXT_PROJECTION in kohya.layers
    assert any(".mid_block." in m for m in kohya.layers)  # SGM middle_block mapped back
    for m in layers:
        torch.testing.assert_close(kohya.delta(m), peft.delta(m), rtol=0, atol=0)
        torch.testing.assert_close(kohya.delta(m), layers[m].delta(), rtol=0, atol=0)


def test_sdxl_embedding_binds_to_both_encoders(tmp_path: Path) -> None:
    rows = read_embedding(
        sdxl_files()["ziggy_emb"], name="z", tokens=("<zig>",), pipe_or_module_index=sdxl_index()
    )
    assert {c: r["<zig>"].shape for c, r in rows.items()} == {
        "text_encoder": (2, 32),
        "text_encoder_2": (2, 48),
    }
    # an SD 1.x-style single tensor fits text_encoder's width but not an SDXL base
    save_file({"<x>": torch.zeros(1, 32)}, str(tmp_path / "sd15.safetensors"))
    save_file(
        {"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(1, 48)},
        str(tmp_path / "ragged.safetensors"),
    )
    for name in ("sd15", "ragged"):
        with pytest.raises(DiagnosticError) as info:
            read_embedding(
                tmp_path / f"{name}.safetensors",
                name="x",
                tokens=("<x>",),
                pipe_or_module_index=sdxl_index(),
            )
        assert info.value.diagnostics[0].code == "embedding-shape-mismatch", name


# ------------------------------------------------------------------------------- features


def test_context_states_are_what_the_pipeline_conditions_on() -> None:
    pipe = sdxl_pipe()
    hidden, mask = F.context_states(pipe, PROMPTS, ["man"])
    enc = encode_prompts(pipe, PROMPTS)
    assert enc.embeds.shape == (3, 77, pipe.unet.config.cross_attention_dim)
    assert enc.pooled is not None and enc.pooled.shape == (3, 40)
    n = hidden.shape[1]
    torch.testing.assert_close(hidden, enc.embeds[:, :n].float(), rtol=1e-5, atol=1e-5)
    # the mask: every position from "man" on (from the end token where "man" is absent)
    ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=n).input_ids
    eos = pipe.tokenizer.eos_token_id
    man = pipe.tokenizer("man", add_special_tokens=False).input_ids[0]
    for b in range(3):
        first = ids[b].index(man) if man in ids[b] else ids[b].index(eos)
        assert mask[b].tolist() == [t >= first for t in range(n)], PROMPTS[b]


def test_encode_prompts_none_is_the_pipelines_missing_prompt() -> None:
    from scenecraft.testing import tiny_pipeline

    pipe = sdxl_pipe()
    enc = encode_prompts(pipe, [None, "a dog"])
    assert pipe.config.force_zeros_for_empty_prompt
    assert enc.pooled is not None
    assert enc.embeds[0].abs().max() == 0 and enc.pooled[0].abs().max() == 0
    assert enc.embeds[1].abs().max() > 0
    sd = tiny_pipeline(0)
    plain = encode_prompts(sd, [None, ""])
    assert plain.pooled is None and plain.embeds.shape == (2, 77, 32)
    torch.testing.assert_close(plain.embeds[0], plain.embeds[1])


def test_text_rows_read_each_encoder_with_its_tokenizer() -> None:
    pipe = sdxl_pipe()
    paths = [
        "text_encoder.encoder.layers.0.self_attn.q_proj",
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc1",
        TEXT_PROJECTION,
    ]
    X = F.text_rows(pipe, F.resolve_modules(pipe, paths), PROMPTS, cap=1000, seed=0)
    n_real = sum(len(pipe.tokenizer(p).input_ids) for p in PROMPTS)
    assert X[paths[0]].shape == (n_real, 32)
    assert X[paths[1]].shape == (n_real, 48)
    assert X[TEXT_PROJECTION].shape == (len(PROMPTS), 48)  # one pooled row per prompt


# ----------------------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def sdxl_runs() -> dict[str, Any]:
    pipe, concepts = sdxl_pipe(), _concepts()
    before = _snapshot(pipe)
    cfg = MergeConfig(
        figure_stages=Stages(spatial=True), spatial_steps=2, spatial_size=32, spatial_max_rows=64
    )
    runs = {
        m: run_merge(
            pipe, concepts, parse(m, {"spatial": True} if m != "linear" else {}), config=cfg
        )
        for m in ("linear", "loraclr", "gradient-fusion")
    }
    runs["before"], runs["after"] = before, _snapshot(pipe)
    return runs


@pytest.mark.slow
def test_feature_methods_run_on_sdxl_and_beat_linear(sdxl_runs: dict[str, Any]) -> None:
    linear = sdxl_runs["linear"].figures
    assert linear["modules"]["fallback"] == 0  # every layer has a feature stage
    te2 = [p for p, st in linear["layers"].items() if p.startswith("text_encoder_2.")]
    assert TEXT_PROJECTION in te2 and all(
        linear["layers"][p]["stage"] == "text-encoder" for p in te2
    )
    for method in ("loraclr", "gradient-fusion"):
        figures = sdxl_runs[method].figures
        assert set(figures["stages"]) == {"text-encoder", "cross-attention", "spatial"}
        for stage in ("text-encoder", "cross-attention"):
            ours, base = figures["stages"][stage], linear["stages"][stage]
            assert ours["solved"] > 0
            for name in ("ziggy", "momo"):
                assert (
                    ours["per_concept"][name]["fidelity"]["mean"]
                    < base["per_concept"][name]["fidelity"]["mean"]
                ), (method, stage, name)


@pytest.mark.slow
def test_sdxl_merge_leaves_the_pipeline_unchanged(sdxl_runs: dict[str, Any]) -> None:
    before, after = sdxl_runs["before"], sdxl_runs["after"]
    # new tokens (<zig>, <zig>_1) are appended to both vocabularies; nothing else changes
    for key in before:
        assert torch.equal(before[key], after[key][: len(before[key])]), key
    for comp in ("text_encoder", "text_encoder_2"):
        key = (
            f"{comp}.{'text_model.' if comp.endswith('2') else ''}embeddings.token_embedding.weight"
        )
        assert after[key].shape[0] == before[key].shape[0] + 2
    assert sdxl_pipe().tokenizer.convert_tokens_to_ids(
        "<zig>_1"
    ) == sdxl_pipe().tokenizer_2.convert_tokens_to_ids("<zig>_1")


def test_cross_attention_fusion_is_exact_with_few_rows() -> None:
    """2 concepts × ~8 context rows < 80 context dims: stage 2 can match both exactly — which
    checks that K/V features are the concatenated context of the MERGED text encoders
    (`co_subjects` off: no region-shaped rows, no K/V map). `sequential` off: with a ridge of
    1e-10 the layer-by-layer text-encoder fit interpolates near-duplicate rows of the merged
    encoder and its contexts blow up (row norms ~1e5), which no float K/V solve matches."""
    pipe, concepts = sdxl_pipe(), _concepts()
    params = GradientFusion(co_subjects=False, sequential=False, ridge=1e-10)
    outcome = run_merge(pipe, concepts, params)
    assert outcome.figures["stages"]["cross-attention"]["fidelity"]["worst"] < 1e-3
    # check it independently: the merged K of one layer on the merged encoders' context
    path = next(p for p in outcome.weights if p.endswith("attn2.to_k"))
    modules = F.resolve_modules(pipe, list(outcome.weights))
    merged_te = {p: w for p, w in outcome.weights.items() if p.startswith(F.TEXT_PREFIXES)}
    with F.token_embeddings(pipe, concepts) as texts, F.patched(modules, merged_te):
        prompts = F.concept_prompts(concepts[1], texts, MergeConfig().templates)
        X = F.token_states(pipe, prompts, ["<momo>"])
    W0 = F.weight_matrix(modules[path]).float()
    target = X @ (W0 + concepts[1].delta(path)).T
    torch.testing.assert_close(X @ outcome.weights[path].T, target, rtol=1e-3, atol=1e-3)


def test_unsupported_families_are_named() -> None:
    pipe, concepts = sdxl_pipe(), _concepts()
    refiner = types.SimpleNamespace(
        unet=pipe.unet,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=pipe.text_encoder_2,
        tokenizer_2=pipe.tokenizer_2,
    )
    only_te2 = [
        ConceptLoRA(
            c.name, c.tokens, {p: v for p, v in c.layers.items() if p.startswith("text_encoder_2")}
        )
        for c in concepts
    ]
    with pytest.raises(DiagnosticError) as info:
        run_merge(refiner, only_te2, parse("loraclr"))
    diag = info.value.diagnostics[0]
    assert diag.code == "merge-unsupported-family" and "refiner" in diag.message
    assert "SD3" in " ".join(diag.notes) and diag.help
    outcome = run_merge(refiner, only_te2, parse("linear"))  # data-free: merged, no figures
    assert outcome.weights
    assert outcome.figures["stages"]["text-encoder"]["fidelity"]["mean"] is None  # no features


# ---------------------------------------------------------------------------- apply, render


def test_merged_sdxl_applies_and_renders(tmp_path: Path) -> None:
    files = sdxl_files()
    spec = MergeSpec(
        base=BaseModelSpec(source=str(sdxl_dir()), family="sdxl"),
        concepts=(
            ConceptSpec(
                name="ziggy",
                tokens=("<zig>",),
                lora=str(files["ziggy"]),
                embedding=str(files["ziggy_emb"]),
                class_noun="man",
            ),
            ConceptSpec(name="momo", tokens=("<momo>",), lora=str(files["momo"]), weight=0.8),
        ),
        method="loraclr",
        params={"iterations": 5},  # the plan holds the method's typed parameters
    )
    base = sdxl_pipe()
    result = merge(spec, base, cache_dir=tmp_path / "cache")
    assert not result.cached and result.manifest["tokens"] == {
        "text_encoder": ["<zig>"],
        "text_encoder_2": ["<zig>"],
    }
    assert any(m.startswith("text_encoder_2.") for m in result.manifest["modules"])
    assert merge(spec, base, cache_dir=tmp_path / "cache").cached
    pipe = copy.deepcopy(base)
    w0 = module_weight(pipe, TEXT_PROJECTION).clone()
    added = apply_merge(pipe, result)
    assert set(added) == {"text_encoder", "text_encoder_2"}
    assert not torch.equal(module_weight(pipe, TEXT_PROJECTION), w0)

    def render(p: Any) -> Any:
        out = p(
            "photo of a <zig> man",
            num_inference_steps=2,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        return out.images

    merged, plain = render(pipe), render(base)
    assert merged.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(merged)).all())
    assert abs(merged - plain).max() > 1e-3
    # the prompt's <zig> is expanded to "<zig> <zig>_1" in BOTH tokenizers by the pipeline
    assert pipe.tokenizer.tokenize("<zig>_1") == ["<zig>_1"]
    assert pipe.tokenizer_2.tokenize("<zig>_1") == ["<zig>_1"]


def test_lora_modules_cover_both_text_encoders() -> None:
    modules = sdxl_lora_modules()
    assert any(m.startswith("text_encoder_2.text_model.") for m in modules)
    assert any(".attn2.to_k" in m for m in modules)


def test_sdxl_in_fp16_decodes_with_an_fp32_vae() -> None:
    """The fp16 VAE caveat: scenecraft loads SDXL in fp16 with the VAE's force_upcast kept, so
    the decode runs in fp32 (no NaN / black images) and the VAE is fp16 again afterwards."""
    import numpy as np

    from scenecraft.models import load_pipeline, sdxl_vae_note

    base = BaseModelSpec(source=str(sdxl_dir()), family="sdxl")
    pipe = load_pipeline(base, device="cpu", dtype="float16")
    assert pipe.unet.dtype == pipe.vae.dtype == torch.float16
    note = sdxl_vae_note(pipe)
    assert note is not None and "float32" in note and "bfloat16" in note
    seen: list[torch.dtype] = []
    pipe.vae.decoder.conv_in.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    out = pipe("photo of a man", num_inference_steps=2, height=32, width=32, output_type="np")
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16
    assert np.isfinite(out.images).all()
    assert sdxl_vae_note(sdxl_pipe()) is None  # fp32: nothing to say


def test_spatial_stage_sees_sdxl_added_conditioning() -> None:
    """Stage 3 runs the pipeline itself: the UNet's add_embedding reads [pooled text | time-id
    embedding], the pooled text of the concept prompt (cond half) and zeros (uncond half, SDXL's
    force_zeros_for_empty_prompt), at every step."""
    pipe = sdxl_pipe()
    path = "unet.add_embedding.linear_1"
    modules = F.resolve_modules(pipe, [path])
    X = F.spatial_rows(pipe, modules, "photo of a man", 2, 32, 7.5, 100, 0)[path]
    pooled = encode_prompts(pipe, ["photo of a man"]).pooled
    assert pooled is not None
    width = pooled.shape[1]
    assert X.shape == (4, width + 6 * pipe.unet.config.addition_time_embed_dim)  # 2 steps × CFG
    text = X[:, :width]
    cond = [r for r in text if r.abs().max() > 0]
    assert len(cond) == 2 and sum(1 for r in text if r.abs().max() == 0) == 2
    for row in cond:
        torch.testing.assert_close(row, pooled[0].float(), rtol=1e-5, atol=1e-5)
    # time ids: original size, crop top-left, target size = the stage's 32 × 32
    ids = torch.tensor([32.0, 32.0, 0.0, 0.0, 32.0, 32.0])
    time_part = pipe.unet.add_time_proj(ids).reshape(1, -1).float()
    torch.testing.assert_close(X[:, width:], time_part.expand(4, -1), rtol=1e-5, atol=1e-5)
