"""Merge-method benchmark on SD 1.5- or SDXL-shaped layers with random weights and synthetic features.

Layers (SD 1.5 shapes): the text encoder's 12 blocks (q/k/v/out 768→768, fc1 768→3072,
fc2 3072→768) and the UNet's 16 cross-attention blocks' to_k / to_v (768 → 320/640/1280).
Per concept: a random rank-16 LoRA on every layer and synthetic features with overlapping
input distributions (`scenecraft.merge.synthetic`), ragged row counts (text: ~28 rows per
concept and layer, like 4 prompts × 7 tokens; K/V: ~8 token rows). Every method sees the SAME
W0, ΔW_c and X_c; the reference LoRACLR recipe runs beside ours.

For C in {2, 4, 8, 12} × method: wall time of the merge (solve only), peak RSS growth during it,
mean / worst fidelity error e_c and separation s_c over all layers and concepts. By default a
few layers of every shape group are run (synthetic layers are i.i.d.) and the time is also
scaled to SD 1.5's full layer count (``full est``); ``--all-layers`` runs all of them.

``--family sdxl``: SDXL's layers instead — CLIP ViT-L (768) and OpenCLIP bigG (1280, 32 blocks)
text encoders, text_encoder_2's projection (one pooled row per prompt), and the UNet's 70
transformer blocks' to_k / to_v reading the 2048-wide context (640 channels: 2 + 3 attentions ×
2 blocks; 1280: 2 + 3 attentions × 10 blocks, the mid block's 10); the time is scaled to all
405 SDXL text/K/V layers. Results go to ``merge_bench_sdxl.json``.

    python benchmarks/merge_bench.py [--quick] [--out benchmarks/results/merge_bench.json]
    python benchmarks/merge_bench.py --family sdxl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenecraft.merge.config import parse  # noqa: E402
from scenecraft.merge.methods import merge_batch  # noqa: E402
from scenecraft.merge.quality import batch_quality  # noqa: E402
from scenecraft.merge.synthetic import conflicting_layers  # noqa: E402

# (stage, out, in, number of layers in SD 1.5)
SD15_GROUPS = [
    ("text-encoder", 768, 768, 48),  # q, k, v, out_proj × 12 layers
    ("text-encoder", 3072, 768, 12),  # fc1
    ("text-encoder", 768, 3072, 12),  # fc2
    ("cross-attention", 320, 768, 10),  # to_k / to_v of 5 blocks at 320 channels
    ("cross-attention", 640, 768, 10),  # … 5 blocks at 640
    ("cross-attention", 1280, 768, 12),  # … 6 blocks at 1280 (incl. the mid block)
]
# (stage, out, in, number of layers in SDXL)
SDXL_GROUPS = [
    ("text-encoder", 768, 768, 48),  # CLIP ViT-L: q, k, v, out_proj × 12 layers
    ("text-encoder", 3072, 768, 12),  # fc1
    ("text-encoder", 768, 3072, 12),  # fc2
    ("text-encoder-2", 1280, 1280, 128),  # OpenCLIP bigG: q, k, v, out_proj × 32 layers
    ("text-encoder-2", 5120, 1280, 32),  # fc1
    ("text-encoder-2", 1280, 5120, 32),  # fc2
    ("pooled", 1280, 1280, 1),  # text_encoder_2.text_projection: one pooled row per prompt
    ("cross-attention", 640, 2048, 20),  # to_k / to_v of 10 transformer blocks at 640 channels
    ("cross-attention", 1280, 2048, 120),  # … of 60 blocks at 1280 (10-deep, incl. mid block)
]
GROUPS = {"sd15": SD15_GROUPS, "sdxl": SDXL_GROUPS}
# layers actually run per group (synthetic layers are i.i.d.; times are scaled to the full count)
SAMPLED = {
    ("sd15", "default"): (3, 1, 1, 2, 2, 2),
    ("sd15", "quick"): (2, 1, 1, 1, 1, 1),
    ("sdxl", "default"): (2, 1, 1, 2, 1, 1, 1, 2, 2),
    ("sdxl", "quick"): (1, 1, 1, 1, 1, 1, 1, 1, 1),
}
METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("linear", "linear", {}),
    ("average", "average", {}),
    ("ties", "ties", {"density": 0.5}),
    ("dare", "dare", {"density": 0.5}),
    ("magnitude-prune", "magnitude-prune", {"density": 0.5}),
    # ridge 1e-6: plain least squares (Mix-of-Show, the reference); the default ridge is 1e-2
    ("gradient-fusion ridge 1e-6", "gradient-fusion", {"ridge": 1e-6}),
    ("gradient-fusion", "gradient-fusion", {}),
    ("loraclr ridge 1e-6", "loraclr", {"ridge": 1e-6}),
    ("loraclr", "loraclr", {}),
    ("loraclr-reference", "loraclr", {"recipe": "reference"}),
]
# SDXL by default leaves out the ridge 1e-6 variants (the SD 1.5 rows show they change < 0.002)
# and the two slowest (magnitude-prune and the reference recipe: 53 s and 121 s of a 389 s
# 12-concept run on this CPU); `--methods` names the ones to run
SDXL_SKIP = (
    "gradient-fusion ridge 1e-6",
    "loraclr ridge 1e-6",
    "magnitude-prune",
    "loraclr-reference",
)
# rows per concept and layer (± ragged): 4 prompts × ~7 tokens in the text encoders, one pooled
# row per prompt, ~8 concept-token + end rows at K/V
ROWS = {"text-encoder": 28, "text-encoder-2": 28, "pooled": 4, "cross-attention": 8}
SHARED = {"text-encoder": 10, "text-encoder-2": 10, "pooled": 0, "cross-attention": 0}


class PeakRSS:
    """Peak resident memory growth over a block, sampled every 2 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> PeakRSS:
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _chunks(n_layers: int, concepts: int, n_out: int, n_in: int, budget: int) -> list[int]:
    size = max(1, budget // (concepts * n_out * n_in))
    return [min(size, n_layers - i) for i in range(0, n_layers, size)]


def run(
    concept_counts: list[int],
    sampled: tuple[int, ...],
    budget: int,
    groups: list[tuple[str, int, int, int]] = SD15_GROUPS,
    methods: list[tuple[str, str, dict[str, Any]]] = METHODS,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for C in concept_counts:
        acc: dict[str, dict[str, Any]] = {
            label: {
                "seconds": 0.0,
                "seconds_full": 0.0,
                "peak_mb": 0.0,
                "e": [],
                "s": [],
                "repel": [],
                "stage_e": {},
                "concept_e": [[] for _ in range(C)],
            }
            for label, _, _ in methods
        }
        for g_index, (stage, n_out, n_in, n_full) in enumerate(groups):
            n_layers = sampled[g_index]
            for k_index, L in enumerate(_chunks(n_layers, C, n_out, n_in, budget)):
                base_rows = ROWS[stage]
                rows = tuple(max(1, base_rows - 2 + (c % 5)) for c in range(C))  # ragged
                sy = conflicting_layers(
                    n_out,
                    n_in,
                    C,
                    layers=L,
                    rank=16,
                    rows=rows,
                    seed=1000 * g_index + k_index,
                    shared_rows=SHARED[stage],
                )
                for label, method, params in methods:
                    feats = sy.X if method in ("gradient-fusion", "loraclr") else None
                    with PeakRSS() as mem:
                        t0 = time.perf_counter()
                        W, stats = merge_batch(parse(method, params), sy.W0, sy.deltas, feats)
                        seconds = time.perf_counter() - t0
                    e, s = batch_quality(W, sy.W0, sy.deltas, sy.X)
                    a = acc[label]
                    a["seconds"] += seconds
                    a["seconds_full"] += seconds * n_full / n_layers
                    a["peak_mb"] = max(a["peak_mb"], mem.growth_mb)
                    a["e"] += e.flatten().tolist()
                    a["s"] += s.flatten().tolist()
                    a["stage_e"].setdefault(stage, []).extend(e.flatten().tolist())
                    for c in range(C):
                        a["concept_e"][c] += e[:, c].tolist()
                    a["repel"] += [st["repel_active"] for st in stats if "repel_active" in st]
                del sy
        results[str(C)] = {label: _summary(a) for label, a in acc.items()}
        _ahead_of_linear(results[str(C)])
        _print_table(C, results[str(C)])
    return results


def _ahead_of_linear(rows: dict[str, dict[str, Any]]) -> None:
    """Per method: is its mean fidelity error lower than linear's for EVERY concept?"""
    linear = rows["linear"]["fidelity_per_concept"]
    for r in rows.values():
        r["ahead_of_linear_every_concept"] = all(
            ours < base for ours, base in zip(r["fidelity_per_concept"], linear, strict=True)
        )


def _summary(a: dict[str, Any]) -> dict[str, Any]:
    e, s = a["e"], a["s"]
    out = {
        "seconds": round(a["seconds"], 3),
        "seconds_all_layers_est": round(a["seconds_full"], 1),
        "peak_rss_growth_mb": round(a["peak_mb"], 1),
        "fidelity_mean": sum(e) / len(e),
        "fidelity_worst": max(e),
        "separation_mean": sum(s) / len(s),
        "separation_worst": max(s),
        "fidelity_by_stage": {
            stage: {"mean": sum(v) / len(v), "worst": max(v)} for stage, v in a["stage_e"].items()
        },
        "fidelity_per_concept": [sum(v) / len(v) for v in a["concept_e"]],
    }
    if a["repel"]:
        out["repel_active"] = sum(a["repel"]) / len(a["repel"])
    return out


def _print_table(C: int, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{C} concepts")
    print(
        f"{'method':<18} {'time s':>7} {'full est':>8} {'peak MB':>7} {'e mean':>7} {'e worst':>7} "
        f"{'s mean':>7} {'s worst':>7} {'repel':>6} {'>linear':>7}"
    )
    for label, r in rows.items():
        repel = f"{r['repel_active']:.2f}" if "repel_active" in r else "-"
        print(
            f"{label:<18} {r['seconds']:>7.2f} {r['seconds_all_layers_est']:>8.1f} "
            f"{r['peak_rss_growth_mb']:>7.0f} "
            f"{r['fidelity_mean']:>7.3f} {r['fidelity_worst']:>7.3f} "
            f"{r['separation_mean']:>7.3f} {r['separation_worst']:>7.3f} {repel:>6} "
            f"{'all' if r['ahead_of_linear_every_concept'] else 'no':>7}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer layers, 2 and 4 concepts")
    parser.add_argument("--family", choices=sorted(GROUPS), default="sd15", help="layer shapes")
    parser.add_argument(
        "--all-layers", action="store_true", help="run every layer (slow: tens of minutes)"
    )
    parser.add_argument(
        "--concepts", type=int, nargs="*", help="concept counts (default 2 4 8 12; SDXL 2 4 12)"
    )
    parser.add_argument(
        "--methods", nargs="*", choices=[m[0] for m in METHODS], help="method rows to run"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is faster on a busy 2-core machine)",
    )
    parser.add_argument("--budget", type=int, default=2**26, help="C·L·out·in per solve batch")
    parser.add_argument("--out", help="default benchmarks/results/merge_bench[_sdxl].json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sdxl = args.family == "sdxl"
    counts = args.concepts or ([2, 4] if args.quick else [2, 4, 12] if sdxl else [2, 4, 8, 12])
    groups = GROUPS[args.family]
    methods = [m for m in METHODS if not sdxl or m[0] not in SDXL_SKIP]
    if args.methods:
        methods = [m for m in METHODS if m[0] in args.methods or m[0] == "linear"]
    if args.all_layers:
        sampled = tuple(g[3] for g in groups)
    else:
        # SDXL: one layer per group (its bigG fc1/fc2 are 6.5 M weights each)
        sampled = SAMPLED[(args.family, "quick" if args.quick or sdxl else "default")]
    suffix = "" if args.family == "sd15" else f"_{args.family}"
    args.out = args.out or f"benchmarks/results/merge_bench{suffix}.json"
    start = time.perf_counter()
    results = run(counts, sampled, args.budget, groups, methods)
    if args.family == "sd15":  # the key earlier SD 1.5 results used
        for rows in results.values():
            for r in rows.values():
                r["seconds_all_sd15_layers_est"] = r["seconds_all_layers_est"]
    report = {
        "benchmark": "merge_bench",
        "family": args.family,
        "quick": args.quick,
        "groups": [
            {"stage": g[0], "out": g[1], "in": g[2], f"layers_{args.family}": g[3], "layers_run": n}
            for g, n in zip(groups, sampled, strict=True)
        ],
        "rows_per_concept": ROWS,
        "shared_rows": SHARED,
        "rank": 16,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.platform(),
        "load_average": os.getloadavg(),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out} ({report['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
