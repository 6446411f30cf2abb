"""``scenecraft export FILE``: the merged cast as files other tools load (docs/export.md).

`run` gets typed `ExportSettings` and the loaded file; errors are `DiagnosticError`s, rendered
by `scenecraft.cli.main`. The report goes to stdout as JSON with ``--json``, else as a table on
stderr.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from scenecraft import models
from scenecraft.api import Loaded
from scenecraft.cli.args import ExportSettings
from scenecraft.cli.common import Output
from scenecraft.export.api import ExportOptions, ExportReport, check_options, export_merge
from scenecraft.export.lora import DEFAULT_MAX_ERROR
from scenecraft.ui.progress import progress_reporter


def options_of(settings: ExportSettings) -> ExportOptions:
    max_error = settings.max_error if settings.max_error is not None else DEFAULT_MAX_ERROR
    return ExportOptions(
        lora=settings.lora,
        lora_format="peft" if settings.lora_format == "peft" else "kohya",
        max_error=None if settings.rank is not None else max_error,
        rank=settings.rank,
        precision=settings.precision,
        checkpoint=settings.checkpoint,
        diffusers=settings.diffusers,
        comfyui=settings.comfyui,
    )


def run(settings: ExportSettings, loaded: Loaded, out: Output) -> int:
    options = options_of(settings)
    check_options(options)  # before the model loads
    spec = loaded.plan.merge
    pipe = models.load_pipeline(spec.base, device=settings.device, dtype=settings.dtype)
    kwargs = {"cache_dir": settings.cache_dir, "force": settings.force}
    if settings.json:
        report = export_merge(loaded.plan, pipe, options, **kwargs)  # type: ignore[arg-type]
        out.show(report.warnings)
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return 0
    console = Console(stderr=True)
    with progress_reporter(console) as reporter:
        report = export_merge(loaded.plan, pipe, options, reporter=reporter, **kwargs)  # type: ignore[arg-type]
    out.show(report.warnings)
    print_report(console, report)
    return 0


def print_report(console: Console, report: ExportReport) -> None:
    """Per-layer rank and error of the LoRA (the worst ten), then every file written."""
    console.print(f"merge [bold]{report.merge_key}[/] (cache entry {report.entry})")
    if report.lora is not None:
        lora = report.lora.as_dict()
        table = Table(title="LoRA layers (largest error first)", show_lines=False)
        for column in ("module", "rank", "full rank", "rel. error"):
            table.add_column(column, justify="left" if column == "module" else "right")
        rows = sorted(report.lora.layers, key=lambda r: -float(r["error"]))
        for row in rows[:10]:
            table.add_row(
                row["module"], str(row["rank"]), str(row["full_rank"]), f"{row['error']:.4f}"
            )
        console.print(table)
        budget = f"budget {lora['max_error']}" if lora["rank"] is None else f"rank {lora['rank']}"
        console.print(
            f"LoRA {lora['path']}: {lora['modules']} modules, {budget}, mean rank "
            f"{lora['mean_rank']:.1f}, max rank {lora['max_rank']}, worst error "
            f"{lora['worst_error']:.4f}, {lora['bytes'] / 2**20:.2f} MB ({lora['format']} names)"
        )
    if report.checkpoint is not None:
        mb = report.checkpoint["bytes"] / 2**20
        console.print(f"checkpoint {report.checkpoint['path']}: {mb:.1f} MB")
    if report.diffusers is not None:
        console.print(f"diffusers folder {report.diffusers}")
    if report.workflows:
        console.print(
            f"{len(report.workflows)} ComfyUI workflow(s) in {report.workflows[0].rsplit('/', 1)[0]}"
        )
    for path in report.embeddings:
        console.print(f"embedding {path}")
