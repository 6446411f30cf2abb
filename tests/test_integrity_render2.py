"""Integrity, round two (issue 32), the render and merge side: NaN pictures never count as done,
resource faults have their codes (never exit 70), foreign images are not adopted, one output
folder per scene file, Ctrl-C during a model load, a damaged base folder, `merge --json`
warnings and library noise."""

from __future__ import annotations

import errno
import json
import shutil
import signal
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from scenecraft import cli, files
from scenecraft.diagnostics import DiagnosticError
from scenecraft.events import Notice
from scenecraft.plan import BaseModelSpec, RenderPlan
from scenecraft.render import outputs
from scenecraft.render.engine import render
from scenecraft.render.session import Session
from tests._fixtures_render import (
    SIZE,
    Recorder,
    lora_files,
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    saved_pipeline_dir,
    tiny_pipe,
)
from tests.test_render_cli import write_scene


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "story" / "manifest.json").read_text())
    return data


def _with_lora(plan: RenderPlan, path: Path) -> RenderPlan:
    first, second = plan.merge.concepts
    concepts = (first.model_copy(update={"lora": str(path)}), second)
    return plan.model_copy(update={"merge": plan.merge.model_copy(update={"concepts": concepts})})


# ------------------------------------------------------------------ 4. NaN pictures


@pytest.fixture(scope="module")
def huge_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first test LoRA with every up (B) weight times 1e15: finite, so no loader refuses it,
    but the activations overflow to NaN/inf."""
    tensors = load_file(str(lora_files()[0]))
    huge = {k: v * 1e15 if "lora_B" in k else v for k, v in tensors.items()}
    path = tmp_path_factory.mktemp("huge") / "huge.safetensors"
    save_file(huge, str(path))
    return path


def test_lora_with_huge_weights_is_non_finite_image_and_writes_nothing(
    tmp_path: Path, huge_lora: Path
) -> None:
    plan = _with_lora(make_plan(scenes=("solo",), seeds=(1, 2)), huge_lora)
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=tiny_pipe(), adapters=True)
    [d] = exc.value.diagnostics
    assert d.code == "non-finite-image"
    job = plan.jobs[0]
    assert "scene `solo` seed 1" in d.message and job.id[:10] in d.message
    assert not list(tmp_path.rglob("*.png"))  # no black picture
    assert not list(tmp_path.rglob("manifest*.json"))  # and nothing recorded as done


def test_non_finite_batch_keeps_earlier_images_and_records_only_them(
    tmp_path: Path, huge_lora: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches before the bad one stay written and recorded; a re-run still redoes the bad."""
    plan = make_plan(scenes=("solo",), seeds=(1, 2))
    real = Session.call

    def second_batch_nan(self: Session, pipe: Any, tasks: Any) -> None:
        if tasks[0].seed == 2:
            import numpy as np

            from scenecraft.render.finite import FiniteWatch

            FiniteWatch(tasks).pictures(np.full((1, SIZE, SIZE, 3), np.nan, dtype="float32"))
        real(self, pipe, tasks)

    monkeypatch.setattr(Session, "call", second_batch_nan)
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=tiny_pipe())
    assert exc.value.diagnostics[0].code == "non-finite-image"
    assert "found in the decoded pixels" in exc.value.diagnostics[0].notes
    assert [Path(k).name for k in _manifest(tmp_path)["images"]] == ["1.png"]
    monkeypatch.setattr(Session, "call", real)
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert [p.name for p in again.written] == ["2.png"]


def test_finite_images_are_the_same_pixels_as_diffusers_pil_output(tmp_path: Path) -> None:
    """The np-then-PIL path changes no pixel: diffusers' own PIL output is identical."""
    import numpy as np
    import torch

    result = render(make_plan(scenes=("solo",), seeds=(3,)), tmp_path, pipe=tiny_pipe())
    job = make_plan(scenes=("solo",), seeds=(3,)).jobs[0]
    from scenecraft.render.samplers import make_scheduler

    pipe = tiny_pipe()
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(job.sampler, original.config)
    try:
        direct = pipe(
            prompt=[job.prompt],
            negative_prompt=[job.negative_prompt],
            width=job.width,
            height=job.height,
            num_inference_steps=job.steps,
            guidance_scale=job.guidance,
            generator=[torch.Generator("cpu").manual_seed(3)],
        ).images[0]
    finally:
        pipe.scheduler = original
    from PIL import Image

    with Image.open(result.written[0]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(direct))


def test_cli_exit_2_for_a_huge_lora(
    tmp_path: Path, huge_lora: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = write_scene(tmp_path, "none")
    scene.write_text(scene.read_text().replace(str(lora_files()[0]), str(huge_lora)))
    out = tmp_path / "out"
    argv = ["render", str(scene), "--out", str(out), "--adapters", "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error[non-finite-image]" in err and "invalid value encountered" not in err
    assert not list(out.rglob("*.png"))


# ------------------------------------------------------- 5. resource faults, never exit 70


def test_merge_cache_safetensors_full_disk_is_merge_cache_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import SafetensorError

    from scenecraft.merge import cache as merge_cache

    def full(*a: Any, **k: Any) -> None:  # what safetensors raises on ENOSPC (not an OSError)
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
            'message: "No space left on device" })'
        )

    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(DiagnosticError) as exc:
        merge_cache.write_entry(tmp_path / "c", "k" * 20, {}, {}, {})
    [d] = exc.value.diagnostics
    assert d.code == "merge-cache-unwritable"
    assert d.message.endswith("No space left on device") and "free on the disk" in d.notes[0]
    assert not list((tmp_path / "c").glob(".tmp-*"))


@contextmanager
def _full_disk_for(name: str) -> Iterator[None]:
    """ENOSPC for every atomic write of a file called ``name`` (the raw writer included)."""
    real = files.atomic_output

    @contextmanager
    def failing(path: Path) -> Iterator[Path]:
        if path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        with real(path) as tmp:
            yield tmp

    files.atomic_output = failing  # type: ignore[assignment]
    try:
        yield
    finally:
        files.atomic_output = real


def test_contact_sheet_on_a_full_disk_is_output_unwritable(tmp_path: Path) -> None:
    plan = make_plan(storyboard=True, scenes=(), seeds=())
    with _full_disk_for("tale.png"), pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path, pipe=tiny_pipe())
    [d] = exc.value.diagnostics
    assert d.code == "output-unwritable" and "tale.png" in d.message
    assert len(_manifest(tmp_path)["images"]) == 3  # every panel kept
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert not again.written and len(again.storyboards) == 2


_CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 206158430208 bytes. Error code 12 (Cannot allocate memory)"
)


def test_cpu_out_of_memory_halves_then_is_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = make_plan(scenes=("solo",), seeds=(1, 2), batch_size=2)
    real = Session.call

    def cpu_oom_above_one(self: Session, pipe: Any, tasks: Any) -> None:
        if len(tasks) > 1:
            raise RuntimeError(_CPU_OOM)
        real(self, pipe, tasks)

    monkeypatch.setattr(Session, "call", cpu_oom_above_one)
    rec = Recorder()
    result = render(plan, tmp_path, pipe=tiny_pipe(), reporter=rec)
    assert len(result.written) == 2
    assert any("out of memory at batch 2" in n.message for n in rec.of(Notice))

    def always(self: Session, pipe: Any, tasks: Any) -> None:
        raise RuntimeError(_CPU_OOM)

    monkeypatch.setattr(Session, "call", always)
    with pytest.raises(DiagnosticError) as exc:
        render(plan, tmp_path / "b", pipe=tiny_pipe())
    [d] = exc.value.diagnostics
    assert (
        d.code == "out-of-memory" and "32x32" in d.message and "DefaultCPUAllocator" in d.notes[0]
    )


def test_cli_out_of_memory_outside_the_batches_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def oom(*a: Any, **k: Any) -> Any:
        raise RuntimeError(_CPU_OOM)

    monkeypatch.setattr("scenecraft.models.load_pipeline", oom)
    scene = write_scene(tmp_path, "none")
    assert cli.main(["render", str(scene), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error[out-of-memory]" in err and "internal-error" not in err


# ------------------------------------------------------------ 6. foreign images adopted


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _huge_black_png(path: Path, side: int, chunk: bytes) -> None:
    """A genuine ``side`` x ``side`` 8-bit grey PNG (all black), written row by row, with the
    ``chunk`` (our provenance, copied from the real image) in it."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = outputs.PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + chunk
    path.write_bytes(data + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def _our_chunk(png: bytes) -> bytes:
    """The raw ``iTXt`` chunk holding our provenance, as it sits in ``png``."""
    at = 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        if kind == b"iTXt" and png[at + 8 : at + 18] == b"scenecraft":
            return png[at : at + 12 + length]
        at += 12 + length
    raise AssertionError("no scenecraft chunk")


@pytest.mark.parametrize("foreign", ["jpeg-bytes", "black-no-provenance", "1x1-with-chunk", "huge"])
def test_foreign_image_under_a_manifest_key_is_rendered_again(
    tmp_path: Path, foreign: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    plan = make_plan(scenes=("solo",), seeds=(1,))
    [path] = render(plan, tmp_path, pipe=tiny_pipe()).written
    good = path.read_bytes()
    if foreign == "jpeg-bytes":
        Image.new("RGB", (SIZE, SIZE)).save(path, format="JPEG")
    elif foreign == "black-no-provenance":  # the job's size, but not our picture
        Image.new("RGB", (SIZE, SIZE)).save(path, format="PNG")
    elif foreign == "1x1-with-chunk":
        one = tmp_path / "one.png"
        Image.new("RGB", (1, 1)).save(one, format="PNG")
        small = one.read_bytes()
        path.write_bytes(small[:33] + _our_chunk(good) + small[33:])  # after IHDR
        assert outputs.read_png_metadata(path).scenecraft is not None
    else:  # 13,300 x 13,300: 177 MB of pixels to decode, 917 MB as RGBA
        _huge_black_png(path, 13_300, _our_chunk(good))

    def no_decoding(p: Path) -> tuple[bool, str | None]:
        if foreign == "huge":
            raise AssertionError("a picture of the wrong size must be refused by its header")
        return real_decoded(p)

    from scenecraft.render import png as png_mod

    real_decoded = png_mod.decoded
    monkeypatch.setattr(png_mod, "decoded", no_decoding)
    again = render(plan, tmp_path, pipe=tiny_pipe())
    assert again.written == [path] and not again.skipped
    assert path.read_bytes() == good


def test_png_size_reads_the_header_only(tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "a.png"
    Image.new("RGB", (24, 40)).save(png)
    assert outputs.png_size(png) == (24, 40)
    (tmp_path / "b.png").write_bytes(b"\xff\xd8\xff\xe0 a jpeg")
    assert outputs.png_size(tmp_path / "b.png") is None
    assert outputs.png_size(tmp_path / "missing.png") is None


# ---------------------------------------------------- 8. one output folder per scene file


def test_same_file_name_in_two_folders_collides_instead_of_overwriting(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "story.scene", tmp_path / "b" / "story.scene"
    for f in (a, b):
        f.parent.mkdir()
        f.write_text("# a scene file\n")
    first = make_plan(scenes=("solo",), seeds=(1,)).model_copy(update={"file": str(a)})
    second = first.model_copy(update={"file": str(b)})
    out = tmp_path / "out"
    [image] = render(first, out, pipe=tiny_pipe()).written
    stamp = image.stat().st_mtime_ns
    with pytest.raises(DiagnosticError) as exc:
        render(second, out, pipe=object())  # refused before any model is used
    [d] = exc.value.diagnostics
    assert d.code == "output-path-collision"
    assert str(a) in d.message and str(b) in d.message
    assert image.stat().st_mtime_ns == stamp
    assert _manifest(out)["plan_path"] == str(a)
    # the same file again is fine, and a file moved away hands its folder over
    assert render(first, out, pipe=tiny_pipe()).skipped == [image]
    a.unlink()
    assert render(second, out, pipe=tiny_pipe()).skipped == [image]
    assert _manifest(out)["plan_path"] == str(b)


# ---------------------------------------------------------- 9. Ctrl-C during model load


@pytest.fixture
def live_ctrl_c() -> Iterator[None]:
    """Python's own SIGINT handler for the test, as in a terminal: a process started in the
    background (``cmd &``, nohup) inherits SIGINT ignored, where `interrupts_kept` rightly does
    nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class _InterruptInDel:
    """Delivers SIGINT while the garbage collector runs its ``__del__``: Python prints the
    KeyboardInterrupt as "Exception ignored" and carries on (diffusers' Group.__del__ case)."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_ctrl_c_swallowed_during_model_load_still_stops_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_ctrl_c: None
) -> None:
    import scenecraft.models

    folder = tmp_path / "model"
    folder.mkdir()

    def loading(*a: Any, **k: Any) -> Any:
        obj = _InterruptInDel()
        del obj  # the interrupt arrives inside __del__ and is swallowed there
        return tiny_pipe()

    monkeypatch.setattr(scenecraft.models, "_load_local", loading)
    plan = make_plan(scenes=("solo",), seeds=(1, 2), base=str(folder))
    with pytest.raises(KeyboardInterrupt):
        render(plan, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("*.png"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_cli_ctrl_c_during_model_load_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_ctrl_c: None
) -> None:
    import scenecraft.models

    def loading(*a: Any, **k: Any) -> Any:
        obj = _InterruptInDel()
        del obj
        return tiny_pipe()

    monkeypatch.setattr(scenecraft.models, "_load_local", loading)
    scene = write_scene(tmp_path, "none")
    out = tmp_path / "out"
    assert cli.main(["render", str(scene), "--out", str(out), "--quiet"]) == 130
    assert not list(out.rglob("*.png"))


def test_an_interrupt_a_library_turns_into_its_own_error_is_still_an_interrupt(
    live_ctrl_c: None,
) -> None:
    from scenecraft.interrupts import interrupts_kept

    with pytest.raises(KeyboardInterrupt), interrupts_kept():
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException as exc:  # a library that wraps everything
            raise ValueError("load failed") from exc
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored() -> None:
    from scenecraft.interrupts import interrupts_kept

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_kept():
            signal.raise_signal(signal.SIGINT)  # nothing happens
    finally:
        signal.signal(signal.SIGINT, before)


# --------------------------------------------------------- 10. a damaged local base folder


def _truncate(folder: Path) -> None:
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "bad", "why"),
    [
        (_truncate, "unet/diffusion_pytorch_model.safetensors", "cannot be read"),
        (lambda f: (f / "vae" / "config.json").write_text("{not json"), "vae/config.json", "JSON"),
        (lambda f: shutil.rmtree(f / "unet"), "unet", "is missing"),
        (
            lambda f: (f / "unet" / "config.json").write_bytes(b"\xff\xfe\x00"),
            "unet/config.json",
            "JSON",
        ),
    ],
    ids=["truncated-weights", "broken-config", "missing-component", "binary-config"],
)
def test_damaged_base_folder_is_model_damaged_naming_the_file(
    tmp_path: Path, damage: Any, bad: str, why: str
) -> None:
    from scenecraft.models import load_pipeline

    folder = tmp_path / "m"
    shutil.copytree(saved_pipeline_dir(), folder)
    damage(folder)
    with pytest.raises(DiagnosticError) as exc:
        load_pipeline(BaseModelSpec(source=str(folder)), "cpu")
    [d] = exc.value.diagnostics
    assert d.code == "model-damaged"
    assert f"`{bad}`" in d.message and why in d.message
    assert "hf download" not in (d.help or "")


# ------------------------------------------------------ 13. merge --json warnings, noise


def test_merge_json_carries_the_damaged_entry_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = write_scene(tmp_path, "linear")
    cache = tmp_path / "c"
    argv = ["merge", str(scene), "--json", "--cache-dir", str(cache)]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []
    [entry] = [p for p in cache.iterdir() if not p.name.startswith(".") and p.is_dir()]
    weights = entry / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    [warning] = report["warnings"]
    assert warning["level"] == "warning" and "damaged" in warning["message"]
    assert report["cached"] is False


def test_library_noise_never_comes_before_scenecraft_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's pickle note, PIL's bomb warning and numpy's cast warning are filtered by the
    CLI; scenecraft's own diagnostic is the first thing on stderr."""
    from PIL import Image

    def noisy_load(*a: Any, **k: Any) -> Any:
        warnings.warn(
            "You are using `torch.load` with `weights_only=False` (the current default value)",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn(
            "Image size (176890000 pixels) exceeds limit of 89478485 pixels, could be "
            "decompression bomb DOS attack.",
            Image.DecompressionBombWarning,
            stacklevel=1,
        )
        warnings.warn("invalid value encountered in cast", RuntimeWarning, stacklevel=1)
        raise RuntimeError(_CPU_OOM)

    monkeypatch.setattr("scenecraft.models.load_pipeline", noisy_load)
    scene = write_scene(tmp_path, "none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code = cli.main(["render", str(scene), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert [str(w.message) for w in caught] == []
    assert capsys.readouterr().err.lstrip().startswith("error[out-of-memory]")


def test_foreign_huge_panel_outside_the_selection_is_drawn_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contact sheet never decodes a panel whose header is not the job's size."""
    from scenecraft.render.storyboard import collect_panels

    plan = make_plan(storyboard=True, scenes=(), seeds=())
    first = render(plan, tmp_path, pipe=tiny_pipe())
    [panel] = [p for p in first.written if p.parent.name == "02-solo"]
    _huge_black_png(panel, 13_300, _our_chunk(panel.read_bytes()))
    from PIL import Image

    from scenecraft.render import png as png_mod

    real_open, real_decoded = Image.open, png_mod.decoded

    def never_the_panel(fn: Any) -> Any:
        def wrapped(p: Any, *args: Any, **kw: Any) -> Any:
            if Path(str(p)) == panel:  # only its header may be read (png_size), never pixels
                raise AssertionError("the huge panel was opened for decoding")
            return fn(p, *args, **kw)

        return wrapped

    monkeypatch.setattr(Image, "open", never_the_panel(real_open))
    monkeypatch.setattr(png_mod, "decoded", never_the_panel(real_decoded))
    again = render(plan, tmp_path, pipe=tiny_pipe(), only=["duo"])  # panel 2 not selected
    assert len(again.storyboards) == 2
    panels = collect_panels(plan, plan.storyboards[0], tmp_path, "")
    assert [len(p.images) for p in panels] == [1, 0, 1]
