"""The language server's parts that need no client: the reparser, the LoRA header reader, the
merge-parameter adapter, the completion context and the analysis (tests/test_lsp.py and
tests/test_lsp_navigation.py drive the server)."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from scenecraft.diagnostics import DiagnosticError
from scenecraft.language.parser import parse
from tests._lsp_client import MAIN
from tests._optional import missing

ROOT = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _pygls() -> None:
    if importlib.util.find_spec("pygls") is None:
        missing('python module pygls is not installed; pip install "scenecraft[lsp]"')


# ---------------------------------------------------------------------------- reparsing


def scene_and_example_files() -> list[Path]:
    return sorted(
        [
            *ROOT.glob("scenes/**/*.scene"),
            *ROOT.glob("examples/*.scene"),
            *ROOT.glob("tests/catalogue/*.scene"),
        ]
    )


def test_the_reparser_gives_parse_s_trees_and_errors() -> None:
    from scenecraft.lsp.reparse import Reparser

    reparser = Reparser()
    same = errors = 0
    for path in scene_and_example_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        try:
            want = parse(text, path.name)
        except DiagnosticError as exc:
            with pytest.raises(DiagnosticError) as got:
                reparser(text, path.name)
            assert got.value.diagnostics == exc.diagnostics, path.name
            errors += 1
            continue
        got_tree = reparser(text, path.name)
        # repr shows spans (equality ignores them): every node at the same place
        assert repr(got_tree) == repr(want) and got_tree.span == want.span, path.name
        assert repr(got_tree.comments) == repr(want.comments), path.name
        same += 1
    assert same >= 40 and errors >= 10


def test_the_reparser_parses_only_the_edited_item() -> None:
    from scenecraft.lsp.reparse import Reparser

    reparser = Reparser()
    reparser(MAIN, "main.scene")
    first = reparser.parsed_runs
    assert first == len(reparser.runs(MAIN)) == 9  # the comment, then one run per item
    edited = MAIN.replace('setting "at sea"', 'setting "on the sea"')
    tree = reparser(edited, "main.scene")
    assert reparser.parsed_runs == first + 1
    assert repr(tree) == repr(parse(edited, "main.scene"))


# ---------------------------------------------------------------------------- LoRA headers


def write_header(path: Path, tensors: dict[str, list[int]], metadata: dict[str, str]) -> None:
    """A safetensors file with this header and no tensor bytes (the reader reads the header only)."""
    header: dict[str, object] = {
        k: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]} for k, shape in tensors.items()
    }
    header["__metadata__"] = metadata
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data)


def test_lora_info_reads_format_rank_and_family_from_the_header(tmp_path: Path) -> None:
    from scenecraft.lsp.lora_info import lora_info

    kohya = tmp_path / "k.safetensors"
    prefix = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    write_header(
        kohya,
        {f"{prefix}.lora_down.weight": [8, 768], f"{prefix}.lora_up.weight": [320, 8]},
        {"ss_base_model_version": "sd_v1"},
    )
    info = lora_info(kohya)
    assert info is not None
    assert (info.format, info.rank, info.family, info.tensors) == ("kohya", 8, "sd15", 2)
    assert info.metadata == {"ss_base_model_version": "sd_v1"}
    peft = tmp_path / "p.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    write_header(peft, {f"{key}.lora_A.weight": [4, 2048], f"{key}.lora_B.weight": [640, 4]}, {})
    info = lora_info(peft)
    assert info is not None and (info.format, info.rank, info.family) == (
        "diffusers/PEFT",
        4,
        "sdxl",
    )
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 8 + b"not json")
    assert lora_info(tmp_path / "bad.safetensors") is None


# ---------------------------------------------------------------------------- the adapter


def test_merge_parameters_come_from_the_one_table() -> None:
    from scenecraft.lsp.merge_params import merge_parameters
    from scenecraft.merge.config import METHODS

    table = merge_parameters()
    assert list(table) == list(METHODS)
    fields = [n for n in METHODS["loraclr"].model_fields if n != "method"]
    assert [p.name for p in table["loraclr"]] == fields
    ridge = next(p for p in table["gradient-fusion"] if p.name == "ridge")
    assert (ridge.range_text, ridge.default_text) == ("[0, 1]", "0.01")
    density = next(p for p in table["ties"] if p.name == "density")
    assert density.range_text == "(0, 1]"
    assert table["linear"] == []


# ---------------------------------------------------------------------------- context


def test_the_completion_context_knows_the_enclosing_block() -> None:
    from scenecraft.lsp.context import context_at

    lines = MAIN.split("\n")
    at = next(i for i, x in enumerate(lines) if x.startswith("  margin"))
    ctx = context_at(lines, at, 4)
    assert (ctx.block.kind, ctx.block.name, ctx.words, ctx.in_string) == (
        "merge",
        "loraclr",
        ["ma"],
        False,
    )
    at = next(i for i, x in enumerate(lines) if "sampler" in x)
    ctx = context_at(lines, at, len('  sampler "D'))
    assert (ctx.block.kind, ctx.in_string, ctx.string_start) == (
        "defaults",
        True,
        len('  sampler "'),
    )
    jinja = ["{% for x in xs %}", "scene {{ x }} {", "  ", "}", "{% endfor %}"]
    assert context_at(jinja, 2, 2).block.kind == "scene"
    assert context_at(jinja, 4, 0).block.kind == "top"


# ---------------------------------------------------------------------------- analysis


def test_a_bug_in_a_phase_becomes_an_internal_error_diagnostic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scenecraft.lsp import analysis

    path = tmp_path / "x.scene"

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(analysis, "check", broken)
    result = analysis.analyse(path, 'model "a/b"\n')
    assert [(d.code, d.message) for d in result.diagnostics] == [
        ("internal-error", "KeyError: 'boom'")
    ]
    assert result.program is not None and result.checked is None


def test_analysis_reads_the_editor_s_text_and_a_template_s_vars_file(tmp_path: Path) -> None:
    from scenecraft.lsp.analysis import analyse

    (tmp_path / "t.vars.toml").write_text('who = "zigy"\n')
    text = 'model "a/b"\nconcept ziggy {\n  token "<Z>"\n}\nscene s {\n  {{ who }}\n}\n'
    result = analyse(tmp_path / "t.scene.j2", text)  # no such file on disk: the text is used
    assert result.variables == {"who": "zigy"}
    (d,) = [d for d in result.diagnostics if d.is_error]
    assert d.code == "unknown-concept" and d.span is not None and d.span.line == 6
    assert d.notes[0] == "the template produced: `zigy`"


def test_an_editor_buffer_has_the_file_size_bound(tmp_path: Path) -> None:
    from scenecraft.language.loader import MAX_FILE_BYTES
    from scenecraft.lsp.analysis import analyse

    text = "# " + "x" * MAX_FILE_BYTES + "\n"
    result = analyse(tmp_path / "big.scene", text)
    assert [d.code for d in result.diagnostics] == ["unreadable-file"]
    assert "is larger than 2 MiB" in result.diagnostics[0].message
