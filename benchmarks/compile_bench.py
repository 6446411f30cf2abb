"""Scene-language compile speed: parse + check + compile of generated scene files.

Two cases:
- ``files``: 200 generated scene files of 5 scenes each, sharing one included concept library,
  each loaded with `scenecraft.api.load` (read, parse, check, compile); reported as files/s,
  with the time split by phase.
- ``template``: one Jinja template whose loops expand to 1,000 scenes (10 people x 10 places x
  10 lights), rendered and compiled in one `load`; the target is under 1 s.

    PYTHONPATH=. python benchmarks/compile_bench.py [--files 200] [--repeat 3]

Prints a table and writes benchmarks/results/compile_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scenecraft.api import load
from scenecraft.language.check import check
from scenecraft.language.compiler import compile_plan
from scenecraft.language.loader import load_program

RESULTS = Path(__file__).parent / "results" / "compile_bench.json"
PEOPLE = ["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo"]
VERBS = ["waves at", "talks to", "hugs", "meets", "stands beside", "walks with"]
RELATIONS = ["left of", "right of", "in front of", "behind", "next to"]


def library() -> str:
    """The shared include: model, defaults and ten concepts."""
    out = ['model "runwayml/stable-diffusion-v1-5" family sd15', ""]
    out += ["defaults {", "  size 512x512", "  steps 30", '  sampler "Euler a"', "  seeds 1..4"]
    out += ["}", ""]
    for i, name in enumerate(PEOPLE):
        out += [f"concept {name} {{", f'  token "<P{i}>"', '  class "person"', "  weight 0.9"]
        out += ["}", ""]
    return "\n".join(out)


def scene_file(rng: random.Random, index: int) -> str:
    """One file of five scenes using every statement form."""
    out = ['include "lib.scene"', "", "merge loraclr {", "  margin 0.5", "}", ""]
    for s in range(5):
        a, b, c = rng.sample(PEOPLE, 3)
        out += [
            f"scene f{index}-s{s} {{",
            f'  {a} wears "a red coat" holding "a lantern" {rng.choice(VERBS)} {b} and {c}',
            f"  {b} {rng.choice(RELATIONS)} {c}",
            '  object lamp "a brass lamp"',
            f"  lamp behind {a}",
            f'  setting "a room number {rng.randint(1, 999)}"',
            '  lighting "at dusk"',
            f"  seeds {rng.randint(1, 50)}..{rng.randint(51, 60)}",
            "}",
            "",
        ]
    return "\n".join(out)


TEMPLATE = """{# 10 x 10 x 10 = 1,000 scenes #}
include "lib.scene"

{% for who in people %}
{% set friend = people[loop.index % 10] %}
{% for place in places %}
{% for light in lights %}
scene {{ who }}-{{ loop.index }}-{{ place | replace(" ", "-") }} {
  {{ who }} wears {{ outfit | tojson }} waves at {{ friend }}
  setting {{ place | tojson }}
  lighting {{ light | tojson }}
}
{% endfor %}
{% endfor %}
{% endfor %}
"""


def template_vars() -> dict[str, Any]:
    return {
        "people": PEOPLE,
        "places": [f"place {i}" for i in range(10)],
        "lights": [f"light {i}" for i in range(10)],
        "outfit": "a denim jacket",
    }


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_files(folder: Path, n_files: int, repeat: int) -> dict[str, Any]:
    rng = random.Random(0)
    (folder / "lib.scene").write_text(library(), encoding="utf-8")
    paths = []
    for i in range(n_files):
        path = folder / f"f{i:03d}.scene"
        path.write_text(scene_file(rng, i), encoding="utf-8")
        paths.append(path)
    load(paths[0])  # warm the grammar cache

    def all_files() -> int:
        return sum(len(load(p).plan.jobs) for p in paths)

    seconds, jobs = timed(all_files, repeat)
    phases = {"read+parse": 0.0, "check": 0.0, "compile": 0.0}
    for p in paths:
        t0 = time.perf_counter()
        program = load_program(p)
        t1 = time.perf_counter()
        checked = check(program)
        t2 = time.perf_counter()
        compile_plan(checked, source_text=program.sources[str(p)].scene_text)
        t3 = time.perf_counter()
        phases["read+parse"] += t1 - t0
        phases["check"] += t2 - t1
        phases["compile"] += t3 - t2
    return {
        "files": n_files,
        "scenes": n_files * 5,
        "jobs": jobs,
        "seconds": seconds,
        "files_per_s": n_files / seconds,
        "ms_per_file": 1000 * seconds / n_files,
        "phase_seconds": phases,
    }


def bench_template(folder: Path, repeat: int) -> dict[str, Any]:
    path = folder / "variants.scene.j2"
    path.write_text(TEMPLATE, encoding="utf-8")
    variables = template_vars()
    seconds, loaded = timed(lambda: load(path, variables), repeat)
    scenes = len({j.scene for j in loaded.plan.jobs})
    return {
        "scenes": scenes,
        "jobs": len(loaded.plan.jobs),
        "seconds": seconds,
        "target_seconds": 1.0,
        "under_target": seconds < 1.0,
    }


def write_json(data: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, RESULTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=200, help="generated scene files")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = bench_files(Path(tmp), args.files, args.repeat)
        template = bench_template(Path(tmp), args.repeat)
    data = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "files": files,
        "template": template,
    }
    write_json(data)
    rows = [
        ("files: parse+check+compile", f"{files['files']} files, {files['scenes']} scenes",
         f"{files['seconds']:.3f} s", f"{files['files_per_s']:.0f} files/s"),
        ("  of which read+parse", "", f"{files['phase_seconds']['read+parse']:.3f} s", ""),
        ("  of which check", "", f"{files['phase_seconds']['check']:.3f} s", ""),
        ("  of which compile", "", f"{files['phase_seconds']['compile']:.3f} s", ""),
        ("template: 1,000 variants", f"{template['scenes']} scenes, {template['jobs']} jobs",
         f"{template['seconds']:.3f} s", "target < 1 s: " + ("yes" if template["under_target"] else "NO")),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
