"""Base model loading: local folders, single files, family detection, offline errors, devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from scenecraft.diagnostics import DiagnosticError
from scenecraft.models import (
    choose_device,
    choose_dtype,
    detect_family,
    family_from_model_index,
    family_from_state_dict,
    load_pipeline,
    model_info,
)
from scenecraft.plan import BaseModelSpec
from tests._fixtures_render import (
    one_thread,  # noqa: F401  (autouse)
    saved_pipeline_dir,
    tiny_pipe,
)

ATTN2 = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def _code(exc: pytest.ExceptionInfo[DiagnosticError]) -> str:
    return exc.value.errors[0].code


def test_local_diffusers_folder_loads_and_reproduces_the_image() -> None:
    folder = saved_pipeline_dir()
    pipe = load_pipeline(BaseModelSpec(source=str(folder)), device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    kw = {"prompt": "photo of a dog", "num_inference_steps": 2, "height": 32, "width": 32}
    a = pipe(generator=torch.Generator().manual_seed(3), output_type="np", **kw).images
    b = tiny_pipe()(generator=torch.Generator().manual_seed(3), output_type="np", **kw).images
    assert np.array_equal(a, b)
    assert detect_family(folder) == "sd15"
    info = model_info(BaseModelSpec(source=str(folder)))
    assert info.name == "tiny-sd" and len(info.hash) == 10


def test_dtype_override() -> None:
    pipe = load_pipeline(BaseModelSpec(source=str(saved_pipeline_dir())), "cpu", "bfloat16")
    assert pipe.unet.dtype == torch.bfloat16


def test_missing_folder_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source=str(tmp_path / "nope")))
    assert _code(exc) == "model-not-found" and "does not exist" in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source=str(tmp_path / "empty")))
    assert _code(exc) == "model-not-found" and "model_index.json" in str(exc.value)


def test_hub_id_offline_says_what_to_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source="someone/some-model"), device="cpu")
    d = exc.value.errors[0]
    assert d.code == "model-not-found"
    assert "someone/some-model" in d.message and "offline" in d.message
    assert d.help is not None and "hf download someone/some-model" in d.help
    assert "Traceback" not in "".join(d.notes)


def test_single_file_family_detection_and_offline_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    save_file(
        {ATTN2: torch.zeros(1, 1024), "cond_stage_model.model.transformer.x": torch.zeros(1)}, path
    )
    assert detect_family(path) == "sd2"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source=str(path)), device="cpu")
    assert _code(exc) == "model-not-found"
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source=str(path), family="sdxl"), device="cpu")
    assert _code(exc) == "model-family-mismatch"


def test_ckpt_with_code_is_refused(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"x": object()}}))
    with pytest.raises(DiagnosticError) as exc:
        detect_family(path)
    assert _code(exc) == "unreadable-checkpoint"
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {ATTN2: torch.zeros(1, 768)}}, good)
    assert detect_family(good) == "sd15"


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        ({ATTN2: (320, 768), "cond_stage_model.transformer.text_model.x": (1,)}, "sd15"),
        ({ATTN2: (320, 1024)}, "sd2"),
        ({"cond_stage_model.model.transformer.resblocks.0.x": (1,)}, "sd2"),
        ({"conditioner.embedders.1.model.x": (1,), ATTN2: (640, 2048)}, "sdxl"),
        ({"something.else": (1,)}, None),
    ],
)
def test_family_from_state_dict(keys: dict[str, tuple[int, ...]], family: str | None) -> None:
    assert family_from_state_dict(keys) == family


def test_family_from_model_index() -> None:
    assert family_from_model_index({"_class_name": "StableDiffusionXLPipeline"}, None) == "sdxl"
    sd = {"_class_name": "StableDiffusionPipeline"}
    assert family_from_model_index(sd, {"cross_attention_dim": 1024}) == "sd2"
    assert family_from_model_index(sd, {"cross_attention_dim": 768}) == "sd15"
    assert family_from_model_index(sd, {"cross_attention_dim": 32}) == "sd15"


def test_device_and_dtype_choice() -> None:
    cpu = torch.device("cpu")
    assert choose_dtype(cpu) == torch.float32
    assert choose_dtype(torch.device("cuda")) == torch.float16
    assert choose_dtype(cpu, "fp16") == torch.float16
    assert choose_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert choose_device(None).type in ("cpu", "mps")
        with pytest.raises(DiagnosticError) as exc:
            choose_device("cuda")
        assert _code(exc) == "device-unavailable"
    with pytest.raises(DiagnosticError) as exc:
        choose_dtype(cpu, "flaot16")
    assert _code(exc) == "unknown-dtype" and "`float16`" in (exc.value.errors[0].help or "")
    with pytest.raises(DiagnosticError) as exc:
        choose_device("gpu0")
    assert _code(exc) == "unknown-device"
