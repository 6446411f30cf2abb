"""`scenecraft export`: the LoRA factoring, key names, the single-file layout, ComfyUI workflows
checked against ComfyUI's recorded node definitions, and the round trip into plain diffusers
(tiny SD 1.x and SDXL): exported LoRA (+ embedding) loaded with ``load_lora_weights`` +
``fuse_lora``, the checkpoint with ``from_single_file``, the diffusers folder with
``from_pretrained``, each against scenecraft's own merged model."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scenecraft.cli import main
from scenecraft.export.checkpoint import ldm_checkpoint
from scenecraft.export.comfyui import ModelFiles, comfy_sampler, plan_workflows, with_embeddings
from scenecraft.export.lora import choose_rank, factor, kohya_key
from scenecraft.merge.apply import apply_merge, module_weight
from scenecraft.merge.cache import load_entry
from scenecraft.names import COMFYUI_SAMPLERS, SAMPLERS
from tests._fixtures_render import lora_files, one_thread, saved_pipeline_dir  # noqa: F401
from tests._lora_files import write_embedding

NODES = json.loads((Path(__file__).parent / "data" / "comfyui_nodes.json").read_text())
PROMPT = "photo of a <ZIGGY> man"
BUDGET = 0.01


# ------------------------------------------------------------------------------ factoring


def _matrix(singular: list[float], shape: tuple[int, int], keep: int | None = None) -> torch.Tensor:
    """U diag(σ) Vᵀ with fixed random orthonormal U, V; ``keep``: only the first singular values."""
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], len(singular), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], len(singular), generator=g, dtype=torch.float64))
    k = len(singular) if keep is None else keep
    return (u[:, :k] * torch.tensor(singular[:k], dtype=torch.float64)) @ v[:, :k].T


def test_rank_is_the_smallest_that_meets_the_budget() -> None:
    sigma = [10.0, 5.0, 1.0, 0.05, 0.01]  # tail after 3: sqrt(0.0026) / sqrt(126.0026) = 0.0045
    delta = _matrix(sigma, (12, 9))
    f = factor("unet.x", delta, max_error=0.01, dtype=torch.float64)
    assert f is not None and (f.rank, f.full_rank) == (3, 9) and f.error <= 0.01
    assert f.error == pytest.approx(0.0026**0.5 / 126.0026**0.5)
    assert choose_rank(torch.tensor(sigma), 0.004) == 4  # 0.0045 > 0.004: one more
    torch.testing.assert_close(f.up @ f.down, _matrix(sigma, (12, 9), keep=3), rtol=0, atol=1e-9)
    fixed = factor("unet.x", delta, max_error=None, rank=1, dtype=torch.float64)
    assert fixed is not None and fixed.rank == 1
    assert fixed.error == pytest.approx((5**2 + 1 + 0.05**2 + 0.01**2) ** 0.5 / 126.0026**0.5)
    assert factor("unet.x", torch.zeros(4, 4)) is None


def test_alpha_scales_the_factors_and_convs_keep_their_layout() -> None:
    delta = _matrix([3.0, 2.0], (8, 4 * 9)).float().reshape(8, 4, 3, 3)
    f = factor("unet.conv", delta, max_error=1e-6, dtype=torch.float32, alpha=1.0)
    assert f is not None and f.down.shape == (2, 4, 3, 3) and f.up.shape == (8, 2, 1, 1)
    product = f.up.reshape(8, 2) @ f.down.reshape(2, -1)
    torch.testing.assert_close((1.0 / 2) * product, delta.reshape(8, -1), rtol=1e-4, atol=1e-5)


def test_kohya_names() -> None:
    assert kohya_key("unet.down_blocks.1.attentions.0.proj_in") == (
        "lora_unet_down_blocks_1_attentions_0_proj_in"
    )
    assert kohya_key("text_encoder.encoder.layers.0.self_attn.q_proj") == (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert kohya_key("text_encoder.encoder.layers.0.mlp.fc1", sdxl=True).startswith("lora_te1_")
    assert kohya_key("text_encoder_2.text_projection", sdxl=True) == "lora_te2_text_projection"


def test_single_file_names_invert_diffusers_converters() -> None:
    """diffusers' own LDM -> diffusers converters give back every weight exactly."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    from tests._fixtures_render import tiny_pipe

    pipe = tiny_pipe()
    state = ldm_checkpoint(pipe, {}, torch.float32)
    for module, back in (
        (pipe.unet, convert_ldm_unet_checkpoint(state, dict(pipe.unet.config))),
        (pipe.vae, convert_ldm_vae_checkpoint(state, dict(pipe.vae.config))),
        (pipe.text_encoder, convert_ldm_clip_checkpoint(state)),
    ):
        own = module.state_dict()
        if module is pipe.text_encoder:
            back = {k.removeprefix("text_model."): v for k, v in back.items()}
        assert set(back) == set(own)
        for key, value in own.items():
            assert torch.equal(back[key].reshape(value.shape), value), key


# --------------------------------------------------------------------- the ComfyUI table


def test_every_language_sampler_is_mapped_or_warned() -> None:
    choices = NODES["nodes"]["KSampler"]["required"]
    assert set(SAMPLERS) == set(COMFYUI_SAMPLERS)
    for name in SAMPLERS:
        (sampler, scheduler), problem = comfy_sampler(name)
        assert sampler in choices["sampler_name"] and scheduler in choices["scheduler"]
        assert (problem is None) == (COMFYUI_SAMPLERS[name] is not None), name
        if problem is not None:
            assert problem.code == "comfyui-sampler-unmapped" and problem.severity == "warning"


def test_embedded_tokens_are_written_the_comfyui_way() -> None:
    names = {"<ZIGGY>": "ZIGGY", "<Z>": "Z"}
    assert with_embeddings("a <ZIGGY> and <Z>, <ZIGGY>s", names) == (
        "a embedding:ZIGGY and embedding:Z, <ZIGGY>s"
    )


def validate_workflow(workflow: dict[str, Any]) -> None:
    """Every node a recorded built-in class, every required input present with the right link
    type or value kind, nothing else."""
    nodes = NODES["nodes"]
    for node_id, node in workflow.items():
        spec = nodes.get(node["class_type"])
        assert spec is not None, f"node {node_id}: unknown class {node['class_type']}"
        inputs = node["inputs"]
        assert set(inputs) == set(spec["required"]), (node_id, node["class_type"])
        for name, kind in spec["required"].items():
            value = inputs[name]
            if isinstance(kind, list):
                assert value in kind, (node_id, name, value)
            elif kind == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), (node_id, name)
            elif kind == "FLOAT":
                assert isinstance(value, int | float), (node_id, name)
            elif kind in ("STRING", "FILENAME"):
                assert isinstance(value, str) and (kind == "STRING" or value), (node_id, name)
            else:  # a link [node, output] to a node returning that type
                source, index = value
                outputs = nodes[workflow[source]["class_type"]]["outputs"]
                assert outputs[index] == kind, (node_id, name, outputs, index)
        for key, (low, high, _) in NODES["ranges"].items():
            cls, _, field = key.partition(".")
            if node["class_type"] == cls:
                assert low <= inputs[field] <= high, (node_id, key, inputs[field])


def test_validator_rejects_what_comfyui_would() -> None:
    good = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 1]}},
    }
    validate_workflow(good)
    for bad in (
        {**good, "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 0]}}},
        {**good, "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a"}}},
        {**good, "2": {"class_type": "RegionalPrompt", "inputs": {}}},
    ):
        with pytest.raises(AssertionError):
            validate_workflow(bad)


# --------------------------------------------------------------- round trip, tiny SD 1.x


def _scene(folder: Path, sampler: str = "DDIM", extra: str = "") -> Path:
    ziggy, momo = lora_files()
    emb = folder / "ziggy-emb.safetensors"
    write_embedding(
        emb, "<ZIGGY>", 0.05 * torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    )
    scene = folder / "cast.scene"
    scene.write_text(
        f'model "{saved_pipeline_dir()}" family sd15\n'
        f'concept ziggy {{\n  token "<ZIGGY>"\n  class "man"\n  lora "{ziggy}"\n'
        f'  embedding "{emb}"\n}}\n'
        f'concept momo {{\n  token "<MOMO>"\n  class "dog"\n  lora "{momo}"\n}}\n'
        "merge linear\n"
        f'defaults {{\n  size 64x64\n  steps 2\n  sampler "{sampler}"\n  seeds 7\n{extra}}}\n'
        'scene park {\n  setting "a park"\n  ziggy left of momo\n}\n'
        "scene alone {\n  ziggy\n}\n",
        encoding="utf-8",
    )
    return scene


@functools.cache
def exported(root: str) -> dict[str, Any]:
    """One export of the two-concept tiny SD scene to every output, shared by the tests below."""
    folder = Path(root)
    scene = _scene(folder)
    out = folder / "out"
    argv = ["export", str(scene), "--json", "--cache-dir", str(folder / "cache")]
    argv += [
        "--lora",
        str(out / "cast.safetensors"),
        "--checkpoint",
        str(out / "cast-ckpt.safetensors"),
    ]
    argv += ["--comfyui", str(out / "wf"), "--diffusers", str(out / "cast-diffusers")]
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return {"report": json.loads(buffer.getvalue()), "out": out, "cache": folder / "cache"}


@pytest.fixture(scope="module")
def export_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return exported(str(tmp_path_factory.mktemp("export")))


def _load(path: Path | str) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe: Any, prompt: str = PROMPT) -> np.ndarray:
    g = torch.Generator().manual_seed(7)
    image = pipe(prompt, height=32, width=32, num_inference_steps=2, generator=g).images[0]
    return np.asarray(image).astype(np.int16)


@functools.cache
def merged_reference(entry: str) -> tuple[Any, np.ndarray]:
    """scenecraft's own merged model (base + the cache entry) and its picture."""
    pipe = _load(saved_pipeline_dir())
    apply_merge(pipe, Path(entry))
    return pipe, _render(pipe)


def test_the_report_and_the_header(export_result: dict[str, Any]) -> None:
    report, out = export_result["report"], export_result["out"]
    lora = report["lora"]
    assert lora["format"] == "kohya" and lora["max_error"] == BUDGET and lora["modules"] > 0
    assert lora["worst_error"] <= BUDGET * 1.05  # the fp16 cast on top of the SVD's budget
    assert all(row["rank"] <= row["full_rank"] for row in lora["layers"])
    assert lora["bytes"] == (out / "cast.safetensors").stat().st_size
    with safe_open(str(out / "cast.safetensors"), framework="pt") as fh:
        meta, keys = fh.metadata(), list(fh.keys())
    assert json.loads(meta["scenecraft.tokens"]) == ["<ZIGGY>", "<MOMO>"]
    assert [c["name"] for c in json.loads(meta["scenecraft.concepts"])] == ["ziggy", "momo"]
    assert (
        meta["scenecraft.method"] == "linear"
        and meta["scenecraft.merge_key"] == report["merge_key"]
    )
    assert meta["scenecraft.version"] and meta["ss_base_model_version"] == "sd_v1"
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys)
    alphas = {
        float(v)
        for k, v in load_file(str(out / "cast.safetensors")).items()
        if k.endswith(".alpha")
    }
    assert alphas == {1.0}  # one alpha for every module
    emb = load_file(report["embeddings"][0])
    assert Path(report["embeddings"][0]).name == "ZIGGY.safetensors"
    assert set(emb) == {"emb_params"} and emb["emb_params"].shape == (2, 32)


def test_plain_diffusers_loads_the_lora_within_the_budget(export_result: dict[str, Any]) -> None:
    out, report = export_result["out"], export_result["report"]
    entry = export_result["cache"] / report["entry"]
    deltas, _, _ = load_entry(entry)
    pipe = _load(saved_pipeline_dir())
    base = {m: module_weight(pipe, m).detach().clone() for m in deltas}
    pipe.load_textual_inversion(report["embeddings"][0], token="<ZIGGY>")
    pipe.load_lora_weights(str(out / "cast.safetensors"))
    pipe.fuse_lora()
    for module, delta in deltas.items():
        got = (module_weight(pipe, module).detach() - base[module]).reshape(delta.shape)
        assert float((got - delta).norm() / delta.norm()) <= BUDGET * 1.1, module
    _, reference = merged_reference(str(entry))
    assert np.abs(_render(pipe) - reference).mean() <= 2.0


def test_peft_names_with_a_fixed_rank(export_result: dict[str, Any], tmp_path: Path) -> None:
    """``--format peft --rank 2``: diffusers' own naming with every module at rank 2 (the
    cached merge is reused); diffusers applies exactly the factors the report's errors describe."""
    out = tmp_path / "cast-peft.safetensors"
    folder = export_result["out"].parent
    argv = [
        "export",
        str(folder / "cast.scene"),
        "--json",
        "--cache-dir",
        str(export_result["cache"]),
    ]
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main([*argv, "--lora", str(out), "--format", "peft", "--rank", "2"]) == 0
    lora = json.loads(buffer.getvalue())["lora"]
    assert lora["rank"] == 2 and {row["rank"] for row in lora["layers"]} == {2}
    keys = list(load_file(str(out)))
    assert keys and all(k.startswith(("unet.", "text_encoder.")) for k in keys)
    deltas, _, _ = load_entry(export_result["cache"] / lora_entry(export_result))
    pipe = _load(saved_pipeline_dir())
    base = {m: module_weight(pipe, m).detach().clone() for m in deltas}
    pipe.load_lora_weights(str(out))
    pipe.fuse_lora()
    errors = {row["module"]: row["error"] for row in lora["layers"]}
    for module, delta in deltas.items():
        got = (module_weight(pipe, module).detach() - base[module]).reshape(delta.shape)
        measured = float((got - delta).norm() / delta.norm())
        assert measured == pytest.approx(errors[module], abs=2e-3), module


def lora_entry(result: dict[str, Any]) -> str:
    return str(result["report"]["entry"])


def test_checkpoint_and_diffusers_folder_render_the_merge(export_result: dict[str, Any]) -> None:
    from diffusers import StableDiffusionPipeline

    out, report = export_result["out"], export_result["report"]
    _, reference = merged_reference(str(export_result["cache"] / report["entry"]))
    single = StableDiffusionPipeline.from_single_file(
        str(out / "cast-ckpt.safetensors"),
        config=str(saved_pipeline_dir()),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    single.set_progress_bar_config(disable=True)
    single.load_textual_inversion(report["embeddings"][0], token="<ZIGGY>")
    assert np.abs(_render(single) - reference).mean() <= 2.0  # fp16 weights
    folder = _load(out / "cast-diffusers")
    assert np.abs(_render(folder) - reference).max() == 0  # fp32, tokens saved in the tokenizer


def test_workflows_use_only_recorded_builtin_nodes(export_result: dict[str, Any]) -> None:
    paths = sorted(Path(p) for p in export_result["report"]["workflows"])
    assert [p.name for p in paths] == ["alone-7.json", "park-7.json"]
    park = json.loads(paths[1].read_text())
    validate_workflow(park)
    validate_workflow(json.loads(paths[0].read_text()))
    classes = [n["class_type"] for n in park.values()]
    assert classes.count("ConditioningSetMask") == 2 and classes.count("CLIPTextEncode") == 4
    sampler = next(n["inputs"] for n in park.values() if n["class_type"] == "KSampler")
    assert (sampler["seed"], sampler["steps"]) == (7, 2)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("ddim", "ddim_uniform")
    loader = next(n["inputs"] for n in park.values() if n["class_type"] == "CheckpointLoaderSimple")
    assert loader["ckpt_name"] == "cast-ckpt.safetensors"  # the fused checkpoint: no LoraLoader
    texts = [n["inputs"]["text"] for n in park.values() if n["class_type"] == "CLIPTextEncode"]
    assert any("embedding:ZIGGY" in t for t in texts) and not any("<ZIGGY>" in t for t in texts)


def object_info() -> dict[str, Any]:
    """The recorded node definitions in ComfyUI's own ``/object_info`` shape (model-folder
    listings as combos whose choices are unknown)."""

    def entry(kind: Any) -> list[Any]:
        if isinstance(kind, list):
            return [kind, {}]
        return ["COMBO", {}] if kind == "FILENAME" else [kind, {}]

    return {
        name: {
            "input": {"required": {k: entry(v) for k, v in spec["required"].items()}},
            "output": spec["outputs"],
        }
        for name, spec in NODES["nodes"].items()
    }


def test_comfy_lint_finds_nothing_wrong(export_result: dict[str, Any]) -> None:
    """The workflows through comfy-lint (PyPI; static checks against an ``/object_info``
    schema: unknown nodes, missing or extra inputs, enum values, links and their types)."""
    linter = pytest.importorskip("comfy_lint", reason="comfy-lint is in the `test` extra")
    from comfy_lint.schema import normalize

    schema = normalize(object_info(), source="tests/data/comfyui_nodes.json")
    for path in export_result["report"]["workflows"]:
        findings = linter.lint_workflow(json.loads(Path(path).read_text()), schema)
        assert [(d.rule, d.node_id, d.field) for d in findings] == [], path
    broken = json.loads(Path(export_result["report"]["workflows"][0]).read_text())
    broken["1"]["class_type"] = "CheckpointLoaderFancy"
    assert "unknown-node" in {d.rule for d in linter.lint_workflow(broken, schema)}


def test_workflows_with_the_lora_on_the_base(tmp_path: Path, export_result: dict[str, Any]) -> None:
    from scenecraft import load

    plan = load(str(_scene(tmp_path, sampler="PLMS"))).plan
    files = ModelFiles("tiny-sd.safetensors", "cast.safetensors", {"<ZIGGY>": "ZIGGY"})
    workflows, warnings = plan_workflows(plan, files)
    for workflow in workflows.values():
        validate_workflow(workflow)
        assert sum(n["class_type"] == "LoraLoader" for n in workflow.values()) == 1
    assert [w.code for w in warnings] == ["comfyui-sampler-unmapped"]


def test_export_refuses_what_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = str(_scene(tmp_path))
    for argv, code in (
        ([], "export-no-output"),
        (["--comfyui", str(tmp_path / "wf")], "export-comfyui-needs-model"),
        (["--lora", str(tmp_path / "x.safetensors"), "--rank", "0"], "export-bad-budget"),
    ):
        assert main(["export", scene, *argv]) == 2
        assert f"error[{code}]" in capsys.readouterr().err


# ------------------------------------------------------------------ round trip, tiny SDXL


def test_sdxl_lora_and_embedding_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kohya te1/te2/unet keys and a clip_l + clip_g embedding, loaded by the plain SDXL
    pipeline: weights within the budget, the picture within 2 levels of scenecraft's merge."""
    from diffusers import StableDiffusionXLPipeline

    from tests._fixtures_sdxl import sdxl_dir
    from tests.test_sdxl_cli import write_scene

    scene, out = write_scene(tmp_path, "linear"), tmp_path / "xl.safetensors"
    argv = ["export", str(scene), "--json", "--cache-dir", str(tmp_path / "c"), "--lora", str(out)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    with safe_open(str(out), framework="pt") as fh:
        prefixes = {k.split("_", 2)[1] for k in fh.keys()}  # noqa: SIM118
        assert fh.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    assert prefixes == {"te1", "te2", "unet"}
    emb = load_file(report["embeddings"][0])
    assert set(emb) == {"clip_l", "clip_g"} and emb["clip_g"].shape == (2, 48)

    def load() -> Any:
        pipe = StableDiffusionXLPipeline.from_pretrained(str(sdxl_dir()), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def render(pipe: Any) -> np.ndarray:
        g = torch.Generator().manual_seed(1)
        image = pipe(PROMPT, height=64, width=64, num_inference_steps=2, generator=g).images[0]
        return np.asarray(image).astype(np.int16)

    entry = tmp_path / "c" / report["entry"]
    merged = load()
    apply_merge(merged, entry)
    plain = load()
    deltas, _, _ = load_entry(entry)
    base = {m: module_weight(plain, m).detach().clone() for m in deltas}
    for key, encoder, tokenizer in (
        ("clip_l", plain.text_encoder, plain.tokenizer),
        ("clip_g", plain.text_encoder_2, plain.tokenizer_2),
    ):
        plain.load_textual_inversion(
            emb[key], token="<ZIGGY>", text_encoder=encoder, tokenizer=tokenizer
        )
    plain.load_lora_weights(str(out))
    plain.fuse_lora()
    for module, delta in deltas.items():
        got = (module_weight(plain, module).detach() - base[module]).reshape(delta.shape)
        assert float((got - delta).norm() / delta.norm()) <= BUDGET * 1.1, module
    assert np.abs(render(plain) - render(merged)).mean() <= 2.0
    # a single file is SD 1.x/2.x only
    argv = ["export", str(scene), "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--checkpoint", str(tmp_path / "xl-ckpt.safetensors")]) == 2
    assert "error[export-checkpoint-family]" in capsys.readouterr().err
