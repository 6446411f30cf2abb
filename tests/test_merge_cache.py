"""The merge cache and `merge()`: hits, misses, invalidation, atomic writes, force, apply, CLI."""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from rich.console import Console

from scenecraft.cli import merge as command
from scenecraft.cli.args import MergeSettings
from scenecraft.diagnostics import DiagnosticError
from scenecraft.events import Event, MergeFinished, MergeStage, MergeStarted
from scenecraft.files import sha256_file
from scenecraft.merge import api as merge_api
from scenecraft.merge import cache as merge_cache
from scenecraft.merge.api import MergeResult, merge
from scenecraft.merge.apply import apply_merge, module_weight
from scenecraft.merge.types import ConceptLoRA
from scenecraft.plan import BaseModelSpec, ConceptSpec, MergeSpec
from scenecraft.ui.merge_table import figures_table
from tests._fixtures_merge_io import (  # noqa: F401
    base_index_fixture,
    base_pipe_fixture,
    fresh_pipe_fixture,
)
from tests._lora_files import lora_modules, write_edlora, write_kohya_lora, write_peft_lora

FIGURES = {"text-encoder": {"layers": 3, "solved": 3, "fidelity": {"mean": 0.125, "worst": 0.5}}}


@dataclass
class _Outcome:
    weights: dict[str, torch.Tensor]
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


class FakeRun:
    """A stand-in for run_merge: W* = W0 + Σ_c ΔW_c (linear); counts calls, can fail midway."""

    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail
        self.last: _Outcome | None = None

    def __call__(
        self,
        pipe: Any,
        concepts: list[ConceptLoRA],
        method: str,
        params: dict[str, Any],
        reporter: Any,
        config: Any = None,
    ) -> _Outcome:
        self.calls += 1
        weights: dict[str, torch.Tensor] = {}
        for i, concept in enumerate(concepts):
            if self.fail and i == 1:
                raise RuntimeError("interrupted midway")
            for module in concept.layers:
                w0 = module_weight(pipe, module).detach().float()
                base = weights.get(module, w0)
                weights[module] = base + concept.delta(module).reshape(w0.shape)
        self.last = _Outcome(weights, {}, FIGURES)
        return self.last


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, base_pipe: Any) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_kohya_lora(
        folder / "a.safetensors",
        base_pipe,
        lora_modules(base_pipe, r"attn2|self_attn"),
        4,
        1,
        alpha=2.0,
    )
    write_peft_lora(
        folder / "b.safetensors",
        base_pipe,
        lora_modules(base_pipe, r"attn[12]\.to_[kv]|proj_in"),
        4,
        2,
    )
    write_edlora(
        folder / "c.pth",
        base_pipe,
        lora_modules(base_pipe, r"attn2\.to_v"),
        2,
        3,
        tokens=("<c1>",),
        rows=3,
    )
    return folder


def _spec(lora_dir: Path, **changes: Any) -> MergeSpec:
    concepts = (
        ConceptSpec(
            name="a",
            tokens=("<a>",),
            lora=str(lora_dir / "a.safetensors"),
            weight=changes.pop("weight", 1.0),
        ),
        ConceptSpec(name="b", tokens=("<b>",), lora=str(lora_dir / "b.safetensors")),
        ConceptSpec(name="c", tokens=("<c1>",), lora=str(lora_dir / "c.pth")),
        ConceptSpec(name="plain", tokens=("man",)),  # token-only: nothing to merge
    )
    fields: dict[str, Any] = {
        "base": BaseModelSpec(source="tiny-test-base"),
        "concepts": concepts,
        "method": "linear",
        "params": {"margin": 0.5},
    }
    fields.update(changes)
    return MergeSpec(**fields)


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


# -------------------------------------------------------------------------- hit and miss


def test_miss_then_hit(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    run, events = FakeRun(), []
    first = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run, reporter=events.append)
    assert (first.cached, run.calls) == (False, 1)
    assert first.path == tmp_path / first.key and _entries(tmp_path) == [first.key]
    assert [type(e).__name__ for e in events] == [
        "MergeStage",
        "MergeStage",
        "MergeStage",
        "MergeStage",
        "MergeStarted",
        "MergeStage",
        "MergeStage",
        "MergeFinished",
    ]
    manifest = first.manifest
    assert [c["lora_sha256"] for c in manifest["concepts"]] == [
        sha256_file(lora_dir / n) for n in ("a.safetensors", "b.safetensors", "c.pth")
    ]
    assert manifest["method"] == "linear" and manifest["params"] == {"margin": 0.5}
    assert manifest["figures"] == FIGURES and first.figures == FIGURES
    assert manifest["tokens"] == {"text_encoder": ["<c1>"]} and manifest["stored"] == "delta"

    events.clear()
    second = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run, reporter=events.append)
    assert (second.cached, second.key, second.path, run.calls) == (True, first.key, first.path, 1)
    assert second.figures == FIGURES
    assert isinstance(events[-2], MergeStarted) and isinstance(events[-1], MergeFinished)
    assert events[-1].cached is True


def test_only_changed_modules_are_stored(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    run = FakeRun()
    result = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run)
    deltas, embeddings, _ = merge_cache.load_entry(result.path)  # type: ignore[arg-type]
    assert run.last is not None and sorted(deltas) == sorted(run.last.weights)
    assert len(deltas) < len(lora_modules(base_pipe))
    for module, merged in run.last.weights.items():
        w0 = module_weight(base_pipe, module).detach()
        torch.testing.assert_close(deltas[module], merged - w0)
    assert embeddings["text_encoder"]["<c1>"].shape == (3, 32)


# ------------------------------------------------------------------------------ invalidation


def _rewrite_lora(lora_dir: Path, base_pipe: Any) -> None:
    write_kohya_lora(
        lora_dir / "a.safetensors",
        base_pipe,
        lora_modules(base_pipe, r"attn2|self_attn"),
        4,
        99,
        alpha=2.0,
    )


@pytest.mark.parametrize(
    "change", ["lora-bytes", "weight", "method", "param", "tokens", "base-file", "engine"]
)
def test_any_input_change_is_a_miss(
    change: str, tmp_path: Path, base_pipe: Any, lora_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "loras"
    local.mkdir()
    for name in ("a.safetensors", "b.safetensors", "c.pth"):
        (local / name).write_bytes((lora_dir / name).read_bytes())
    base_file = tmp_path / "base.safetensors"
    base_file.write_bytes(b"base model bytes")
    spec = _spec(local, base=BaseModelSpec(source=str(base_file)))
    run, root = FakeRun(), tmp_path / "cache"
    first = merge(spec, base_pipe, cache_dir=root, run=run)
    if change == "lora-bytes":
        _rewrite_lora(local, base_pipe)
    elif change == "weight":
        spec = _spec(local, base=spec.base, weight=0.5)
    elif change == "method":
        spec = spec.model_copy(update={"method": "ties"})
    elif change == "param":
        spec = spec.model_copy(update={"params": {"margin": 0.25}})
    elif change == "tokens":
        concepts = (spec.concepts[0].model_copy(update={"tokens": ("<a2>",)}),) + spec.concepts[1:]
        spec = spec.model_copy(update={"concepts": concepts})
    elif change == "engine":  # same inputs, an engine that merges them differently
        monkeypatch.setattr(merge_api, "ENGINE_REVISION", merge_api.ENGINE_REVISION + 1)
    else:
        base_file.write_bytes(b"other base model bytes")
    second = merge(spec, base_pipe, cache_dir=root, run=run)
    assert second.key != first.key and not second.cached and run.calls == 2
    assert _entries(root) == sorted([first.key, second.key])  # the old entry stays
    assert merge(spec, base_pipe, cache_dir=root, run=run).cached and run.calls == 2


def test_concept_names_are_not_part_of_the_key(
    tmp_path: Path, base_pipe: Any, lora_dir: Path
) -> None:
    spec = _spec(lora_dir)
    renamed = spec.model_copy(
        update={
            "concepts": tuple(c.model_copy(update={"name": c.name + "_x"}) for c in spec.concepts)
        }
    )
    run = FakeRun()
    assert (
        merge(spec, base_pipe, cache_dir=tmp_path, run=run).key
        == merge(renamed, base_pipe, cache_dir=tmp_path, run=run).key
    )
    assert run.calls == 1


# ------------------------------------------------------------------------ atomicity, force


def test_interrupted_run_leaves_no_entry(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun(fail=True))
    assert _entries(tmp_path) == []
    result = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert not result.cached and _entries(tmp_path) == [result.key]


def test_interrupted_write_leaves_no_entry(
    tmp_path: Path, base_pipe: Any, lora_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def save_then_die(tensors: Any, path: str, **kw: Any) -> None:
        calls.append(path)
        if len(calls) == 2:  # after weights.safetensors is on disk
            raise KeyboardInterrupt
        real(tensors, path, **kw)

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert _entries(tmp_path) == [] and Path(calls[0]).name == "weights.safetensors"
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert not merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun()).cached


def test_a_folder_without_manifest_is_not_an_entry(
    tmp_path: Path, base_pipe: Any, lora_dir: Path
) -> None:
    key = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun()).key
    (tmp_path / key / "manifest.json").unlink()
    run = FakeRun()
    result = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run)
    assert not result.cached and run.calls == 1 and (tmp_path / key / "manifest.json").is_file()


def test_force_rebuilds(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    run = FakeRun()
    first = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run)
    (first.path / "marker").write_text("old")  # type: ignore[operator]
    again = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run, force=True)
    assert (again.cached, again.key, run.calls) == (False, first.key, 2)
    assert not (tmp_path / first.key / "marker").exists() and _entries(tmp_path) == [first.key]
    assert merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run).cached


def test_stale_temp_folders_are_swept(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    stale, fresh = tmp_path / ".tmp-dead-1", tmp_path / ".tmp-live-1"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert not stale.exists() and fresh.exists()


def test_unwritable_cache_is_a_diagnostic(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DiagnosticError) as exc:
        merge(_spec(lora_dir), base_pipe, cache_dir=blocker / "cache", run=FakeRun())
    assert exc.value.diagnostics[0].code == "merge-cache-unwritable"


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SCENECRAFT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert merge_cache.default_cache_dir() == tmp_path / ".cache" / "scenecraft" / "merges"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert merge_cache.default_cache_dir() == tmp_path / "xdg" / "scenecraft" / "merges"
    monkeypatch.setenv("SCENECRAFT_CACHE", str(tmp_path / "sc"))
    assert merge_cache.resolve_cache_dir(None) == tmp_path / "sc"
    assert merge_cache.resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"


def test_method_none_and_token_only_merge_nothing(
    tmp_path: Path, base_pipe: Any, lora_dir: Path
) -> None:
    run = FakeRun()
    assert (
        merge(_spec(lora_dir, method="none"), base_pipe, cache_dir=tmp_path, run=run).path is None
    )
    plain = _spec(lora_dir, concepts=(ConceptSpec(name="plain", tokens=("man",)),))
    assert merge(plain, base_pipe, cache_dir=tmp_path, run=run).path is None
    assert run.calls == 0 and _entries(tmp_path) == []


def test_all_bad_concepts_reported_together(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    concepts = (
        ConceptSpec(
            name="x", tokens=("<x>",), lora=str(tmp_path / "x.safetensors"), placeholder=True
        ),
        ConceptSpec(name="y", tokens=("<y>",), lora=str(tmp_path / "y.safetensors")),
    )
    with pytest.raises(DiagnosticError) as exc:
        merge(_spec(lora_dir, concepts=concepts), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert [d.code for d in exc.value.diagnostics] == ["lora-not-found", "lora-not-found"]


# ----------------------------------------------------------------------------------- apply


def test_apply_gives_the_merged_module_outputs(
    tmp_path: Path, base_pipe: Any, fresh_pipe: Any, lora_dir: Path
) -> None:
    run = FakeRun()
    result = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=run)
    added = apply_merge(fresh_pipe, result)
    assert run.last is not None
    x = torch.randn(2, 64)
    for module_path, merged in run.last.weights.items():
        component, _, rel = module_path.partition(".")
        module = getattr(fresh_pipe, component).get_submodule(rel)
        torch.testing.assert_close(
            module.weight, merged.reshape(module.weight.shape), rtol=0, atol=1e-6
        )
        if isinstance(module, torch.nn.Linear):
            inp = x[:, : module.in_features]
            expected = torch.nn.functional.linear(inp, merged, module.bias)
        else:
            inp = x[:, : module.in_channels].reshape(2, -1, 1, 1)
            expected = torch.nn.functional.conv2d(inp, merged, module.bias)
        with torch.no_grad():
            torch.testing.assert_close(module(inp), expected, rtol=1e-5, atol=1e-5)
    # untouched modules keep W0
    other = "unet.up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"
    assert other not in run.last.weights
    assert torch.equal(module_weight(fresh_pipe, other), module_weight(base_pipe, other))
    # the ED-LoRA token: 3 rows -> <c1>, <c1>_1, <c1>_2 with the file's embeddings
    assert added == {"text_encoder": ["<c1>", "<c1>_1", "<c1>_2"]}
    ids = fresh_pipe.tokenizer.convert_tokens_to_ids(added["text_encoder"])
    table = fresh_pipe.text_encoder.get_input_embeddings().weight.detach()
    _, embeddings, _ = merge_cache.load_entry(result.path)  # type: ignore[arg-type]
    torch.testing.assert_close(table[ids], embeddings["text_encoder"]["<c1>"])
    prompt = fresh_pipe.maybe_convert_prompt("photo of <c1>", fresh_pipe.tokenizer)
    assert prompt == "photo of <c1> <c1>_1 <c1>_2"


def test_half_precision_base_stores_fp16_deltas(
    tmp_path: Path, base_pipe: Any, lora_dir: Path
) -> None:
    import copy

    half = copy.deepcopy(base_pipe).to(dtype=torch.float16)
    fp32 = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun())
    run = FakeRun()
    result = merge(_spec(lora_dir), half, cache_dir=tmp_path, run=run)
    assert result.key != fp32.key  # the dtype the merge ran in is part of the key
    assert result.manifest["weights_dtype"] == "torch.float16"
    target = copy.deepcopy(base_pipe).to(dtype=torch.float16)
    apply_merge(target, result)
    assert run.last is not None
    for module, merged in run.last.weights.items():
        weight = module_weight(target, module)
        assert weight.dtype == torch.float16
        torch.testing.assert_close(weight.float(), merged.reshape(weight.shape), rtol=0, atol=2e-3)


def test_apply_refusals(tmp_path: Path, base_pipe: Any, fresh_pipe: Any, lora_dir: Path) -> None:
    result = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun())
    no_unet = SimpleNamespace(text_encoder=fresh_pipe.text_encoder, tokenizer=fresh_pipe.tokenizer)
    with pytest.raises(DiagnosticError) as exc:
        apply_merge(no_unet, result.path)
    assert exc.value.diagnostics[0].code == "merge-base-mismatch"
    apply_merge(fresh_pipe, result.path)
    with pytest.raises(DiagnosticError) as exc:
        apply_merge(fresh_pipe, result)
    assert exc.value.diagnostics[0].code == "merge-already-applied"
    with pytest.raises(DiagnosticError) as exc:
        merge(_spec(lora_dir), fresh_pipe, cache_dir=tmp_path, run=FakeRun())
    assert exc.value.diagnostics[0].code == "merge-already-applied"
    with pytest.raises(DiagnosticError) as exc:
        apply_merge(fresh_pipe, tmp_path / "no-such-entry")
    assert exc.value.diagnostics[0].code == "merge-entry-invalid"
    assert apply_merge(fresh_pipe, MergeResult("", None, False)) == {}


# ------------------------------------------------------------------------------ CLI and UI


def _args(tmp_path: Path, as_json: bool) -> MergeSettings:
    return MergeSettings(json=as_json, cache_dir=tmp_path, dtype="float32")


def test_command_json_and_table(
    tmp_path: Path,
    base_pipe: Any,
    lora_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import scenecraft.models

    run, loads = FakeRun(), []

    def load_pipeline(base: BaseModelSpec, device: Any = None, dtype: Any = None) -> Any:
        loads.append((base.source, device, dtype))
        return base_pipe

    monkeypatch.setattr(scenecraft.models, "load_pipeline", load_pipeline)
    monkeypatch.setattr(merge_api, "_default_run", lambda: run)
    loaded = SimpleNamespace(plan=SimpleNamespace(merge=_spec(lora_dir)))
    assert command.run(_args(tmp_path, True), loaded) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cached"] is False and out["figures"] == FIGURES and Path(out["path"]).is_dir()
    assert loads == [("tiny-test-base", None, "float32")]
    assert command.run(_args(tmp_path, False), loaded) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "cache hit" in captured.err and "merge quality" in captured.err
    assert run.calls == 1


def test_figures_table_renders_stage_rows() -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    console.print(figures_table(FIGURES))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "text-encoder" in text and "0.125" in text and "0.500" in text
    engine_style = {
        "method": "loraclr",
        "seconds": {"total": 2.0},
        "stages": {
            "spatial": {
                "layers": 4,
                "solved": 4,
                "fidelity": {"mean": 0.25, "worst": 0.75},
                "separation": {"mean": 0.5, "worst": 0.875},
                "repel_active": 0.375,
                "per_concept": {"gosling": {"fidelity": {"mean": 0.0625, "worst": 0.1}}},
            }
        },
    }
    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    console.print(figures_table(engine_style))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "merge quality: loraclr (2.0 s)" in text and "0.875" in text and "0.375" in text
    assert "  gosling" in text and "0.062" in text


def test_events_order_on_a_fresh_merge(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    events: list[Event] = []
    merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun(), reporter=events.append)
    loads = [e for e in events if isinstance(e, MergeStage) and e.stage == "load"]
    assert [(e.done, e.total, e.detail) for e in loads] == [
        (1, 4, "a"),
        (2, 4, "b"),
        (3, 4, "c"),
        (4, 4, "plain"),
    ]
    started = next(e for e in events if isinstance(e, MergeStarted))
    assert started.concepts == ("a", "b", "c") and started.method == "linear"
    finished = events[-1]
    assert isinstance(finished, MergeFinished) and finished.cached is False and finished.path


def test_base_vocabulary_word_is_refused_on_apply(
    tmp_path: Path, base_pipe: Any, fresh_pipe: Any, lora_dir: Path
) -> None:
    from tests._lora_files import write_embedding

    write_embedding(tmp_path / "man.safetensors", "<t>", torch.randn(1, 32))
    concepts = (
        ConceptSpec(name="m", tokens=("man",), embedding=str(tmp_path / "man.safetensors")),
    )
    result = merge(_spec(lora_dir, concepts=concepts), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert (
        result.manifest["tokens"] == {"text_encoder": ["man"]} and result.manifest["modules"] == []
    )
    with pytest.raises(DiagnosticError) as exc:
        apply_merge(fresh_pipe, result)
    assert exc.value.diagnostics[0].code == "merge-token-exists"


def test_real_engine_linear_merge_applies_in_process(tmp_path: Path, fresh_pipe: Any) -> None:
    """With scenecraft.merge.engine.run_merge: merge, then apply to the same pipeline."""
    folder = tmp_path / "loras"
    folder.mkdir()
    a = write_kohya_lora(
        folder / "a.safetensors", fresh_pipe, lora_modules(fresh_pipe, r"attn2\.to_[kv]"), 2, 5
    )
    c, _ = write_edlora(
        folder / "c.pth",
        fresh_pipe,
        lora_modules(fresh_pipe, r"attn2\.to_k"),
        2,
        6,
        tokens=("<c1>",),
        rows=2,
    )
    w0 = {m: module_weight(fresh_pipe, m).detach().clone() for m in a}
    concepts = (
        ConceptSpec(name="a", tokens=("<a>",), lora=str(folder / "a.safetensors")),
        ConceptSpec(name="c", tokens=("<c1>",), lora=str(folder / "c.pth")),
    )
    result = merge(
        _spec(folder, concepts=concepts, method="linear", params={}),
        fresh_pipe,
        cache_dir=tmp_path / "cache",
    )
    assert all(torch.equal(module_weight(fresh_pipe, m), w0[m]) for m in a)  # merge leaves W0
    assert apply_merge(fresh_pipe, result) == {"text_encoder": ["<c1>", "<c1>_1"]}
    for m in a:
        expected = w0[m] + a[m].delta() + (c[m].delta() if m in c else 0)
        torch.testing.assert_close(module_weight(fresh_pipe, m), expected, rtol=0, atol=1e-5)
