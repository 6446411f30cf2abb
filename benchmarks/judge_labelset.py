"""Render the judge's labelled validation set: the toy model's own pictures, deterministically.

The pictures a judge must read are the model's, not the world's: sprites a cell too wide, hats
drawn darker than the world's hat colour, stripes faint on a light backdrop, stacked sprites
that touch. This script renders 27 cases (1 to 4 concepts, every backdrop, hats and crowns,
"on top of" / "beside" / "left of") with four models — each concept's own LoRA (in pictures
with regions: each own LoRA confined to its region, as `render --adapters` with regions on),
and the loraclr (default), linear and ties merges of the case's cast — on three seeds (7000 and
7001: the fitting part; 7002: held out, never looked at while the judge was fixed). 324
pictures in all, through scenecraft's own plan path (`toyworld_eval.render_case`: the cases
compiled from a scene file; pictures of several concepts with regions on).

Writes ``tests/data/judge_validation/`` — ``NNN.png`` per picture and ``manifest.json``: for
each picture its index, case, method, seed, prompt, region prompts and boxes, the concepts it
asks for, and a short hash of the PNG's pixels (to see drift when re-rendered). The labels,
written by eye from contact sheets (``--sheets DIR``), are ``labels.json`` beside them.

    python benchmarks/judge_labelset.py [--out tests/data/judge_validation] [--sheets /tmp/sheets]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))

from toyworld_eval import (  # noqa: E402
    Case,
    adapters_pipe,
    compiled_jobs,
    confined,
    merged_pipe,
    own_pipe,
    render_case,
)

from scenecraft.files import atomic_write_text  # noqa: E402
from scenecraft.toyworld import expected_scene  # noqa: E402

FOUR = ("lulu", "blip", "kiki", "momo")
CAST = ("ziggy", "zaza", "blip", "kiki")  # two circles of one colour; ziggy and kiki both striped
SEEDS = (7000, 7001, 7002)
HELD_OUT = (7002,)
METHODS = ("own", "loraclr", "linear", "ties")
OUT = Path("tests/data/judge_validation")

# (label, concepts, placements, attributes, setting, merged cast)
SPECS: tuple[
    tuple[str, list[str], list[tuple[str, str, str]], dict[str, str], str | None, tuple[str, ...]],
    ...,
] = (
    ("lulu grass", ["lulu"], [], {}, "on grass", FOUR),
    ("blip sea", ["blip"], [], {}, "at sea", FOUR),
    ("kiki desert", ["kiki"], [], {}, "in the desert", FOUR),
    ("momo night", ["momo"], [], {}, "under a night sky", FOUR),
    ("blip hat desert", ["blip"], [], {"blip": "a hat"}, "in the desert", FOUR),
    ("lulu crown shelf", ["lulu"], [], {"lulu": "a crown"}, "on a shelf", FOUR),
    ("kiki hat night", ["kiki"], [], {"kiki": "a hat"}, "under a night sky", FOUR),
    ("momo crown plain", ["momo"], [], {"momo": "a crown"}, None, FOUR),
    ("blip crown night", ["blip"], [], {"blip": "a crown"}, "under a night sky", FOUR),
    ("lulu on blip sea", ["lulu", "blip"], [("lulu", "on-top-of", "blip")], {}, "at sea", FOUR),
    ("kiki beside momo", ["kiki", "momo"], [("kiki", "beside", "momo")], {}, "in the desert", FOUR),
    ("momo on kiki grass", ["momo", "kiki"], [("momo", "on-top-of", "kiki")], {}, "on grass", FOUR),
    (
        "blip left kiki shelf",
        ["blip", "kiki"],
        [("blip", "left-of", "kiki")],
        {},
        "on a shelf",
        FOUR,
    ),
    (
        "3a desert",
        ["lulu", "blip", "kiki"],
        [("lulu", "left-of", "blip")],
        {},
        "in the desert",
        FOUR,
    ),
    (
        "3b plain",
        ["kiki", "momo", "blip"],
        [("kiki", "right-of", "momo")],
        {"blip": "a hat"},
        None,
        FOUR,
    ),
    (
        "4a sea",
        list(FOUR),
        [("lulu", "left-of", "blip"), ("kiki", "on-top-of", "momo")],
        {},
        "at sea",
        FOUR,
    ),
    ("ziggy desert", ["ziggy"], [], {}, "in the desert", CAST),
    ("zaza sea", ["zaza"], [], {}, "at sea", CAST),
    ("zaza desert", ["zaza"], [], {}, "in the desert", CAST),
    ("ziggy night", ["ziggy"], [], {}, "under a night sky", CAST),
    ("ziggy hat grass", ["ziggy"], [], {"ziggy": "a hat"}, "on grass", CAST),
    ("zaza crown desert", ["zaza"], [], {"zaza": "a crown"}, "in the desert", CAST),
    ("zaza hat shelf", ["zaza"], [], {"zaza": "a hat"}, "on a shelf", CAST),
    (
        "ziggy on blip grass",
        ["ziggy", "blip"],
        [("ziggy", "on-top-of", "blip")],
        {},
        "on grass",
        CAST,
    ),
    ("zaza beside kiki sea", ["zaza", "kiki"], [("zaza", "beside", "kiki")], {}, "at sea", CAST),
    (
        "ziggy left zaza desert",
        ["ziggy", "zaza"],
        [("ziggy", "left-of", "zaza")],
        {},
        "in the desert",
        CAST,
    ),
    ("cast shelf", list(CAST), [("ziggy", "left-of", "zaza")], {}, "on a shelf", CAST),
)


def label_cases() -> list[Case]:
    return [
        Case(label, expected_scene(names, places, attrs, setting), cast)
        for label, names, places, attrs, setting, cast in SPECS
    ]


def pixel_hash(image: Image.Image) -> str:
    """A short hash of an image's RGB pixels (not of the PNG bytes, which encoders may vary)."""
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()[:16]


def model(method: str, case: Case, cache: Path) -> tuple[Any, Any]:
    """(pipeline, confined adapters or None) that draws ``case`` for ``method``."""
    if method == "own":
        if case.count == 1:
            return own_pipe(case.scene.sprites[0].name)[0], None
        return adapters_pipe(case.merged)[0], confined(case.merged)
    return merged_pipe(method, {}, case.merged, cache)[0], None


def render_all(out: Path) -> list[dict[str, Any]]:
    """Render every case with every method and seed into ``out``; the manifest entries."""
    chosen = label_cases()
    jobs = {mode: compiled_jobs(chosen, list(SEEDS), mode) for mode in ("off", "on")}
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    pipes: dict[tuple[str, ...], tuple[Any, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            for i, case in enumerate(chosen):
                single = case.count == 1
                key = (method, case.scene.sprites[0].name if single else "", *case.merged)
                if method != "own":
                    key = (method, *case.merged)
                if key not in pipes:
                    pipes[key] = model(method, case, Path(tmp))
                pipe, adapters = pipes[key]
                case_jobs = jobs["off" if single else "on"][i]
                for job, image in zip(
                    case_jobs, render_case(pipe, case_jobs, adapters), strict=True
                ):
                    index = len(entries)
                    image.save(out / f"{index:03d}.png")
                    entries.append(entry(index, case, method, job, image))
            pipes.clear()  # one method's pipelines at a time
            print(method, "done", flush=True)
    return entries


def entry(index: int, case: Case, method: str, job: Any, image: Image.Image) -> dict[str, Any]:
    return {
        "index": index,
        "file": f"{index:03d}.png",
        "case": case.label,
        "method": method if method != "own" or case.count == 1 else "own confined",
        "merged": list(case.merged) if method != "own" else [],
        "seed": job.seed,
        "held_out": job.seed in HELD_OUT,
        "concepts": [s.name for s in case.scene.sprites],
        "attributes": {
            s.name: s.sprite.attribute for s in case.scene.sprites if s.sprite.attribute
        },
        "placements": [[p.subject, p.relation, p.target] for p in case.scene.placements],
        "setting": case.scene.setting,
        "prompt": job.prompt,
        "regions": [
            {"subject": r.subject, "prompt": r.prompt, "box": list(r.box)} for r in job.regions
        ],
        "pixel_hash": pixel_hash(image),
    }


def sheets(folder: Path, dest: Path, indices: list[int], per: int = 20, scale: int = 4) -> None:
    """Contact sheets of ``indices``: ``per`` pictures each (5 across), upscaled ``scale``x
    nearest-neighbour, each tile captioned with its index only (no prompt: labels by eye)."""
    dest.mkdir(parents=True, exist_ok=True)
    tile, cols, pad = 64 * scale, 5, 18
    for start in range(0, len(indices), per):
        chunk = indices[start : start + per]
        rows = (len(chunk) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * (tile + 6), rows * (tile + pad)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, index in enumerate(chunk):
            x, y = (k % cols) * (tile + 6), (k // cols) * (tile + pad)
            im = Image.open(folder / f"{index:03d}.png").convert("RGB")
            sheet.paste(im.resize((tile, tile), Image.Resampling.NEAREST), (x, y + pad))
            draw.text((x + 2, y + 3), f"#{index}", fill=(0, 0, 0))
        sheet.save(dest / f"sheet_{start // per:02d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sheets", type=Path, help="also write contact sheets here")
    parser.add_argument("--no-render", action="store_true", help="sheets of the pictures in --out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.no_render:
        entries = render_all(args.out)
        manifest = {
            "about": "the judge's validation pictures (benchmarks/judge_labelset.py); "
            "labels.json holds what each shows, labelled by eye",
            "seeds": list(SEEDS),
            "held_out_seeds": list(HELD_OUT),
            "pictures": entries,
        }
        atomic_write_text(args.out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    if args.sheets:
        n = len(json.loads((args.out / "manifest.json").read_text())["pictures"])
        sheets(args.out, args.sheets, list(range(n)))


if __name__ == "__main__":
    main()
