"""The merge cache and the weight loaders under faults: damaged entries are rebuilt, never applied;
odd files where weights should be are diagnostics."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from scenecraft.diagnostics import DiagnosticError
from scenecraft.events import MergeFinished, Notice
from scenecraft.merge import cache as merge_cache
from scenecraft.merge.api import merge, read_concepts
from scenecraft.merge.apply import apply_merge
from scenecraft.merge.formats import read_concept_lora
from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.models import load_pipeline, read_checkpoint_shapes
from scenecraft.plan import BaseModelSpec, ConceptSpec, MergeSpec
from tests._fixtures_merge_io import (  # noqa: F401
    base_index_fixture,
    base_pipe_fixture,
    fresh_pipe_fixture,
)
from tests._lora_files import lora_modules, write_kohya_lora, write_peft_lora
from tests.test_merge_cache import FakeRun


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory, base_pipe: Any) -> Path:
    path = tmp_path_factory.mktemp("loras") / "a.safetensors"
    write_peft_lora(path, base_pipe, lora_modules(base_pipe, r"attn2\.to_[kv]"), 4, 1)
    return path


def _spec(lora: Path, **base: Any) -> MergeSpec:
    return MergeSpec(
        base=BaseModelSpec(source="tiny-test-base", **base),
        concepts=(ConceptSpec(name="a", tokens=("<a>",), lora=str(lora)),),
        method="linear",
    )


def _damage(entry: Path, how: str) -> None:
    weights = entry / merge_cache.WEIGHTS
    data = bytearray(weights.read_bytes())
    if how == "random-bytes":
        middle = len(data) // 2
        data[middle : middle + 1000] = os.urandom(1000)[: len(data) - middle]
        weights.write_bytes(bytes(data))
    elif how == "truncated":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "nan":  # a well-formed file with NaN, checksums updated: only the values lie
        tensors = load_file(str(weights))
        first = next(iter(tensors))
        tensors[first] = torch.full_like(tensors[first], float("nan"))
        save_file(tensors, str(weights))
        import json

        manifest = json.loads((entry / merge_cache.MANIFEST).read_text())
        manifest["files"][merge_cache.WEIGHTS] = {
            "bytes": weights.stat().st_size,
            "sha256": merge_cache.sha256_file(weights),
        }
        (entry / merge_cache.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["random-bytes", "truncated", "nan"])
def test_damaged_entry_is_moved_aside_and_rebuilt(
    tmp_path: Path, base_pipe: Any, fresh_pipe: Any, lora: Path, how: str
) -> None:
    run = FakeRun()
    first = merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=run)
    assert first.path is not None
    good = (first.path / merge_cache.WEIGHTS).read_bytes()
    _damage(first.path, how)
    with pytest.raises(DiagnosticError) as exc:  # never applied as it is
        apply_merge(fresh_pipe, first.path)
    assert exc.value.diagnostics[0].code == "merge-entry-invalid"
    events: list[Any] = []
    again = merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=run, reporter=events.append)
    assert again.cached is False and run.calls == 2  # not "ready from cache"
    [finished] = [e for e in events if isinstance(e, MergeFinished)]
    assert finished.cached is False
    [notice] = [e for e in events if isinstance(e, Notice)]
    assert notice.level == "warning" and "damaged" in notice.message and ".bad-" in notice.message
    assert (again.path / merge_cache.WEIGHTS).read_bytes() == good
    assert list(tmp_path.glob(".bad-*"))  # kept for inspection, swept after an hour
    third = merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=run)
    assert third.cached is True and run.calls == 2


def test_entry_manifest_records_checksums(tmp_path: Path, base_pipe: Any, lora: Path) -> None:
    result = merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=FakeRun())
    files = result.manifest["files"]
    for name in (merge_cache.WEIGHTS, merge_cache.EMBEDDINGS):
        path = result.path / name  # type: ignore[operator]
        assert files[name] == {
            "bytes": path.stat().st_size,
            "sha256": merge_cache.sha256_file(path),
        }


def test_cache_full_disk_names_the_free_space(
    tmp_path: Path, base_pipe: Any, lora: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", no_space)
    with pytest.raises(DiagnosticError) as exc:
        merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=FakeRun())
    [d] = exc.value.diagnostics
    assert d.code == "merge-cache-unwritable" and "No space left on device" in d.message
    assert "free on the disk holding" in d.notes[0]
    assert not list(tmp_path.glob(".tmp-*"))


def test_cache_files_follow_the_umask(tmp_path: Path, base_pipe: Any, lora: Path) -> None:
    old = os.umask(0o022)
    try:
        result = merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=FakeRun())
    finally:
        os.umask(old)
    assert result.path is not None
    assert result.path.stat().st_mode & 0o777 == 0o755
    for name in (merge_cache.WEIGHTS, merge_cache.EMBEDDINGS, merge_cache.MANIFEST):
        assert (result.path / name).stat().st_mode & 0o777 == 0o644


def test_old_and_bad_folders_are_swept(tmp_path: Path, base_pipe: Any, lora: Path) -> None:
    stale = [tmp_path / ".old-k-1", tmp_path / ".bad-k-1"]
    fresh = tmp_path / ".old-k-2"
    for folder in [*stale, fresh]:
        folder.mkdir(parents=True)
    old = time.time() - 2 * 3600
    for folder in stale:
        os.utime(folder, (old, old))
    merge(_spec(lora), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert not any(p.exists() for p in stale) and fresh.exists()


# ----------------------------------------------------------------------------- LoRA files


def test_single_lora_a_tensor_is_unknown_keys(tmp_path: Path, base_index: ModuleIndex) -> None:
    path = tmp_path / "half.safetensors"
    save_file({"unet.down.0.attn2.to_k.lora_A.weight": torch.zeros(4, 32)}, str(path))
    with pytest.raises(DiagnosticError) as exc:
        read_concept_lora(path, name="half", pipe_or_module_index=base_index)
    [d] = exc.value.diagnostics
    assert d.code == "lora-unknown-keys" and "without their pair" in d.message


def test_rank_mismatch_inside_a_file_is_not_another_family(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    module = next(m for m in base_index.shapes if m.endswith("attn2.to_k"))
    out, fan_in = base_index.shapes[module]
    component, _, rel = module.partition(".")
    path = tmp_path / "ranks.safetensors"
    save_file(
        {
            f"{component}.{rel}.lora_A.weight": torch.zeros(4, fan_in),
            f"{component}.{rel}.lora_B.weight": torch.zeros(out, 2),
        },
        str(path),
    )
    with pytest.raises(DiagnosticError) as exc:
        read_concept_lora(path, name="r", pipe_or_module_index=base_index)
    [d] = exc.value.diagnostics
    assert d.code == "lora-shape-mismatch" and "disagree on the rank" in d.message
    assert "rank 2" in d.notes[0] and "rank 4" in d.notes[0]
    assert "another model family" not in (d.help or "")


def test_shape_mismatch_names_the_files_family_against_the_scenes(
    tmp_path: Path, base_pipe: Any, base_index: ModuleIndex
) -> None:
    # the tiny base's width (32) tells no family; the scene file declares sd15
    assert base_index.family is None
    shapes = {
        m: (s[0], 48) if m.endswith(("attn2.to_k", "attn2.to_v")) else s
        for m, s in base_index.shapes.items()
    }
    path = tmp_path / "xl.safetensors"
    write_kohya_lora(
        path,
        shapes,
        lora_modules(base_pipe, r"attn2\.to_k"),
        4,
        6,
        metadata={"ss_base_model_version": "sdxl_base_v1-0"},
    )
    spec = MergeSpec(
        base=BaseModelSpec(source="tiny-test-base", family="sd15"),
        concepts=(ConceptSpec(name="g", tokens=("<g>",), lora=str(path)),),
        method="linear",
    )
    with pytest.raises(DiagnosticError) as exc:
        read_concepts(spec, base_pipe)
    [d] = exc.value.diagnostics
    assert d.code == "lora-shape-mismatch"
    assert "the file says it was trained for `sdxl`, the base model is `sd15`" in d.notes


@pytest.mark.parametrize("kind", ["folder", "fifo", "device", "loop"])
def test_lora_path_that_is_not_a_file(tmp_path: Path, base_index: ModuleIndex, kind: str) -> None:
    path = tmp_path / "x.safetensors"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path.symlink_to(path)
    with pytest.raises(DiagnosticError) as exc:
        read_concept_lora(path, name="x", pipe_or_module_index=base_index)
    [d] = exc.value.diagnostics
    assert d.code == "lora-unreadable" and "does not exist" not in d.message
    assert "not a file" in d.message


# ----------------------------------------------------------------------------- base model


def test_truncated_base_safetensors_is_unreadable_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "base.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DiagnosticError) as exc:
        read_checkpoint_shapes(path)
    assert exc.value.diagnostics[0].code == "unreadable-checkpoint"


@pytest.mark.parametrize("kind", ["loop", "fifo"])
def test_base_model_symlink_loop_or_fifo(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "base.safetensors"
    if kind == "loop":
        path.symlink_to(path)
    else:
        os.mkfifo(path)
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source=str(path)), device="cpu")
    [d] = exc.value.diagnostics
    assert d.code == "model-not-found"
    assert ("symlink loop" if kind == "loop" else "FIFO") in d.message
