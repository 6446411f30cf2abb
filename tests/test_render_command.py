"""`scenecraft render` flags and `run(settings, loaded)`, with the real model-loading path."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from scenecraft.cli import render as command
from scenecraft.cli.args import RenderSettings, build_parser
from scenecraft.diagnostics import DiagnosticError
from tests._fixtures_render import (
    make_plan,
    one_thread,  # noqa: F401  (autouse)
    saved_pipeline_dir,
)


def parse(*argv: str) -> RenderSettings:
    return RenderSettings.from_args(build_parser().parse_args(["render", "f.scene", *argv]))


def loaded(**kw: Any) -> SimpleNamespace:
    return SimpleNamespace(plan=make_plan(base=str(saved_pipeline_dir()), **kw))


def run(args: RenderSettings, what: SimpleNamespace) -> tuple[int, str]:
    buf = io.StringIO()
    code = command.run(args, what, console=Console(file=buf, width=240))
    return code, buf.getvalue()


def test_defaults() -> None:
    args = parse()
    assert (args.out, args.only, args.batch_size, args.shard, args.events) == (
        "./out",
        (),
        None,
        None,
        None,
    )
    assert not (args.dry_run or args.force or args.adapters or args.quiet)
    assert parse("--only", "a", "--only", "b").only == ("a", "b")


def test_dry_run_renders_nothing_then_reports_up_to_date(tmp_path: Path) -> None:
    what = loaded(seeds=(1,))
    code, out = run(parse("--out", str(tmp_path), "--dry-run"), what)
    assert code == 0 and "2 image(s), mode base" in out and out.count("render") >= 2
    assert "story/duo/1.png" in out and not list(tmp_path.rglob("*.png"))
    code, out = run(parse("--out", str(tmp_path), "--device", "cpu", "--batch-size", "2"), what)
    assert code == 0 and len(list(tmp_path.rglob("*.png"))) == 2
    assert "wrote 2 image(s), skipped 0 up to date" in out  # plain log (not a terminal)
    code, out = run(parse("--out", str(tmp_path), "--dry-run"), what)
    assert out.count("up to date") == 2


def test_events_json_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        parse("--out", str(tmp_path), "--events", "json", "--only", "solo"), loaded(seeds=(3,))
    )
    assert code == 0 and out == ""
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    types = [r["type"] for r in rows]
    assert types[0] == "render-started" and types[-1] == "render-finished"
    written = [r for r in rows if r["type"] == "image-written"]
    assert len(written) == 1 and written[0]["scene"] == "solo" and written[0]["seed"] == 3
    assert Path(written[0]["path"]).is_file()


def test_shards_through_the_cli_cover_every_job_once(tmp_path: Path) -> None:
    what = loaded(seeds=(1, 2, 3))
    seen: list[str] = []
    for i in (1, 2, 3):
        code, _ = run(parse("--out", str(tmp_path), "--shard", f"{i}/3", "--quiet"), what)
        assert code == 0
        manifest = json.loads((tmp_path / "story" / f"manifest.shard-{i}-of-3.json").read_text())
        seen += list(manifest["images"])
    assert sorted(seen) == sorted(
        p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")
    )
    assert len(seen) == 6 == len(set(seen))


def test_errors_and_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DiagnosticError) as exc:
        run(parse("--out", str(tmp_path), "--shard", "4/3"), loaded())
    assert exc.value.errors[0].code == "bad-shard"
    with pytest.raises(DiagnosticError) as exc:
        run(parse("--out", str(tmp_path), "--batch-size", "0"), loaded())
    assert exc.value.errors[0].code == "bad-batch-size"

    def interrupted(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "render", interrupted)
    assert run(parse("--out", str(tmp_path)), loaded())[0] == 130


def test_dry_run_says_whether_the_merge_is_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    what = loaded(seeds=(1,), method="linear")
    cache = tmp_path / "cache"
    dry = parse("--out", str(tmp_path), "--dry-run", "--cache-dir", str(cache))
    code, out = run(dry, what)
    assert code == 0 and "merge linear" in out and "not cached, the run merges first" in out
    code, _ = run(parse("--out", str(tmp_path), "--device", "cpu", "--cache-dir", str(cache)), what)
    assert code == 0
    code, out = run(
        parse("--out", str(tmp_path), "--dry-run", "--cache-dir", str(cache), "--force"), what
    )
    assert "cached (float32; a run in another dtype merges again)" in out
    code, out = run(dry, what)
    assert "not needed, every image is up to date" in out
    code, _ = run(
        parse("--out", str(tmp_path), "--dry-run", "--cache-dir", str(cache), "--json"), what
    )
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "merged" and report["merge_cached"] == ["torch.float32"]


def test_dry_run_does_not_claim_a_merge_when_older_entries_cannot_say(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / ("0" * 32)).mkdir(parents=True)  # an entry written before manifests named their plan
    (cache / ("0" * 32) / "manifest.json").write_text('{"method": "linear"}')
    dry = parse("--out", str(tmp_path), "--dry-run", "--cache-dir", str(cache))
    code, out = run(dry, loaded(seeds=(1,), method="linear"))
    assert code == 0 and "not among the cached merges that name their plan (1 older ones" in out
