"""Image-level benchmark of merge methods on the embedded toy world (world 2), judged exactly.

The paper's Table 1 in miniature: pictures with 1, 2, 3 and 4 concepts IN ONE IMAGE, each
rendered with >= 16 seeds, by every method, through scenecraft's own merge code, and scored per
concept by the toy-world judge (scenecraft.toyworld.judge):

- 1 concept: each of lulu, blip, kiki, momo alone, drawn by the 4-concept merge (the paper's
  single-concept check), next to each concept's OWN LoRA alone (the ceiling);
- 2, 3, 4 concepts: scenes of lulu, blip, kiki, momo (four classes) with placements
  ("<LULU> circle left of <BLIP> square, <KIKI> triangle on top of <MOMO> star, at sea"),
  each merged from exactly the concepts it holds (what the compiler does);
- the same-class row: the hard pair ziggy + zaza (two yellow circles that differ only in
  pattern) in one picture, reported on its own.

Methods: linear, ties, gradient-fusion, loraclr (scenecraft.merge), and runtime adapters
(diffusers set_adapters: what users do today; as `scenecraft render --adapters` draws them, each
picture with the adapters of the concepts it holds, so a concept alone is its own LoRA). Each
row gives per-concept Accuracy / Identity / Placement as mean ± std [min, max] over (image,
concept), merge seconds, render seconds per image, and the share of seed pairs of the same
prompt whose sprite boxes differ.

Every picture goes through scenecraft's own plan path: the cases are written as a scene file,
compiled (`scenecraft.load`), and each job rendered through the renderer's regional sampling
(`scenecraft.render.regions.regional`) — `render_case`. Regions: ``off`` (one global prompt),
``on`` (a region per concept: the scene with only that concept's identity), ``alone``
(Mix-of-Show's region prompts: the concept alone), and for runtime adapters ``confined`` (regions
on, each adapter confined to its concept's region). With regions, Placement is judged against the
concept's region box; single-concept pictures have no regions, so they are rendered once. The
``loraclr + scene prompts`` row merges once per regions setting, on the prompts a file of its
cases with that setting hands the merge (a concept alone: the regions-on file's merge).

    python benchmarks/toyworld_eval.py [--seeds 16] [--out benchmarks/results/toyworld_eval.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from scenecraft import load
from scenecraft.files import atomic_write_text
from scenecraft.merge.api import merge
from scenecraft.merge.apply import apply_merge
from scenecraft.merge.config import parse
from scenecraft.plan import BaseModelSpec, ConceptSpec, MergeSpec, RenderJob
from scenecraft.render.regions import Adapters, regional
from scenecraft.toyworld import (
    BASE_DIR,
    CONCEPTS,
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    ExpectedScene,
    expected_prompt,
    expected_scene,
    load_toyworld_pipeline,
    lora_path,
)
from scenecraft.toyworld.judge import Found, judge
from scenecraft.toyworld.world import VERSION

FOUR = ("lulu", "blip", "kiki", "momo")  # four classes: a four-concept picture without the pair
HARD_PAIR = ("ziggy", "zaza")
METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("linear", "linear", {}),
    ("ties", "ties", {}),
    ("gradient-fusion", "gradient-fusion", {}),
    ("loraclr", "loraclr", {}),
    ("loraclr + scene prompts", "loraclr", {}),  # merge `scene_prompts true`: SCENE_PROMPTS
)
SCENE_PROMPTS = "loraclr + scene prompts"  # the row whose merge also reads its rendered prompts
METRICS = ("accuracy", "identity", "placement")


@dataclass(frozen=True)
class Case:
    """One prompt: the scene to draw and the concepts merged for it."""

    label: str
    scene: ExpectedScene
    merged: tuple[str, ...]  # the concepts the model is merged from

    @property
    def count(self) -> int:
        return len(self.scene.sprites)


def cases() -> list[Case]:
    """The benchmark's prompts (two per concept count, one hard-pair prompt)."""
    out = [
        Case(f"{n} alone", expected_scene([n], setting=s), FOUR)
        for n, s in zip(FOUR, ("on grass", "at sea", None, "in the desert"), strict=True)
    ]
    out += [
        Case(
            "2a",
            expected_scene(["blip", "kiki"], [("blip", "left-of", "kiki")], setting="on grass"),
            ("blip", "kiki"),
        ),
        Case(
            "2b",
            expected_scene(["lulu", "momo"], [("lulu", "on-top-of", "momo")], setting="at sea"),
            ("lulu", "momo"),
        ),
        Case(
            "3a",
            expected_scene(
                ["lulu", "blip", "kiki"], [("lulu", "left-of", "blip")], setting="in the desert"
            ),
            ("lulu", "blip", "kiki"),
        ),
        Case(
            "3b",
            expected_scene(
                ["kiki", "momo", "blip"], [("kiki", "right-of", "momo")], {"blip": "a hat"}, None
            ),
            ("kiki", "momo", "blip"),
        ),
        Case(
            "4a",
            expected_scene(
                FOUR, [("lulu", "left-of", "blip"), ("kiki", "on-top-of", "momo")], setting="at sea"
            ),
            FOUR,
        ),
        Case(
            "4b",
            expected_scene(
                ["momo", "kiki", "lulu", "blip"], [("momo", "right-of", "kiki")], setting="on grass"
            ),
            FOUR,
        ),
        Case(
            "hard pair",
            expected_scene(list(HARD_PAIR), [("ziggy", "left-of", "zaza")], setting="on grass"),
            HARD_PAIR,
        ),
    ]
    return out


def scene_file(
    cases: Sequence[Case], seeds: Sequence[int], regions: str, merge: str = "merge none"
) -> str:
    """The cases as a scene file: one scene per case, every seed, compiled by scenecraft."""
    names = sorted({s.name for c in cases for s in c.scene.sprites})
    lines = [f'model "{BASE_DIR}" family sd15']
    for n in names:
        lines += [
            f"concept {n} {{",
            f'  token "{CONCEPTS[n].token}"',
            f'  class "{CONCEPTS[n].class_noun}"',
            f'  lora "{lora_path(n)}"',
            "}",
        ]
    lines += [merge, "defaults {", "  size 64x64", f"  regions {regions}"]
    lines += [f"  steps {DEFAULT_STEPS}", f"  guidance {DEFAULT_GUIDANCE}", "}"]
    for i, c in enumerate(cases):
        lines += [f"scene c{i} {{", f"  seeds {seeds[0]}..{seeds[-1]}"]
        if c.scene.setting:
            lines.append(f'  setting "{c.scene.setting}"')
        lines += [
            f"  {p.subject} {p.relation.replace('-', ' ')} {p.target}" for p in c.scene.placements
        ]
        placed = {x for p in c.scene.placements for x in (p.subject, p.target)}
        for s in c.scene.sprites:
            if s.sprite.attribute:
                lines.append(f'  {s.name} wears "{s.sprite.attribute}"')
            elif s.name not in placed:
                lines.append(f"  {s.name}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def compiled_jobs(
    cases: Sequence[Case], seeds: Sequence[int], regions: str
) -> list[list[RenderJob]]:
    """Per case, its compiled jobs in seed order (``regions``: on, alone or off)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.scene"
        path.write_text(scene_file(cases, seeds, regions))
        jobs = list(load(path).plan.jobs)
    out = [
        sorted((j for j in jobs if j.scene == f"c{i}"), key=lambda j: j.seed)
        for i in range(len(cases))
    ]
    assert all(len(js) == len(seeds) for js in out)
    if regions == "off":  # the compiler's prompt is exactly the world's caption
        for js, c in zip(out, cases, strict=True):
            assert all(j.prompt == expected_prompt(c.scene) for j in js), (js[0].prompt, c.label)
    return out


def render_case(
    pipe: Any, jobs: Sequence[RenderJob], adapters: Adapters | None = None
) -> list[Any]:
    """One 64x64 image per job of a case, in one batch, through the renderer's regional
    sampling when the jobs have regions (with ``adapters``: each confined to its region)."""
    with regional(pipe, jobs, adapters) as extra:
        out = pipe(
            **(extra or {"prompt": [j.prompt for j in jobs]}),
            height=64,
            width=64,
            num_inference_steps=DEFAULT_STEPS,
            guidance_scale=DEFAULT_GUIDANCE,
            generator=[torch.Generator().manual_seed(j.seed) for j in jobs],
        )
    return list(out.images)


def confined(names: tuple[str, ...]) -> Adapters:
    """Each concept's adapter confined to its own region (adapter name = concept name)."""
    return Adapters({n: (n, 1.0) for n in names})


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def boxes_differ(a: Sequence[Found], b: Sequence[Found], tolerance: int = 2) -> bool:
    """Whether two images' sprite boxes differ (count, or any box edge by > tolerance px)."""
    if len(a) != len(b):
        return True
    return any(
        max(abs(p - q) for p, q in zip(x.box, y.box, strict=True)) > tolerance
        for x, y in zip(a, b, strict=True)
    )


def toy_concepts(names: Sequence[str], lora_dir: Path | None = None) -> tuple[ConceptSpec, ...]:
    """The toy concepts ``names`` as a merge spec sees them (LoRAs from ``lora_dir`` if given)."""
    return tuple(
        ConceptSpec(
            name=n,
            tokens=(CONCEPTS[n].token,),
            lora=str(lora_dir / f"{n}.safetensors" if lora_dir else lora_path(n)),
            class_noun=CONCEPTS[n].class_noun,
        )
        for n in names
    )


def merged_pipe(
    method: str,
    params: dict[str, Any],
    names: tuple[str, ...],
    cache: Path,
    prompts: dict[str, tuple[str, ...]] | None = None,
    stages: dict[str, Any] | None = None,
    lora_dir: Path | None = None,
) -> tuple[Any, float, dict[str, Any]]:
    """The toy pipeline with ``names`` merged by ``method``; merge seconds; the merge's layer
    figures (what `scenecraft merge --json` shows). With ``prompts`` (concept -> the prompts it
    is rendered with) the merge is `scene_prompts true`, as the compiler hands it over;
    ``stages``: other stage parameters as a merge block resolves them (e.g. fallback);
    ``lora_dir``: LoRAs from there instead of the shipped ones."""
    pipe = load_toyworld_pipeline()
    concepts = toy_concepts(names, lora_dir)
    stages = dict(stages or {})
    if prompts is not None:
        concepts = tuple(
            c.model_copy(update={"prompts": prompts.get(c.name, ())}) for c in concepts
        )
        stages["scene_prompts"] = True
    spec = MergeSpec(
        base=BaseModelSpec(source=str(BASE_DIR)),
        concepts=concepts,
        params=parse(method, {**params, **stages}),
    )
    start = time.perf_counter()
    result = merge(spec, pipe, cache_dir=cache, force=True)
    seconds = time.perf_counter() - start
    apply_merge(pipe, result)
    return pipe, seconds, result.figures


def scene_prompts(
    cases: Sequence[Case], seeds: Sequence[int], regions: str = "on"
) -> dict[str, tuple[str, ...]]:
    """concept -> the prompts the compiler hands a `scene_prompts true` merge of a file holding
    exactly these cases with `regions` on, alone or off (off: each scene's one prompt)."""
    merge = "merge loraclr {\n  scene_prompts true\n}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cases.scene"
        path.write_text(scene_file(cases, seeds, regions, merge))
        return {c.name: c.prompts for c in load(path).plan.merge.concepts}


def adapters_pipe(names: tuple[str, ...]) -> tuple[Any, float]:
    pipe = load_toyworld_pipeline()
    start = time.perf_counter()
    for n in names:
        pipe.load_lora_weights(str(lora_path(n)), adapter_name=n)
    pipe.set_adapters(list(names), [1.0] * len(names))
    return pipe, time.perf_counter() - start


def own_pipe(name: str) -> tuple[Any, float]:
    return adapters_pipe((name,))


@dataclass
class Models:
    """The model a file of one merge group's cases renders with, per `regions` mode: one merge
    (or the runtime adapters) for every mode, and with scene_prompts one merge per mode, fitted
    on the prompts that file hands it (its region prompts, or its one prompt per scene)."""

    label: str
    method: str
    params: dict[str, Any]
    merged: tuple[str, ...]
    chosen: list[Case]
    seeds: Sequence[int]
    cache: Path
    made: dict[str, tuple[Any, float, dict[str, Any]]] = field(default_factory=dict)

    def get(self, mode: str) -> tuple[Any, float, dict[str, Any]]:
        """(pipeline, merge or load seconds, the merge's layer figures)."""
        key = mode if self.label == SCENE_PROMPTS else ""
        if key not in self.made:
            if self.method == "adapters":
                self.made[key] = (*adapters_pipe(self.merged), {})
            else:
                prompts = scene_prompts(self.chosen, self.seeds, mode) if key else None
                self.made[key] = merged_pipe(
                    self.method, self.params, self.merged, self.cache, prompts
                )
        return self.made[key]


@dataclass
class Tally:
    """Raw results of one table row, gathered over cases (and merges)."""

    values: dict[str, list[float]]
    identity_by_concept: dict[str, list[float]]
    render_seconds: float = 0.0
    images: int = 0
    seed_pairs: int = 0
    differ: int = 0
    merge_seconds: list[float] | None = None
    prompts: list[str] | None = None
    # concept -> what the judge found in its place when its identity failed -> count
    # ("purple plain square", "nothing"); merge_variants reads it
    drawn_instead: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def new(cls) -> Tally:
        return cls({m: [] for m in METRICS}, {}, merge_seconds=[], prompts=[])

    def row(self) -> dict[str, Any]:
        return {
            **{m: summary(v) if v else None for m, v in self.values.items()},
            "identity_by_concept": {
                k: round(statistics.fmean(v), 3) for k, v in self.identity_by_concept.items()
            },
            "merge_seconds": round(statistics.fmean(self.merge_seconds or [0.0]), 2),
            "render_seconds_per_image": round(self.render_seconds / max(self.images, 1), 3),
            "seed_pairs_differ": round(self.differ / max(self.seed_pairs, 1), 3),
            "images": self.images,
            "prompts": self.prompts,
        }


def describe(found: Found) -> str:
    """A found sprite's identity in words: "purple spotted square"."""
    shape, colour, pattern = found.identity
    return f"{colour} {pattern} {shape}"


def run_case(
    pipe: Any,
    case: Case,
    jobs: Sequence[RenderJob],
    tally: Tally,
    adapters: Adapters | None = None,
    per_concept: dict[str, list[float]] | None = None,
) -> None:
    """Render and judge one case with every seed; add per-concept scores, render time and
    seed-pair box differences to ``tally`` (identities also to ``per_concept``, by name)."""
    start = time.perf_counter()
    ims = render_case(pipe, jobs, adapters)
    tally.render_seconds += time.perf_counter() - start
    tally.images += len(ims)
    assert tally.prompts is not None
    tally.prompts.append(case.label)
    expected = case.scene
    if jobs[0].regions:  # placement = inside the concept's own region
        boxes = {r.subject: r.box for r in jobs[0].regions}
        expected = replace(
            expected,
            sprites=tuple(replace(s, box=boxes.get(s.name)) for s in expected.sprites),
        )
    found = []
    for im in ims:
        scores = judge(im, expected)
        found.append(scores.found)
        for c in scores.concepts:
            tally.values["accuracy"].append(c.accuracy)
            tally.values["identity"].append(c.identity)
            tally.identity_by_concept.setdefault(c.name, []).append(c.identity)
            if per_concept is not None:
                per_concept.setdefault(c.name, []).append(c.identity)
            if not c.identity:
                drawn = "nothing" if c.found is None else describe(scores.found[c.found])
                counts = tally.drawn_instead.setdefault(c.name, {})
                counts[drawn] = counts.get(drawn, 0) + 1
            # no box and no placement asked: placement is not scored for that concept
            if c.placement is not None:
                tally.values["placement"].append(c.placement)
    for a, b in itertools.combinations(found, 2):
        tally.seed_pairs += 1
        tally.differ += boxes_differ(a, b)


def row_name(case: Case) -> str:
    return "same class (hard pair)" if case.label == "hard pair" else f"{case.count} in one image"


# (row label, regions setting in the plan, adapters confined: runtime adapters only)
VARIANTS: tuple[tuple[str, str, bool], ...] = (
    ("off", "off", False),
    ("on", "on", False),
    ("alone", "alone", False),
    ("confined", "on", True),
)


def evaluate(n_seeds: int, regions: Sequence[str]) -> dict[str, Any]:
    seeds = list(range(1000, 1000 + n_seeds))
    all_cases = cases()
    tallies: dict[tuple[str, str, str], Tally] = {}
    groups: dict[tuple[str, ...], list[Case]] = {}
    for c in all_cases:
        groups.setdefault(c.merged, []).append(c)
    variants = [v for v in VARIANTS if v[0] in regions]
    modes = sorted({v[1] for v in variants} | {"off"})
    jobs = {mode: compiled_jobs(all_cases, seeds, mode) for mode in modes}
    index = {c.label: i for i, c in enumerate(all_cases)}
    points: list[dict[str, Any]] = []  # per merge and concept: layer figures + image identity
    with tempfile.TemporaryDirectory() as tmp:
        for label, method, params in (*METHODS, ("adapters", "adapters", {})):
            for merged, chosen in groups.items():
                identity: dict[str, list[float]] = {}  # this merge, regions off
                models = Models(label, method, params, merged, chosen, seeds, Path(tmp))
                for name, mode, confine in variants:
                    if confine and method != "adapters":
                        continue
                    for case in chosen:
                        if case.count == 1 and name != "off":
                            continue  # no regions in a single-concept picture: same image
                        # a concept alone: the merge of the file as shipped (regions on)
                        pipe, merge_s, _ = models.get(mode if case.count > 1 else "on")
                        tally = tallies.setdefault((row_name(case), label, name), Tally.new())
                        assert tally.merge_seconds is not None
                        tally.merge_seconds.append(merge_s)
                        ad = confined(merged) if confine else None
                        if method == "adapters" and not confine:  # as `render --adapters`:
                            held = [s.name for s in case.scene.sprites]  # the picture's own
                            pipe.set_adapters(held, [1.0] * len(held))
                        # layer figures vs pictures: the pictures of the regions-on merge
                        same = label != SCENE_PROMPTS or case.count == 1
                        own = identity if name == "off" and same else None
                        run_case(pipe, case, jobs[mode][index[case.label]], tally, ad, own)
                if method != "adapters":
                    points += figure_points(label, merged, models.get("on")[2], identity)
                print(f"{label} {'+'.join(merged)} done", flush=True)
        # the ceiling: each concept's own LoRA, alone, on its single-concept prompt
        for case in all_cases:
            if case.count == 1:
                pipe, load_s = own_pipe(case.scene.sprites[0].name)
                key = ("1 in one image", "own LoRA (ceiling)", "off")
                tally = tallies.setdefault(key, Tally.new())
                assert tally.merge_seconds is not None
                tally.merge_seconds.append(load_s)
                run_case(pipe, case, jobs["off"][index[case.label]], tally)
    rows = []
    for (name, method, region), tally in tallies.items():
        rows.append({"row": name, "method": method, "regions": region, **tally.row()})
        print(_line(rows[-1]), flush=True)
    return {
        "world": 2,
        "weights_world": VERSION,
        "seeds": n_seeds,
        "steps": DEFAULT_STEPS,
        "guidance": DEFAULT_GUIDANCE,
        "cases": {c.label: expected_prompt(c.scene) for c in all_cases},
        "rows": rows,
        "figures_vs_identity": correlations(points),
        "figure_points": points,
    }


FIGURES = ("fidelity", "separation")  # layer figures per concept and stage (docs/loraclr.md)


def figure_points(
    method: str,
    merged: tuple[str, ...],
    figures: dict[str, Any],
    identity: dict[str, list[float]],
) -> list[dict[str, Any]]:
    """One point per merged concept: its layer figures (mean and worst over a stage's layers,
    per stage) and its mean image identity in this merge's pictures (regions off); none for a
    concept without such pictures (scene_prompts: only the concepts drawn alone are pictures of
    the regions-on merge whose figures these are)."""
    points = []
    for concept in merged:
        if not identity.get(concept):
            continue
        point: dict[str, Any] = {
            "method": method,
            "merged": "+".join(merged),
            "concept": concept,
            "identity": statistics.fmean(identity[concept]),
        }
        for stage, entry in figures.get("stages", {}).items():
            per = entry.get("per_concept", {}).get(concept)
            if per is None:
                continue
            for fig in FIGURES:
                for agg in ("mean", "worst"):
                    point[f"{stage}.{fig}.{agg}"] = per[fig][agg]
        points.append(point)
    return points


def _ranks(xs: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank (for Spearman's rho)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def correlations(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pearson r and Spearman rho of every layer figure against image identity, over the
    benchmark's merges (points with that figure; a constant column has no correlation)."""
    keys = sorted({k for p in points for k in p if k.count(".") == 2})
    out = []
    for key in keys:
        pts = [p for p in points if isinstance(p.get(key), (int, float)) and p[key] == p[key]]
        if not pts:  # a stage no merge solved (e.g. the fallback's linear sum has no figures)
            continue
        xs, ys = [float(p[key]) for p in pts], [float(p["identity"]) for p in pts]
        if len(pts) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
            out.append({"figure": key, "n": len(pts), "pearson": None, "spearman": None})
            continue
        out.append(
            {
                "figure": key,
                "n": len(pts),
                "pearson": round(statistics.correlation(xs, ys), 3),
                "spearman": round(statistics.correlation(_ranks(xs), _ranks(ys)), 3),
            }
        )
    return out


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:.2f} ± {s['std']:.2f} [{s['min']:.2f}, {s['max']:.2f}]"


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['row']:>22} {row['method']:>20} regions={row['regions']:>8} "
        + "  ".join(f"{m} {row[m]['mean']:.2f}" if row[m] else f"{m} –" for m in METRICS)
        + f"  boxes differ {row['seed_pairs_differ']:.2f}"
    )


def markdown(result: dict[str, Any]) -> str:
    head = (
        "| picture | method | regions | Accuracy | Identity | Placement | merge s | render s/img "
        "| seed pairs differ |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['row']} (n={r['accuracy']['n']}) | {r['method']} | {r['regions']} | "
        + " | ".join(_cell(r[m]) for m in METRICS)
        + f" | {r['merge_seconds']} | {r['render_seconds_per_image']} | {r['seed_pairs_differ']:.2f} |"
        for r in sorted(result["rows"], key=lambda r: (r["row"].startswith("same"), r["row"]))
    ]
    prompts = "\n".join(f"- {k}: `{v}`" for k, v in result["cases"].items())
    corr = [
        f"| {c['figure']} | {c['n']} | {c['pearson']} | {c['spearman']} |"
        for c in result.get("figures_vs_identity", [])
    ]
    table = (
        "\n\nLayer figures vs image identity (per merged concept, regions off; both"
        " figures are lower when better, so a figure that predicts images correlates negatively):\n\n"
        "| figure (stage.figure.aggregate) | points | Pearson r | Spearman rho |\n|---|---|---|---|\n"
        + "\n".join(corr)
        if corr
        else ""
    )
    return head + "\n".join(lines) + "\n\nPrompts:\n" + prompts + table + "\n"


def write_results(out: Path, result: dict[str, Any], table: str) -> None:
    """``out`` (JSON) and ``out`` with ``.md`` (the table), written atomically; the table printed."""
    atomic_write_text(out, json.dumps(result, indent=2))
    atomic_write_text(out.with_suffix(".md"), table)
    print(table)
    print(f"total {result['seconds']} s; wrote {out} and {out.with_suffix('.md')}")


def bench_parser(
    doc: str | None, name: str, seeds: int, seeds_help: str, threads: int
) -> argparse.ArgumentParser:
    """The flags every toy-world benchmark takes: --seeds, --out (benchmarks/results/NAME.json)
    and --threads; a script adds its own."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    parser.add_argument("--seeds", type=int, default=seeds, help=seeds_help)
    parser.add_argument("--out", type=Path, default=Path(f"benchmarks/results/{name}.json"))
    parser.add_argument("--threads", type=int, default=threads, help="torch CPU threads")
    return parser


def run_and_write(
    args: argparse.Namespace,
    run: Callable[[], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
) -> None:
    """``run()`` on ``args.threads`` CPU threads, timed into its result's ``seconds``; the
    result written as JSON and Markdown (`write_results`)."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run()
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_results(args.out, result, table(result))


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "toyworld_eval", 16, "seeds per prompt", threads=1)
    parser.add_argument(
        "--regions", default="off,on,alone,confined", help="variants to run (comma-separated)"
    )
    args = parser.parse_args(argv)
    regions = [r.strip() for r in args.regions.split(",")]
    run_and_write(args, lambda: evaluate(args.seeds, regions), markdown)


if __name__ == "__main__":
    main()
