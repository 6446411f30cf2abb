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
from scenecraft.merge.config import GradientFusion, MethodParams, Ties
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
        params: MethodParams,
        reporter: Any,
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
    assert manifest["method"] == "linear" and manifest["params"] == {}
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
    spec = _spec(local, base=BaseModelSpec(source=str(base_file)), method="ties")
    run, root = FakeRun(), tmp_path / "cache"
    first = merge(spec, base_pipe, cache_dir=root, run=run)
    if change == "lora-bytes":
        _rewrite_lora(local, base_pipe)
    elif change == "weight":
        spec = _spec(local, base=spec.base, weight=0.5, method="ties")
    elif change == "method":
        spec = spec.model_copy(update={"params": GradientFusion()})
    elif change == "param":
        spec = spec.model_copy(update={"params": Ties(density=0.25)})
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


# ---------------------------------------------------------------------- use and pruning


def _age(entry: Path, seconds_ago: float) -> None:
    """Make an entry look last used ``seconds_ago``."""
    t = time.time() - seconds_ago
    for name in (merge_cache.MANIFEST, merge_cache.USED):
        if (entry / name).exists():
            os.utime(entry / name, (t, t))


def _with_prompts(spec: MergeSpec, prompt: str) -> MergeSpec:
    return spec.model_copy(
        update={
            "params": GradientFusion(scene_prompts=True),
            "concepts": tuple(
                c.model_copy(update={"prompts": (f"{c.tokens[0]} {prompt}",)})
                for c in spec.concepts
            ),
        }
    )


def test_entries_list_size_last_use_and_lineage(
    tmp_path: Path, base_pipe: Any, lora_dir: Path
) -> None:
    result = merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun())
    assert result.path is not None
    _age(result.path, 3600)
    before = time.time()
    assert merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun()).cached
    [info] = merge_cache.entries(tmp_path)
    assert info.key == result.key and info.method == "linear"
    assert info.concepts == ("a", "b", "c")
    assert info.bytes == sum(p.stat().st_size for p in result.path.rglob("*") if p.is_file())
    assert info.last_used >= before - 1  # the cache hit is a use
    assert info.lineage == result.key == result.manifest["lineage"]  # no scene prompts
    assert merge_cache.entries(tmp_path / "absent") == []


def test_prompt_edits_supersede_older_entries_of_the_same_merge(
    tmp_path: Path, base_pipe: Any, lora_dir: Path
) -> None:
    run, events = FakeRun(), []
    other = merge(
        _spec(lora_dir, method="ties", params={"density": 0.25}),
        base_pipe,
        cache_dir=tmp_path,
        run=run,
    )
    keys, lineages = [], set()
    for prompt in ("at sea", "on grass", "in the desert"):
        spec = _with_prompts(_spec(lora_dir), prompt)
        result = merge(spec, base_pipe, cache_dir=tmp_path, run=run, reporter=events.append)
        keys.append(result.key)
        lineages.add(result.manifest["lineage"])
        _age(result.path, 3600)  # type: ignore[arg-type]
    _age(other.path, 7200)  # type: ignore[arg-type]
    assert len(set(keys)) == 3 and len(lineages) == 1 and lineages != {other.key}
    # the third merge superseded the first; the second stays (two kept); other merges untouched
    assert _entries(tmp_path) == sorted([other.key, *keys[1:]])
    notices = [e for e in events if type(e).__name__ == "Notice"]
    assert len(notices) == 1 and "removed 1 cached merge" in notices[0].message
    # an entry used in the last minutes is never pruned, even when superseded
    for key in keys[1:]:
        merge_cache.mark_used(tmp_path / key)  # e.g. another render serving it right now
    spec = _with_prompts(_spec(lora_dir), "under a night sky")
    fourth = merge(spec, base_pipe, cache_dir=tmp_path, run=run)
    assert _entries(tmp_path) == sorted([other.key, *keys[1:], fourth.key])


def test_prune_by_age_size_and_use(tmp_path: Path, base_pipe: Any, lora_dir: Path) -> None:
    run = FakeRun()
    paths = [
        merge(
            _spec(lora_dir, method="ties", params={"density": m}),
            base_pipe,
            cache_dir=tmp_path,
            run=run,
        ).path
        for m in (0.1, 0.2, 0.3)
    ]
    assert all(p is not None for p in paths)
    for p, hours in zip(paths, (48, 24, 0), strict=True):  # the last one: in use right now
        _age(p, hours * 3600 + 1)  # type: ignore[arg-type]
    sizes = {e.key: e.bytes for e in merge_cache.entries(tmp_path)}
    # dry run: reported, nothing removed
    gone = merge_cache.prune(tmp_path, older_than=0, dry_run=True)
    assert [e.key for e in gone] == [paths[0].name, paths[1].name]  # type: ignore[union-attr]
    assert len(_entries(tmp_path)) == 3
    # by age: only the one unused for two days
    gone = merge_cache.prune(tmp_path, older_than=36 * 3600)
    assert [e.key for e in gone] == [paths[0].name]  # type: ignore[union-attr]
    assert _entries(tmp_path) == sorted(p.name for p in paths[1:])  # type: ignore[union-attr]
    # by size: least recently used first, never the one in use, even at 0 bytes
    assert merge_cache.prune(tmp_path, max_bytes=sum(sizes.values())) == []
    gone = merge_cache.prune(tmp_path, max_bytes=0)
    assert [e.key for e in gone] == [paths[1].name]  # type: ignore[union-attr]
    assert _entries(tmp_path) == [paths[2].name]  # type: ignore[union-attr]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".old-")]  # no leftovers


def _cache_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from scenecraft.cli.main import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cache_command_lists_and_prunes(
    tmp_path: Path, base_pipe: Any, lora_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    result = merge(_spec(lora_dir), base_pipe, cache_dir=root, run=FakeRun())
    code, out, _ = _cache_cli(["cache", "list", "--cache-dir", str(root), "--json"], capsys)
    [row] = json.loads(out)
    assert code == 0 and row["key"] == result.key and row["concepts"] == ["a", "b", "c"]
    code, out, _ = _cache_cli(["cache", "list", "--cache-dir", str(root)], capsys)
    assert code == 0 and result.key in out and "1 merge(s)" in out
    _age(result.path, 3 * 86400)  # type: ignore[arg-type]
    prune = ["cache", "prune", "--cache-dir", str(root), "--older-than", "2d"]
    code, out, _ = _cache_cli([*prune, "--dry-run"], capsys)
    assert code == 0 and out.startswith(f"would remove {result.key}") and _entries(root)
    code, out, _ = _cache_cli([*prune, "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and [r["key"] for r in report["removed"]] == [result.key]
    assert report["kept"] == 0 and _entries(root) == []
    code, out, _ = _cache_cli(["cache", "list", "--cache-dir", str(root)], capsys)
    assert code == 0 and "no cached merges" in out


@pytest.mark.parametrize(
    "flag, value", [("--max-size", "ten gigs"), ("--max-size", "-1G"), ("--older-than", "30")]
)
def test_cache_prune_refuses_bad_sizes_and_ages(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scenecraft.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "prune", "--cache-dir", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_cache_sizes_and_ages_parse() -> None:
    from scenecraft.cli.args import _duration, _size

    assert [_size(t) for t in ("0", "512", "500M", "1.5GB", "10GiB", "2t")] == [
        0,
        512,
        500 * 2**20,
        int(1.5 * 2**30),
        10 * 2**30,
        2 * 2**40,
    ]
    assert [_duration(t) for t in ("45s", "90m", "12h", "30d", "2w")] == [
        45,
        5400,
        43200,
        30 * 86400,
        14 * 86400,
    ]


def test_cache_prune_on_a_read_only_cache_is_a_diagnostic(
    tmp_path: Path,
    base_pipe: Any,
    lora_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "cache"
    result = merge(_spec(lora_dir), base_pipe, cache_dir=root, run=FakeRun())
    _age(result.path, 3 * 86400)  # type: ignore[arg-type]

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(merge_cache.tempfile, "mkdtemp", refuse)  # the rename aside fails
    code, _, err = _cache_cli(
        ["cache", "prune", "--cache-dir", str(root), "--older-than", "1d"], capsys
    )
    assert code == 2 and "merge-cache-unwritable" in err and "Traceback" not in err
    assert _entries(root) == [result.key]  # nothing half-removed


def test_a_large_cache_says_how_to_prune(
    tmp_path: Path, base_pipe: Any, lora_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Event] = []
    merge(_spec(lora_dir), base_pipe, cache_dir=tmp_path, run=FakeRun(), reporter=events.append)
    assert not [e for e in events if type(e).__name__ == "Notice"]  # a few MB: nothing said
    monkeypatch.setattr(merge_cache, "HINT_BYTES", 1)
    events.clear()
    spec = _spec(lora_dir, method="ties", params={"density": 0.25})
    merge(spec, base_pipe, cache_dir=tmp_path, run=FakeRun(), reporter=events.append)
    [notice] = [e for e in events if type(e).__name__ == "Notice"]
    assert "in 2 merges" in notice.message and "scenecraft cache prune" in notice.message
    assert len(_entries(tmp_path)) == 2  # a hint: nothing removed
    events.clear()  # a cache hit writes nothing and says nothing
    merge(spec, base_pipe, cache_dir=tmp_path, run=FakeRun(), reporter=events.append)
    assert not [e for e in events if type(e).__name__ == "Notice"]
