"""Ray figures: the toy world rendered in process vs on 1 and 2 local Ray actors.

    pip install -e ".[ray]"
    PYTHONPATH=. python benchmarks/ray_bench.py [--images 24] [--steps 20] [--repeats 2]
        [--out benchmarks/results/ray_bench.json]

Each variant renders the same images (a two-concept LoRACLR merge, 64x64, DDIM, batches of 2)
into a fresh folder with a warm merge cache; runs alternate the variants and report medians.
Clocks are wall time (Ray's work happens in other processes), so on a shared machine the
neighbours' load is in the figures too: the load average is recorded with them.

Per run:
- ``total_s``: ``render(...)`` from call to return (Ray: starting the actors, loading the
  pipeline in each, building or fetching the merge, rendering, writing);
- ``steady_s_per_image``: seconds between the first and the last image written, divided by the
  images written after the first batch (the rate once every worker is busy);
- ``images_per_s``: images / total_s.
Ray runs also record, from `RayExecutor.stats`: ``worker_busy_s_per_image`` (inside a worker's
``render``: the pipeline call and PNG encoding, as in process), ``worker_idle_s_per_image``
(a ready worker's time not spent in ``render``: waiting for work and results to travel; with
one actor, this is Ray's overhead per image) and ``driver_s_per_image`` (the driver fetching
PNG bytes and writing them: the serial part, which caps a cluster at 1/driver s images/s).
Fixed cost = total_s - images x steady s/image (starting actors, loading, the merge).
Wall-clock differences between variants are noisy on a shared machine; the idle and driver
figures are measured within one run and are the ones to scale from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from scenecraft.events import Event, ImageWritten
from scenecraft.render.engine import render

SCENE = """\
model "{base}" family sd15

concept ziggy {{
  token "<ZIGGY>"
  class "circle"
  lora "{ziggy}"
}}

concept blip {{
  token "<BLIP>"
  class "square"
  lora "{blip}"
}}

merge loraclr

defaults {{
  size 64x64
  steps {steps}
  guidance 4
  sampler "DDIM"
  seeds 1..{seeds}
  batch_size 2
}}

scene ziggy-on-grass {{
  setting "on grass"
  ziggy
}}

scene blip-at-sea {{
  setting "at sea"
  blip
}}

scene pair {{
  setting "in the desert"
  ziggy left of blip
}}
"""


class Clock:
    """A reporter that notes when each image was written."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, ImageWritten):
            self.times.append(time.perf_counter())


def one_run(plan: Any, cache: Path, actors: int | None, batch: int) -> dict[str, float]:
    from scenecraft.render.ray_executor import RayExecutor

    executor = RayExecutor(actors=actors) if actors else None
    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = render(plan, out, cache_dir=cache, executor=executor, reporter=clock)
        total = time.perf_counter() - start
    n = len(result.written)
    steady = (clock.times[-1] - clock.times[0]) / max(1, n - batch)
    row = {"total_s": total, "steady_s_per_image": steady, "images_per_s": n / total}
    if executor is not None:
        st = executor.stats
        row["worker_busy_s_per_image"] = st["worker_busy_s"] / n
        row["worker_idle_s_per_image"] = (st["worker_s"] - st["worker_busy_s"]) / n
        row["driver_s_per_image"] = st["driver_s"] / n
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="a multiple of 3")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/ray_bench.json")
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to 127.0.0.1
    import ray

    from scenecraft.api import load
    from scenecraft.toyworld import BASE_DIR, lora_path

    torch.set_num_threads(1)  # in process as in each one-CPU actor
    work = Path(tempfile.mkdtemp(prefix="scenecraft-ray-bench-"))
    scene = work / "bench.scene"
    text = SCENE.format(
        base=BASE_DIR,
        ziggy=lora_path("ziggy"),
        blip=lora_path("blip"),
        steps=args.steps,
        seeds=max(1, args.images // 3),
    )
    scene.write_text(text, encoding="utf-8")
    plan = load(scene, allow_missing=False).plan
    cache = work / "cache"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        one_run(plan, cache, None, 2)  # warm: the merge cache, the page cache, imports
        variants = {"in_process": None, "ray_1_actor": 1, "ray_2_actors": 2}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for name, actors in variants.items():
                runs[name].append(one_run(plan, cache, actors, 2))
                print(name, {k: round(v, 3) for k, v in runs[name][-1].items()}, flush=True)
        load_after = os.getloadavg()
    finally:
        ray.shutdown()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    figures = {name: {key: median(name, key) for key in runs[name][0]} for name in variants}
    images = len(plan.jobs)
    inproc, one, two = (figures[k] for k in variants)
    summary = {
        "ray_overhead_s_per_image": one["worker_idle_s_per_image"],
        "driver_s_per_image": statistics.median(
            [one["driver_s_per_image"], two["driver_s_per_image"]]
        ),
        "steady_ratio_1_actor_vs_in_process": one["steady_s_per_image"]
        / inproc["steady_s_per_image"],
        "ray_fixed_s_1_actor": one["total_s"] - images * one["steady_s_per_image"],
        "ray_fixed_s_2_actors": two["total_s"] - images * two["steady_s_per_image"],
        "steady_speedup_2_actors_vs_in_process": inproc["steady_s_per_image"]
        / two["steady_s_per_image"],
        "total_speedup_2_actors_vs_in_process": inproc["total_s"] / two["total_s"],
        "in_process_fixed_s": inproc["total_s"] - images * inproc["steady_s_per_image"],
    }
    result = {
        "images": images,
        "steps": args.steps,
        "size": "64x64",
        "batch_size": 2,
        "repeats": args.repeats,
        "figures": figures,
        "summary": summary,
        "runs": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"figures": figures, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
