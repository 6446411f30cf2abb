"""LoRA ingestion: every format gives the same ΔW as peft applies, and bad files are refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from scenecraft.diagnostics import DiagnosticError
from scenecraft.merge.formats import inspect_lora, read_concept_lora, read_embedding
from scenecraft.merge.formats_index import ModuleIndex
from tests._fixtures_merge_io import base_index_fixture, base_pipe_fixture  # noqa: F401
from tests._lora_files import (
    kohya_state,
    lora_modules,
    random_concept_layers,
    write_edlora,
    write_embedding,
    write_kohya_lora,
    write_peft_lora,
)


def _code(exc: pytest.ExceptionInfo[DiagnosticError]) -> str:
    return exc.value.diagnostics[0].code


def _read(path: Path, index: ModuleIndex, **kw: Any) -> Any:
    return read_concept_lora(path, name=kw.pop("name", "zig"), pipe_or_module_index=index, **kw)


# ------------------------------------------------------------------------ same ΔW everywhere


def test_peft_kohya_edlora_give_identical_deltas(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    modules = lora_modules(base_pipe)
    assert any("proj_in" in m for m in modules) and any(
        m.startswith("text_encoder.") for m in modules
    )
    peft = write_peft_lora(tmp_path / "a.safetensors", base_pipe, modules, rank=4, seed=1)
    kohya = write_kohya_lora(tmp_path / "b.safetensors", base_pipe, modules, rank=4, seed=1)
    edlora, rows = write_edlora(
        tmp_path / "c.pth", base_pipe, modules, rank=4, seed=1, tokens=("<zig>",)
    )
    read = {
        "peft": _read(tmp_path / "a.safetensors", base_index),
        "kohya": _read(tmp_path / "b.safetensors", base_index),
        "edlora": _read(tmp_path / "c.pth", base_index, tokens=("<zig>",)),
    }
    assert {c.metadata["format"] for c in read.values()} == {"peft", "kohya", "edlora"}
    for concept in read.values():
        assert sorted(concept.layers) == modules
        for m in modules:
            torch.testing.assert_close(concept.delta(m), peft[m].delta(), rtol=0, atol=0)
    assert all(
        torch.equal(peft[m].down, kohya[m].down) and torch.equal(peft[m].up, edlora[m].up)
        for m in modules
    )
    emb = read["edlora"].embeddings["text_encoder"]["<zig>"]
    assert emb.shape == (16, 32) and torch.equal(emb, rows["<zig>"])
    # 16 rows but the tiny UNet has 6 cross-attention layers: a multi-vector embedding, not
    # layer-wise (tests/test_edlora.py reads files with one row per layer)


@pytest.mark.parametrize("form", ["peft", "kohya"])
def test_delta_equals_what_peft_fuses(
    form: str, tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    """ΔW = w · alpha/r · B A, compared with diffusers/peft's load_lora_weights + fuse_lora."""
    modules = lora_modules(base_pipe)
    path = tmp_path / f"{form}.safetensors"
    writer = write_peft_lora if form == "peft" else write_kohya_lora
    writer(path, base_pipe, modules, rank=4, seed=2, alpha=2.0)
    concept = _read(path, base_index, weight=0.5)
    pipe = copy.deepcopy(base_pipe)
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora(lora_scale=0.5)
    for m in modules:
        component, _, rel = m.partition(".")
        fused = getattr(pipe, component).get_submodule(rel)
        fused = getattr(fused, "base_layer", fused).weight.detach()
        w0 = getattr(base_pipe, component).get_submodule(rel).weight.detach()
        applied = (fused - w0).reshape(w0.shape[0], -1)
        assert concept.layers[m].alpha == 2.0
        torch.testing.assert_close(concept.delta(m), applied, rtol=0, atol=1e-6)
    assert concept.delta(modules[0]).abs().max() > 1e-3  # the comparison is not vacuous


def test_old_diffusers_naming_reads_through_diffusers(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    """Files in the pre-PEFT attention-processor naming (`…processor.to_k_lora.down.weight`)."""
    from diffusers import StableDiffusionPipeline

    modules = lora_modules(base_pipe)
    layers = random_concept_layers(base_pipe, modules, rank=2, seed=3)
    old, _ = StableDiffusionPipeline.lora_state_dict(kohya_state(layers, base_index.shapes))
    assert any(".processor.to_k_lora.down.weight" in k for k in old)
    save_file({k: v.contiguous() for k, v in old.items()}, str(tmp_path / "old.safetensors"))
    concept = _read(tmp_path / "old.safetensors", base_index)
    assert concept.metadata["format"] == "diffusers-old"
    for m in modules:  # no alphas in this naming: alpha = r
        torch.testing.assert_close(concept.delta(m), layers[m].delta(), rtol=0, atol=0)


def test_sdxl_kohya_te1_te2_keys(tmp_path: Path) -> None:
    """SDXL kohya naming (lora_te1_, lora_te2_, text_projection) on an SDXL-shaped index."""
    shapes: dict[str, tuple[int, ...]] = {
        "text_encoder.encoder.layers.0.self_attn.q_proj": (32, 32),
        "text_encoder_2.encoder.layers.0.self_attn.k_proj": (48, 48),
        "text_encoder_2.encoder.layers.0.mlp.fc1": (64, 48),
        "text_encoder_2.text_projection": (48, 48),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (64, 2048),
    }
    index = ModuleIndex(
        shapes, family="sdxl", embedding_dims={"text_encoder": 32, "text_encoder_2": 48}
    )
    layers = write_kohya_lora(
        tmp_path / "xl.safetensors", shapes, list(shapes), 2, 7, alpha=1.0, sdxl=True
    )
    concept = _read(tmp_path / "xl.safetensors", index)
    assert sorted(concept.layers) == sorted(shapes) and concept.family == "sdxl"
    for m in shapes:
        torch.testing.assert_close(concept.delta(m), layers[m].delta(), rtol=0, atol=0)


# ------------------------------------------------------------------------ textual inversion


@pytest.mark.parametrize(
    ("name", "form"),
    [("e.safetensors", "diffusers"), ("learned_embeds.bin", "diffusers"), ("e.pt", "a1111")],
)
def test_textual_inversion_bound_to_concept_token(
    name: str, form: str, tmp_path: Path, base_index: ModuleIndex
) -> None:
    rows = torch.randn(3, 32)
    write_embedding(tmp_path / name, "*" if form == "a1111" else "<trained>", rows, form=form)
    got = read_embedding(
        tmp_path / name, name="zig", tokens=("<zig>",), pipe_or_module_index=base_index
    )
    assert list(got) == ["text_encoder"] and list(got["text_encoder"]) == ["<zig>"]
    torch.testing.assert_close(got["text_encoder"]["<zig>"], rows)
    as_lora = _read(tmp_path / name, base_index, tokens=("<zig>",))  # an embedding given as `lora`
    assert as_lora.layers == {} and torch.equal(as_lora.embeddings["text_encoder"]["<zig>"], rows)


# ------------------------------------------------------------------------------- inspection


def test_inspect_kohya_metadata(tmp_path: Path, base_pipe: Any) -> None:
    tags = {"10_zig": {"zig": 40, "man": 12, "smiling": 30}, "5_reg": {"man": 20}}
    meta = {"ss_base_model_version": "sd_v1", "ss_tag_frequency": json.dumps(tags)}
    modules = lora_modules(base_pipe, r"attn2\.to_k")
    write_kohya_lora(
        tmp_path / "k.safetensors", base_pipe, modules, rank=8, seed=4, alpha=4.0, metadata=meta
    )
    info = inspect_lora(tmp_path / "k.safetensors")
    assert (info.format, info.family, info.modules, info.ranks) == (
        "kohya",
        "sd15",
        len(modules),
        (8,),
    )
    assert info.trigger_words == ("zig", "man", "smiling")  # man: 12 + 20
    assert (info.network_dim, info.network_alpha, info.components) == (8, 4.0, ("unet",))


def test_family_detected_from_sdxl_metadata_and_keys(tmp_path: Path, base_pipe: Any) -> None:
    modules = lora_modules(base_pipe, r"attn2\.to_q")
    write_kohya_lora(
        tmp_path / "x.safetensors",
        base_pipe,
        modules,
        2,
        5,
        metadata={"ss_base_model_version": "sdxl_base_v1-0"},
    )
    assert inspect_lora(tmp_path / "x.safetensors").family == "sdxl"
    wide = {m: (320, 1024) for m in ("unet.a.attn2.to_k",)}
    write_kohya_lora(tmp_path / "y.safetensors", wide, list(wide), 2, 5)
    assert inspect_lora(tmp_path / "y.safetensors").family == "sd2"  # 1024-wide cross-attention


# ------------------------------------------------------------------------------- refusals


def _mismatched_shapes(index: ModuleIndex) -> dict[str, tuple[int, ...]]:
    """The tiny model's shapes as if its cross_attention_dim were 48 instead of 32."""
    return {
        m: (s[0], 48) if m.endswith(("attn2.to_k", "attn2.to_v")) else s
        for m, s in index.shapes.items()
    }


def test_lora_for_other_cross_attention_dim(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    shapes = _mismatched_shapes(base_index)
    modules = lora_modules(base_pipe, r"attn2\.to_[qk]")
    write_kohya_lora(tmp_path / "wide.safetensors", shapes, modules, rank=4, seed=6)
    with pytest.raises(DiagnosticError) as exc:
        _read(tmp_path / "wide.safetensors", base_index, name="gosling")
    d = exc.value.diagnostics[0]
    first_bad = next(m for m in modules if m.endswith("to_k"))
    assert d.code == "lora-shape-mismatch"
    assert (
        d.message
        == f"concept `gosling`: `{tmp_path / 'wide.safetensors'}` does not fit the base model at layer `{first_bad}`"
    )
    assert (
        d.notes[0]
        == "the base model's weight is (64, 32), the LoRA's update B·A is (64, 48) (rank 4)"
    )
    assert d.help


def _write_truncated(path: Path, base_pipe: Any) -> None:
    write_kohya_lora(path, base_pipe, lora_modules(base_pipe, r"attn2"), 4, 7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _NotWeights:
    pass


def _bad_file(kind: str, tmp_path: Path, base_pipe: Any, base_index: ModuleIndex) -> Path:
    t = torch.zeros
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        _write_truncated(path, base_pipe)
    elif kind == "truncated-pth":
        path = tmp_path / "t.pth"
        write_edlora(path, base_pipe, lora_modules(base_pipe, r"attn2"), 4, 7)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "pickled-code":
        path = tmp_path / "code.pt"
        torch.save({"x": _NotWeights()}, str(path))
    elif kind == "loha":
        save_file(
            {f"{key}.hada_w1_a": t(4, 4), f"{key}.hada_w1_b": t(4, 32), f"{key}.alpha": t(())},
            str(path),
        )
    elif kind == "lokr":
        save_file(
            {f"{key}.lokr_w1": t(8, 8), f"{key}.lokr_w2": t(8, 4), f"{key}.alpha": t(())}, str(path)
        )
    elif kind == "lora-mid":
        save_file(
            {
                f"{key}.lora_down.weight": t(4, 32),
                f"{key}.lora_mid.weight": t(4, 4, 3, 3),
                f"{key}.lora_up.weight": t(64, 4),
            },
            str(path),
        )
    elif kind == "not-a-lora":
        save_file({"conv_in.weight": t(32, 4, 3, 3), "conv_in.bias": t(32)}, str(path))
    elif kind == "missing":
        path = tmp_path / "nowhere.safetensors"
    elif kind == "nan":
        layers = random_concept_layers(base_pipe, lora_modules(base_pipe, r"attn2\.to_k"), 4, 8)
        next(iter(layers.values())).up[0, 0] = float("nan")
        save_file(kohya_state(layers, base_index.shapes), str(path))
    elif kind == "unknown-modules":
        state = kohya_state(
            random_concept_layers(base_pipe, lora_modules(base_pipe, r"attn2\.to_k"), 4, 9),
            base_index.shapes,
        )
        state.update(
            {k.replace("down_blocks_1", "down_blocks_7"): v.clone() for k, v in state.items()}
        )
        save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("truncated", "lora-unreadable"),
        ("truncated-pth", "lora-unreadable"),
        ("pickled-code", "lora-unreadable"),
        ("loha", "lora-unsupported-variant"),
        ("lokr", "lora-unsupported-variant"),
        ("lora-mid", "lora-unsupported-variant"),
        ("not-a-lora", "lora-unknown-format"),
        ("missing", "lora-not-found"),
        ("nan", "lora-non-finite"),
        ("unknown-modules", "lora-unknown-modules"),
    ],
)
def test_refusals_have_documented_codes(
    kind: str, code: str, tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    path = _bad_file(kind, tmp_path, base_pipe, base_index)
    with pytest.raises(DiagnosticError) as exc:
        _read(path, base_index, name="gosling")
    d = exc.value.diagnostics[0]
    assert d.code == code and "`gosling`" in d.message and d.help
    documented = (Path(__file__).parents[1] / "docs" / "merge.md").read_text(encoding="utf-8")
    assert f"`{code}`" in documented


def test_unknown_modules_are_listed(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    with pytest.raises(DiagnosticError) as exc:
        _read(_bad_file("unknown-modules", tmp_path, base_pipe, base_index), base_index)
    notes = exc.value.diagnostics[0].notes
    assert notes and all("down_blocks.7" in n for n in notes)


def test_loha_names_the_variant_and_suggests_conversion(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    with pytest.raises(DiagnosticError) as exc:
        _read(_bad_file("loha", tmp_path, base_pipe, base_index), base_index)
    d = exc.value.diagnostics[0]
    assert "LoHa" in d.message and d.help is not None and "extract" in d.help


def test_embedding_width_and_edlora_token_mismatch(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    write_embedding(tmp_path / "wide.safetensors", "<t>", torch.randn(1, 48))
    with pytest.raises(DiagnosticError) as exc:
        read_embedding(
            tmp_path / "wide.safetensors",
            name="zig",
            tokens=("<zig>",),
            pipe_or_module_index=base_index,
        )
    assert _code(exc) == "embedding-shape-mismatch"
    write_edlora(
        tmp_path / "e.pth",
        base_pipe,
        lora_modules(base_pipe, r"attn2\.to_k"),
        2,
        1,
        tokens=("<x1>",),
    )
    with pytest.raises(DiagnosticError) as exc:
        _read(tmp_path / "e.pth", base_index, tokens=("<other>",))
    assert _code(exc) == "edlora-token-mismatch" and "`<x1>`" in exc.value.diagnostics[0].message
