"""Peak memory and wall time of scenecraft on hostile inputs (issue 12), via /usr/bin/time -v.

Every input must end in exit 0 or 2 (a diagnostic), never 70, with peak RSS under 1 GB.
Run: ``python benchmarks/hostile_inputs.py`` (needs GNU time: ``apt-get install time``).
Writes benchmarks/results/hostile_inputs.json and prints a table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "hostile_inputs.json"
LIMIT_KB = 1024 * 1024  # 1 GiB

HEAD = """model "example-org/sd15-base"
concept ziggy {
  token "<ZIGGY>"
  class "man"
  lora "ziggy.safetensors"
}
"""


A = "{% set a = 'x' * 1000000 %}"  # a 1 MB string


def tpl(body: str) -> str:
    return HEAD + body + "\nscene s {\n  ziggy\n}\n"


def write_inputs(d: Path) -> dict[str, list[str]]:
    """name -> scenecraft arguments (relative to d)."""
    (d / "ziggy.safetensors").write_bytes(b"")
    files = {
        "include-dev-zero.scene": HEAD + 'include "/dev/zero"\nscene s {\n  ziggy\n}\n',
        "plain.scene": HEAD + "scene s {\n  ziggy\n}\n",
        # 487-byte class: 100,000 scenes x 10,000 seeds
        "scenes-x-seeds.scene.j2": HEAD
        + "{% for i in range(100000) %}\nscene s{{ i }} {\n  ziggy\n  seeds 0..9999\n}\n"
        "{% endfor %}\n",
        # 1 M jobs in a few lines: 100 scenes x 10,000 seeds
        "million-jobs.scene.j2": HEAD
        + "{% for i in range(100) %}\nscene s{{ i }} {\n  ziggy\n  seeds 0..9999\n}\n"
        "{% endfor %}\n",
        "repeat.scene.j2": tpl("{{ 'x' * 10**9 }}"),
        "gigabyte-output.scene.j2": tpl(
            "{% for i in range(100000) %}{{ 'y' * 10000 }}\n{% endfor %}"
        ),
        "nested-ranges.scene.j2": tpl(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        ),
        "nested-lists.scene.j2": tpl(
            "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}"
            "{% endfor %}"
        ),
        "lipsum.scene.j2": tpl("{{ lipsum(10**6) }}"),
        "center.scene.j2": tpl("{{ 'x'|center(10**9) }}"),
        # issue 32, language side
        "tilde.scene.j2": tpl(A + "{% set b = " + " ~ ".join(["a"] * 1500) + " %}"),
        "set-blocks.scene.j2": tpl(
            A
            + "".join(
                f"{{% set a{i} %}}{{{{ {p} }}}}{{{{ {p} }}}}{{% endset %}}"
                for i, p in enumerate(["a", *(f"a{k}" for k in range(1, 11))], 1)
            )
        ),
        "indent.scene.j2": tpl("{{ ('a\\n' * 500000)|indent('x' * 2500) }}"),
        "join.scene.j2": tpl(A + "{{ ([a] * 1000)|join }}"),
        "percent-format.scene.j2": tpl(A + "{{ ('%s' * 1000) % ([a] * 1000)|list }}"),
        "str-format.scene.j2": tpl(A + "{{ ('{0}' * 1000).format(a) }}"),
        "print-list.scene.j2": tpl(A + "{{ [a] * 1000 }}"),
        "grown-string.scene.j2": tpl(
            "{% set ns = namespace(s='') %}{% for i in range(100000) %}"
            "{% set ns.s = ns.s ~ 'xxxxxxxxxx' %}{% endfor %}"
        ),
        "comments.scene": HEAD + "# a comment\n" * 150_000 + "scene s {\n  ziggy\n}\n",
        "blank-lines.scene": HEAD
        + "\n" * (2 * 1024 * 1024 - len(HEAD) - 40)
        + "scene s {\n  ziggy\n}\n",
        "long-string.scene": HEAD + 'scene s {\n  ziggy wears "' + "ab" * 1_000_000 + '"\n}\n',
        "extra-values.scene": HEAD
        + "scene s {\n  ziggy\n  extra "
        + ",".join(["a"] * 20_000)
        + "\n}\n",
        "panels.scene": HEAD
        + "storyboard b {\n"
        + '  panel "cap" {\n    ziggy\n  }\n' * 50_000
        + "}\n",
        "case.scene": HEAD + "".join(f"scene {n} {{\n  ziggy\n}}\n" for n in ("Scene1", "scene1")),
    }
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    for i in range(1500):  # an include chain 1,500 deep
        (d / f"chain{i}.scene").write_text(f'include "chain{i + 1}.scene"\n', encoding="utf-8")
    (d / "chain1500.scene").write_text("", encoding="utf-8")
    (d / "deep-include.scene").write_text(
        HEAD + 'include "chain0.scene"\nscene s {\n  ziggy\n}\n', encoding="utf-8"
    )
    # the largest accepted scene file: just under 2 MiB of one-seed scenes
    scenes, size, i = [], len(HEAD), 0
    while True:
        s = f"scene s{i} {{\n  ziggy\n}}\n"
        if size + len(s) > 2 * 1024 * 1024:
            break
        scenes.append(s)
        size += len(s)
        i += 1
    (d / "max-size.scene").write_text(HEAD + "".join(scenes), encoding="utf-8")
    # ten includes of 2 MiB libraries (copies: one path is included once anyway)
    lib = "".join(f'concept c{k} {{\n  token "<C{k}>"\n}}\n' for k in range(60_000))
    lib = lib[: lib.rindex("concept", 0, 2 * 1024 * 1024)]
    for k in range(10):
        (d / f"lib{k}.scene").write_text(lib, encoding="utf-8")
    (d / "ten-includes.scene").write_text(
        HEAD + "".join(f'include "lib{k}.scene"\n' for k in range(10)) + "scene s {\n  ziggy\n}\n",
        encoding="utf-8",
    )
    deep = "[" * 100_000 + "]" * 100_000
    (d / "deep.json").write_text('{"a": ' + deep + "}", encoding="utf-8")
    (d / "deep.toml").write_text("a = " + deep + "\n", encoding="utf-8")
    (d / "twenty-thousand.scene").write_text(
        HEAD + "".join(f"scene s{k} {{\n  ziggy\n  seeds 0..1999\n}}\n" for k in range(10)),
        encoding="utf-8",
    )
    return {
        "check /dev/zero": ["check", "/dev/zero"],
        'include "/dev/zero"': ["check", "include-dev-zero.scene"],
        "--vars /dev/zero": ["check", "plain.scene", "--vars", "/dev/zero"],
        "100,000 scenes x 10,000 seeds (template)": ["check", "scenes-x-seeds.scene.j2"],
        "1 M jobs (100 scenes x 10,000 seeds)": ["check", "million-jobs.scene.j2"],
        "'x' * 10**9": ["check", "repeat.scene.j2"],
        "1 GB of template output": ["check", "gigabyte-output.scene.j2"],
        "nested range(100000) loops": ["check", "nested-ranges.scene.j2"],
        "nested loops over a 100,000-item list": ["check", "nested-lists.scene.j2"],
        "lipsum(10**6)": ["check", "lipsum.scene.j2"],
        "'x'|center(10**9)": ["check", "center.scene.j2"],
        "include chain 1,500 deep": ["check", "deep-include.scene"],
        "largest accepted file (2 MiB, 86k scenes)": ["check", "max-size.scene"],
        "compile, 20,000 jobs": ["compile", "twenty-thousand.scene"],
        "render --dry-run, 20,000 jobs": [
            "render",
            "twenty-thousand.scene",
            "--dry-run",
            "--out",
            "out",
        ],
        # issue 32, language side
        "1,500-term ~ of a 1 MB string": ["check", "tilde.scene.j2"],
        "eleven nested {% set %} captures": ["check", "set-blocks.scene.j2"],
        "('a\\n'*500000)|indent('x'*2500)": ["check", "indent.scene.j2"],
        "([a]*1000)|join": ["check", "join.scene.j2"],
        "('%s'*1000) % ([a]*1000)": ["check", "percent-format.scene.j2"],
        "('{0}'*1000).format(a)": ["check", "str-format.scene.j2"],
        "{{ [a]*1000 }}": ["check", "print-list.scene.j2"],
        "string grown by ~ in a 100,000 loop": ["check", "grown-string.scene.j2"],
        "150,000 comment lines": ["check", "comments.scene"],
        "2 MiB of blank lines (check)": ["check", "blank-lines.scene"],
        "2 MiB of blank lines (render --dry-run)": [
            "render",
            "blank-lines.scene",
            "--dry-run",
            "--out",
            "out",
        ],
        "a 2 MB string": ["check", "long-string.scene"],
        "extra a,a,... 20,000 values": ["check", "extra-values.scene"],
        "50,000 inline storyboard panels": ["check", "panels.scene"],
        "ten includes of 2 MiB files": ["check", "ten-includes.scene"],
        "--vars 100,000-deep JSON": ["check", "plain.scene", "--vars", "deep.json"],
        "--vars 100,000-deep TOML": ["check", "plain.scene", "--vars", "deep.toml"],
        "--var 100,000-deep value": ["check", "plain.scene", "--var", "x=" + "[" * 100_000],
        "Scene1 / scene1": ["check", "case.scene"],
    }


def measure(args: list[str], cwd: Path) -> dict[str, object]:
    exe = shutil.which("scenecraft") or "scenecraft"
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", exe, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    code = re.search(r"(?:error|warning)\[([a-z0-9-]+)\]", proc.stderr)
    status = re.search(r"Exit status: (\d+)", proc.stderr)
    # CPU time as well as wall time: on a shared, loaded machine wall time is several times CPU
    cpu = re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", proc.stderr)
    return {
        "exit": int(status.group(1)) if status else proc.returncode,
        "code": code.group(1) if code else None,
        "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
        "wall_s": round(wall, 2),
        "cpu_s": round(sum(map(float, cpu)), 2),
    }


def main() -> int:
    if not Path("/usr/bin/time").exists():
        print("needs GNU time: apt-get install time", file=sys.stderr)
        return 1
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, args in {**write_inputs(d), **write_render_inputs(d)}.items():
            rows[name] = measure(args, d)
            r = rows[name]
            print(
                f"{name:45s} exit {r['exit']}  {str(r['code']):18s} "
                f"{r['peak_rss_mb']:>8} MB  {r['wall_s']:>6} s",
                flush=True,
            )
    ok = all(
        r["exit"] in (0, 2)
        and isinstance(r["peak_rss_mb"], float)
        and r["peak_rss_mb"] < LIMIT_KB / 1024
        for r in rows.values()
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"limit_mb": LIMIT_KB // 1024, "all_ok": ok, "inputs": rows}, indent=2) + "\n"
    )
    print(f"all exit 0/2 and under 1 GiB: {ok}")
    return 0 if ok else 1


# ----------------------------------------------------------- issue 32: render, merge, review


def _render_scene(d: Path, name: str, model: str, lora: str, extra: str = "") -> Path:
    scene = d / name
    scene.parent.mkdir(parents=True, exist_ok=True)
    scene.write_text(
        f'model "{model}" family sd15\nconcept ziggy {{\n  token "<ZIGGY>"\n  lora "{lora}"\n}}\n'
        f"{extra or 'merge none'}\n"
        'defaults {\n  size 64x64\n  steps 2\n  sampler "DDIM"\n  seeds 1\n}\n'
        "scene s {\n  ziggy\n}\n",
        encoding="utf-8",
    )
    return scene


def _huge_png_with_chunk(path: Path, side: int) -> None:
    """Replace ``path`` (one of our PNGs) by a black ``side`` x ``side`` PNG that keeps its
    ``scenecraft`` chunk: a foreign picture the manifest still names."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    png, at, ours = path.read_bytes(), 8, b""
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        if png[at + 4 : at + 8] == b"iTXt" and png[at + 8 : at + 18] == b"scenecraft":
            ours = png[at : at + 12 + length]
        at += 12 + length
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b"\x00" * (side + 1)) for _ in range(side)) + z.flush()
    head = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        png[:8] + chunk(b"IHDR", head) + ours + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def write_render_inputs(d: Path) -> dict[str, list[str]]:
    """Issue 32's render/merge cases on the tiny model (set up here, measured by `main`):
    a LoRA with huge weights, a foreign 13,300x13,300 PNG under a manifest key, the same file
    name in two folders, a damaged base folder, `merge --json` after a damaged cache entry."""
    import shutil as sh

    from safetensors.torch import load_file, save_file

    from scenecraft.cli import main as cli
    from scenecraft.testing import save_tiny_pipeline, tiny_pipeline
    from tests._lora_files import lora_modules, write_peft_lora

    tiny = save_tiny_pipeline(d / "tiny")
    pipe = tiny_pipeline(0)
    write_peft_lora(d / "ok.safetensors", pipe, lora_modules(pipe), rank=4, seed=1, alpha=4.0)
    tensors = load_file(str(d / "ok.safetensors"))
    huge = {k: v * 1e15 if "lora_B" in k else v for k, v in tensors.items()}
    save_file(huge, str(d / "huge.safetensors"))
    _render_scene(d, "huge.scene", str(tiny), "huge.safetensors")
    # a foreign picture under the manifest's key: re-rendered, never decoded
    plain = _render_scene(d, "plain.scene", str(tiny), "ok.safetensors")
    cli(["render", str(plain), "--out", str(d / "out-foreign"), "--quiet"])
    _huge_png_with_chunk(d / "out-foreign" / "plain" / "s" / "1.png", 13_300)
    # one file name in two folders
    _render_scene(d, "a/story.scene", str(tiny), "../ok.safetensors")
    _render_scene(d, "b/story.scene", str(tiny), "../ok.safetensors")
    cli(["render", str(d / "a" / "story.scene"), "--out", str(d / "out-stem"), "--quiet"])
    # a damaged base folder
    sh.copytree(tiny, d / "damaged")
    weights = d / "damaged" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _render_scene(d, "damaged.scene", str(d / "damaged"), "ok.safetensors")
    # merge --json after a damaged cache entry
    merged = _render_scene(d, "merged.scene", str(tiny), "ok.safetensors", "merge linear")
    cli(["merge", str(merged), "--json", "--cache-dir", str(d / "cache")])
    for entry in (d / "cache").glob("*/weights.safetensors"):
        entry.write_bytes(entry.read_bytes()[:100])
    out = ["--quiet"]
    return {
        "render, LoRA up weights x1e15": [
            "render",
            "huge.scene",
            "--adapters",
            "--out",
            "o1",
            *out,
        ],
        "render, foreign 13,300^2 PNG under the key": [
            "render",
            "plain.scene",
            "--out",
            "out-foreign",
            *out,
        ],
        "render, same file name in another folder": [
            "render",
            "b/story.scene",
            "--out",
            "out-stem",
            *out,
        ],
        "render, damaged base folder": ["render", "damaged.scene", "--out", "o2", *out],
        "merge --json, damaged cache entry": [
            "merge",
            "merged.scene",
            "--json",
            "--cache-dir",
            "cache",
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
