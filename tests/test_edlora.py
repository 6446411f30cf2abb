"""ED-LoRA layer-wise tokens (Mix-of-Show): each cross-attention layer reads its own embedding.

The truth is built by hand, independently of `scenecraft.merge.edlora`'s words and variants: a
copy of the text encoder gets one throw-away token ``<tmp>`` whose row is set to layer l's row,
the prompt with ``<tmp>`` in place of the concept token is encoded, and that is what layer l's
to_k / to_v must read; the layer's attention output is diffusers' plain `AttnProcessor` on it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from scenecraft.merge import edlora
from scenecraft.merge import engine as E
from scenecraft.merge import features as F
from scenecraft.merge.apply import _install_tokens
from scenecraft.merge.config import parse
from scenecraft.merge.formats import read_concept_lora
from scenecraft.merge.formats_index import ModuleIndex
from scenecraft.merge.types import MergeConfig
from scenecraft.plan import Region, RenderJob
from scenecraft.render.layerwise import conditioned
from tests._fixtures_merge_io import base_index_fixture, base_pipe_fixture  # noqa: F401
from tests._fixtures_render import SIZE, STEPS, make_job
from tests._fixtures_render import one_thread as one_thread  # noqa: F401  (autouse)
from tests._lora_files import lora_modules, write_edlora, write_embedding

TOKEN = "<V>"
PROMPT = "photo of a <V> man"
# the tiny UNet's attn2 layers in Mix-of-Show's order: down, mid, up (named_modules: down, up, mid)
LAYERS = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn2",
]


@pytest.fixture(name="layer_file")
def layer_file_fixture(tmp_path: Path, base_pipe: Any) -> tuple[Path, torch.Tensor]:
    """An ED-LoRA with 6 DISTINCT rows for `<V>` (one per attn2 layer) and to_k/to_v LoRAs."""
    path = tmp_path / "v.pth"
    _, rows = write_edlora(
        path, base_pipe, lora_modules(base_pipe, r"attn2\.to_[kv]"), 2, 5, (TOKEN,), rows=6
    )
    assert len({tuple(r.tolist()) for r in rows[TOKEN]}) == 6
    return path, rows[TOKEN]


def _installed(base_pipe: Any, path: Path) -> Any:
    """A copy of the base with the file's embeddings installed as a merge entry installs them."""
    pipe = copy.deepcopy(base_pipe)
    concept = read_concept_lora(path, name="v", tokens=(TOKEN,), pipe_or_module_index=pipe)
    _install_tokens(pipe, "text_encoder", concept.embeddings["text_encoder"])
    return pipe


def _truth(pipe: Any, prompt: str, row: torch.Tensor | None) -> torch.Tensor:
    """(1, 77, dim): the text encoder's states for ``prompt`` with ``row`` in place of `<V>`
    (padded to 77 as the pipeline pads; ``row`` None: the prompt as is)."""
    return _truth_at(pipe, prompt, row)[0]


def _truth_at(pipe: Any, prompt: str, row: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """`_truth` and the position of the substituted token (-1 without one)."""
    pipe = copy.deepcopy(pipe)
    at = -1
    if row is not None:
        pipe.tokenizer.add_tokens(["<tmp>"])
        pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
        with torch.no_grad():
            pipe.text_encoder.get_input_embeddings().weight[-1] = row
        prompt = prompt.replace(TOKEN, "<tmp>")
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt")
    if row is not None:
        at = ids.input_ids[0].tolist().index(pipe.tokenizer.convert_tokens_to_ids("<tmp>"))
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0], at


@contextmanager
def _first_calls(pipe: Any) -> Iterator[dict[str, list[Any]]]:
    """Per attn2 layer: the to_k inputs of its first UNet pass and (hidden_states, output) of
    its first call."""
    seen: dict[str, list[Any]] = {n: [] for n in LAYERS}
    handles = []
    for name in LAYERS:
        attn = pipe.unet.get_submodule(name)

        def on_k(m: Any, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            if len(seen[name]) < 3:
                seen[name].append(args[0].detach().clone())

        def on_attn(m: Any, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            if not any(isinstance(x, tuple) for x in seen[name]):
                seen[name].append((args[0].detach().clone(), out.detach().clone()))

        handles.append(attn.to_k.register_forward_hook(on_k))
        handles.append(attn.register_forward_hook(on_attn))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _call(pipe: Any, jobs: list[RenderJob]) -> Any:
    """One pipeline call as the render engine makes it (`render.session.Session.call`)."""
    job = jobs[0]
    with conditioned(pipe, jobs) as extra:
        prompts = extra or {
            "prompt": [j.prompt for j in jobs],
            "negative_prompt": [job.negative_prompt] * len(jobs),
        }
        return pipe(
            **prompts,
            width=SIZE,
            height=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=job.guidance,
            generator=[torch.Generator().manual_seed(j.seed) for j in jobs],
            output_type="latent",
        ).images


# ----------------------------------------------------------------------------------- loading


def test_layer_order_is_mix_of_shows_down_mid_up(base_pipe: Any, base_index: ModuleIndex) -> None:
    assert edlora.unet_layers(base_pipe.unet) == LAYERS
    assert edlora.index_layers(base_index) == LAYERS
    # the UNet calls its attn2 layers in that order (Mix-of-Show numbers them as it runs)
    order: list[str] = []
    handles = [
        base_pipe.unet.get_submodule(n).register_forward_hook(
            lambda *a, n=n: order.append(n) if n not in order else None
        )
        for n in LAYERS
    ]
    try:
        with torch.no_grad():
            base_pipe.unet(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 77, 32))
    finally:
        for h in handles:
            h.remove()
    assert order == LAYERS


def test_each_row_becomes_its_layers_word(
    layer_file: tuple[Path, torch.Tensor], base_index: ModuleIndex
) -> None:
    path, rows = layer_file
    concept = read_concept_lora(path, name="v", tokens=(TOKEN,), pipe_or_module_index=base_index)
    emb = concept.embeddings["text_encoder"]
    assert sorted(emb) == sorted(f"<V>[{i}]" for i in range(6))
    for i in range(6):
        assert torch.equal(emb[f"<V>[{i}]"], rows[i : i + 1])
    assert edlora.layer_tokens(emb) == {TOKEN: 6}


def test_layer_prompt_replaces_whole_tokens_only() -> None:
    tokens = {"<a>": 6, "<ab>": 6}
    assert edlora.layer_prompt("<a> and <ab>, <a>", tokens, 3) == "<a>[3] and <ab>[3], <a>[3]"
    assert edlora.layer_prompt("<a>[2] man", tokens, 3) == "<a>[2] man"
    assert not edlora.mentions(["a man", None], tokens)


# --------------------------------------------------------------------------------- rendering


def test_each_layer_reads_its_own_rows_states(
    layer_file: tuple[Path, torch.Tensor], base_pipe: Any
) -> None:
    path, rows = layer_file
    pipe = _installed(base_pipe, path)
    job = make_job("v", 3, PROMPT, negative="blurry")
    with _first_calls(pipe) as seen:
        _call(pipe, [job])
    negative = _truth(pipe, "blurry", None)
    for i, name in enumerate(LAYERS):
        context = torch.cat([negative, _truth(pipe, PROMPT, rows[i])])  # CFG: [uncond; cond]
        torch.testing.assert_close(seen[name][0], context, rtol=1e-5, atol=1e-5)
        hidden, out = next(x for x in seen[name] if isinstance(x, tuple))
        attn = pipe.unet.get_submodule(name)
        with torch.no_grad():
            expected = AttnProcessor()(attn, hidden, context)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # distinct rows: every layer reads different states
    firsts = [seen[n][0] for n in LAYERS]
    assert all(not torch.allclose(a, b) for a in firsts for b in firsts if a is not b)
    # the processors found before the call are back: no layer context is left behind
    assert not any(
        isinstance(p, edlora.LayerContextProcessor) for p in pipe.unet.attn_processors.values()
    )


def test_each_layer_reads_its_own_region_prompt(
    layer_file: tuple[Path, torch.Tensor], base_pipe: Any
) -> None:
    path, rows = layer_file
    pipe = _installed(base_pipe, path)
    region_prompt = "<V> man, at sea"
    job = make_job("v", 4, "a man and a dog, at sea", negative="blurry").model_copy(
        update={"regions": (Region(subject="v", box=(0, 0, 0.5, 1), prompt=region_prompt),)}
    )
    with _first_calls(pipe) as seen:
        _call(pipe, [job])
    negative = _truth(pipe, "blurry", None)
    glob = torch.cat([negative, _truth(pipe, "a man and a dog, at sea", None)])
    for i, name in enumerate(LAYERS):
        torch.testing.assert_close(seen[name][0], glob, rtol=1e-5, atol=1e-5)
        region = seen[name][1]  # (R, 2B, T, D): the region prompts' keys are read per layer
        expected = torch.cat([negative, _truth(pipe, region_prompt, rows[i])])
        torch.testing.assert_close(region[0], expected, rtol=1e-5, atol=1e-5)


def test_equal_rows_load_as_one_plain_token(tmp_path: Path, base_pipe: Any) -> None:
    """A file whose rows are all equal is the plain path: one token, the same latents as a
    single-vector textual inversion of that row."""
    path = tmp_path / "same.pth"
    modules = lora_modules(base_pipe, r"attn2\.to_v")
    _, rows = write_edlora(path, base_pipe, modules, 2, 7, (TOKEN,), rows=6)
    row = rows[TOKEN][:1]
    torch.save(
        {"params": {"new_concept_embedding": {TOKEN: row.repeat(6, 1)}, "text_encoder": {}}},
        str(path),
    )
    concept = read_concept_lora(path, name="v", tokens=(TOKEN,), pipe_or_module_index=base_pipe)
    assert list(concept.embeddings["text_encoder"]) == [TOKEN]
    assert torch.equal(concept.embeddings["text_encoder"][TOKEN], row)
    assert edlora.layer_tokens(concept.embeddings["text_encoder"]) == {}
    ti = tmp_path / "ti.safetensors"
    write_embedding(ti, "<P>", row)
    plain = copy.deepcopy(base_pipe)
    plain.load_textual_inversion(str(ti), token="<P>")
    job = make_job("v", 5, PROMPT)
    latents = _call(_installed(base_pipe, path), [job])
    assert torch.equal(
        latents, _call(plain, [job.model_copy(update={"prompt": "photo of a <P> man"})])
    )


def test_equal_layer_contexts_change_nothing(base_pipe: Any) -> None:
    """The layer-wise processors with every layer's row equal give the plain path's latents."""
    row = torch.randn(1, 32, generator=torch.Generator().manual_seed(9))
    layered = copy.deepcopy(base_pipe)
    _install_tokens(layered, "text_encoder", {f"<V>[{i}]": row for i in range(6)})
    plain = copy.deepcopy(base_pipe)
    _install_tokens(plain, "text_encoder", {"<P>": row})
    job = make_job("v", 6, PROMPT)
    with _first_calls(layered) as seen:
        got = _call(layered, [job])
    assert seen[LAYERS[0]]  # the layer-wise path ran
    want = _call(plain, [job.model_copy(update={"prompt": "photo of a <P> man"})])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.equal(got, _call(plain, [job]))  # the row matters: not a vacuous match


def test_prompts_without_layer_tokens_take_the_plain_path(
    layer_file: tuple[Path, torch.Tensor], base_pipe: Any
) -> None:
    """No layer-wise token in the call: no processor is replaced and the latents are bitwise
    those of the pipeline called with the prompt."""
    pipe = _installed(base_pipe, path=layer_file[0])
    job = make_job("v", 8, "photo of a man")
    installed: list[Any] = []
    with conditioned(pipe, [job]) as extra:
        installed = list(pipe.unet.attn_processors.values())
    assert extra == {}
    assert not any(isinstance(p, edlora.LayerContextProcessor) for p in installed)
    direct = base_pipe(
        prompt=[job.prompt],
        negative_prompt=[job.negative_prompt],
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=job.guidance,
        generator=[torch.Generator().manual_seed(job.seed)],
        output_type="latent",
    ).images
    assert torch.equal(_call(pipe, [job]), direct)


# ------------------------------------------------------------------------------------ merge


def test_kv_features_of_a_layer_use_its_row(
    layer_file: tuple[Path, torch.Tensor], base_pipe: Any
) -> None:
    path, rows = layer_file
    pipe = _installed(base_pipe, path)
    paths = [f"unet.{n}.{p}" for n in LAYERS for p in ("to_k", "to_v")]
    prompts = ["photo of a <V>", "<V> man, at sea"]
    X = F.kv_token_states(pipe, prompts, [TOKEN], paths, 4096)
    shown = [p.replace(TOKEN, "<V>[0]") for p in prompts]  # one token, as `<tmp>` below
    longest = max(len(pipe.tokenizer(p).input_ids) for p in shown)  # padded to the longest
    for i, name in enumerate(LAYERS):
        # from the token to the end of the padded prompt (`features._token_mask`)
        want = []
        for p in prompts:
            states, at = _truth_at(pipe, p, rows[i])
            want.append(states[0, at:longest])
        torch.testing.assert_close(X[f"unet.{name}.to_k"], torch.cat(want), rtol=1e-5, atol=1e-5)
        assert X[f"unet.{name}.to_k"] is X[f"unet.{name}.to_v"]
    # stage 1 reads every layer's copy of the prompt
    assert edlora.all_variants(pipe, ["<V> man"]) == [f"<V>[{i}] man" for i in range(6)]


def test_merge_fits_each_kv_layer_on_its_own_rows(
    layer_file: tuple[Path, torch.Tensor], base_pipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_merge: concept `<V>`'s K/V rows at layer i are its layer-i features; a plain concept
    reads one context everywhere; the per-layer retargeting runs."""
    path, _ = layer_file
    pipe = copy.deepcopy(base_pipe)
    v = read_concept_lora(path, name="v", tokens=(TOKEN,), pipe_or_module_index=pipe)
    w_path = path.parent / "w.pth"
    write_edlora(w_path, pipe, lora_modules(pipe, r"attn2\.to_[kv]"), 2, 9, ("<w>",), rows=1)
    w = read_concept_lora(w_path, name="w", tokens=("<w>",), pipe_or_module_index=pipe)
    v.class_noun, w.class_noun = "man", "dog"
    seen: dict[str, Any] = {}
    real = E._Run.solve

    def solve(self: Any, stage: str, paths: list[str], X: Any, method: str) -> None:
        if stage == E.KV and X is not None:
            seen.update(paths=paths, X=X, texts=dict(self.pipe.tokenizer.get_added_vocab()))
        real(self, stage, paths, X, method)

    monkeypatch.setattr(E._Run, "solve", solve)
    cfg = MergeConfig(templates=("photo of a {token}",), text_max_rows=4096)
    E.run_merge(pipe, [v, w], parse("loraclr", {"iterations": 2}), config=cfg)
    X = seen["X"]
    k = {n: X[0][f"unet.{n}.to_k"] for n in LAYERS}
    assert all(not torch.equal(k[a], k[b]) for a in LAYERS for b in LAYERS if a != b)
    assert len({id(X[1][p]) for p in seen["paths"]}) == 1  # the plain concept: one context
    prompts = F.concept_prompts(v, {}, cfg.templates, others=("dog",))
    with F.token_embeddings(pipe, [v, w]):
        direct = F.kv_token_states(pipe, prompts, [TOKEN], seen["paths"], 4096)
    for n in LAYERS:
        torch.testing.assert_close(k[n], direct[f"unet.{n}.to_k"])


# ------------------------------------------------------------------------------- end to end


def test_render_of_a_merged_plan_reads_each_layers_row(
    layer_file: tuple[Path, torch.Tensor], tmp_path: Path
) -> None:
    """scene plan -> merge (cache entry with `<V>[i]`) -> apply -> render: layer i's keys are
    computed from the merged text encoder's states with row i for `<V>`."""
    from scenecraft.plan import ConceptSpec, stable_hash
    from scenecraft.render.engine import render
    from tests._fixtures_render import lora_files, make_plan, tiny_pipe

    path, rows = layer_file
    plan = make_plan(method="linear", seeds=(1,), scenes=("duo",))
    concepts = (
        ConceptSpec(name="v", tokens=(TOKEN,), lora=str(path), class_noun="man"),
        ConceptSpec(name="ziggy", tokens=("<ZIGGY>",), lora=str(lora_files()[0])),
    )
    merge = plan.merge.model_copy(update={"concepts": concepts})
    merge = merge.model_copy(update={"key": stable_hash(merge.model_dump(mode="json"))})
    job = plan.jobs[0].model_copy(update={"prompt": PROMPT, "concepts": ("v",)})
    plan = plan.model_copy(update={"merge": merge, "jobs": (job,)})
    pipe = copy.deepcopy(tiny_pipe())
    with _first_calls(pipe) as seen:
        result = render(plan, tmp_path / "out", pipe=pipe, cache_dir=tmp_path / "cache")
    assert len(result.written) == 1
    negative = _truth(pipe, job.negative_prompt, None)  # the pipe now carries the merge
    for i, name in enumerate(LAYERS):
        context = torch.cat([negative, _truth(pipe, PROMPT, rows[i])])
        torch.testing.assert_close(seen[name][0], context, rtol=1e-5, atol=1e-5)


def test_the_merges_sampling_run_reads_each_layers_row(
    layer_file: tuple[Path, torch.Tensor], base_pipe: Any
) -> None:
    """Stage 3 (`spatial`): the sampling run that records image-side inputs renders the concept
    layer-wise too; without a layer-wise token nothing is installed."""
    path, rows = layer_file
    pipe = _installed(base_pipe, path)
    watched = {"q": pipe.unet.get_submodule(LAYERS[0].replace("attn2", "attn1") + ".to_q")}
    with _first_calls(pipe) as seen:
        F.spatial_rows(pipe, watched, PROMPT, steps=1, size=SIZE, guidance=7.5, cap=8, seed=0)
    empty = _truth(pipe, "", None)
    for i, name in enumerate(LAYERS):
        context = torch.cat([empty, _truth(pipe, PROMPT, rows[i])])
        torch.testing.assert_close(seen[name][0], context, rtol=1e-5, atol=1e-5)
    with edlora.layerwise_call(pipe, "photo of a man") as plain:
        assert plain == {"prompt": "photo of a man"}
        assert not any(
            isinstance(p, edlora.LayerContextProcessor) for p in pipe.unet.attn_processors.values()
        )
