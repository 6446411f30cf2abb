"""Start-up cost of the light commands: wall time of ``scenecraft check / compile / fmt`` on a
typical file, each a fresh process, against ``python -c pass`` (the interpreter's own floor).

The language commands must never import torch (tests/test_cli_imports.py); this prints what
that buys. The goal is under 0.3 s above the floor for a typical file.

    PYTHONPATH=. python benchmarks/cli_startup.py [--repeat 7] [--file scenes/toyworld.scene]

Prints a table (median of --repeat runs) and writes benchmarks/results/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scenecraft.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cli_startup.json"
GOAL_S = 0.3


def wall(argv: list[str], repeat: int) -> float:
    """Median wall seconds of ``argv`` as a fresh process (one untimed warm-up run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for k in range(repeat + 1):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()[-2000:]}")
        if k:
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--file", default="scenes/toyworld.scene")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "scenecraft.cli"]
    lines = sum(1 for _ in (ROOT / args.file).open(encoding="utf-8"))
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "check": [*cli, "check", args.file],
        "compile --json": [*cli, "compile", "--json", args.file],
        "compile": [*cli, "compile", args.file],
        "fmt --check": [*cli, "fmt", "--check", args.file],
        "import torch (reference)": [sys.executable, "-c", "import torch"],
    }
    seconds = {name: wall(argv, args.repeat) for name, argv in cases.items()}
    floor = seconds["python -c pass"]
    print(f"{args.file} ({lines} lines), median of {args.repeat} runs")
    print(f"{'command':<26} {'wall s':>8} {'above floor s':>14}")
    for name, s in seconds.items():
        print(f"{name:<26} {s:8.3f} {s - floor:14.3f}")
    light = ("check", "compile --json", "compile", "fmt --check")
    worst = max(seconds[n] - floor for n in light)
    print(f"worst light command: {worst:.3f} s above the floor (goal < {GOAL_S} s)")
    atomic_write_text(
        RESULTS,
        json.dumps(
            {
                "file": args.file,
                "lines": lines,
                "repeat": args.repeat,
                "seconds": {k: round(v, 4) for k, v in seconds.items()},
                "above_floor": {k: round(v - floor, 4) for k, v in seconds.items()},
                "worst_light_above_floor": round(worst, 4),
                "goal_s": GOAL_S,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
        + "\n",
    )


if __name__ == "__main__":
    main()
