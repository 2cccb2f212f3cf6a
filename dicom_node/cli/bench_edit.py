"""`x2x bench edit`: our RSE loop vs diffusers' IP2P pipeline on the same components (JSON)."""

from __future__ import annotations

import json

import typer

from dicom_node.cli.apps import bench_app


@bench_app.command("edit")
def bench_edit(
    arch: str = typer.Option("tiny", help="tiny (fixture size) | sd15 (random SD1.5-size weights, no download)."),
    steps: int = typer.Option(10, min=2, help="DDIM steps per timed run."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    dtype: str = typer.Option("auto", help="auto (CUDA: fp16, latents fp32; CPU: fp32) | float32 | "
                              "float16 | bfloat16."),
    resolution: int = typer.Option(512, min=64, help="Square input size (multiple of 8)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per loop (median reported)."),
) -> None:
    """Print seconds per step of our loop and of diffusers' pipeline, their ratio, stage times, memory."""
    from editor import disable_progress_bars
    from editor.bench import run_bench
    disable_progress_bars()

    if arch not in ("tiny", "sd15"):
        typer.echo("x2x bench edit: --arch must be tiny or sd15", err=True)
        raise typer.Exit(code=2)
    if resolution % 8:
        typer.echo("x2x bench edit: --resolution must be a multiple of 8", err=True)
        raise typer.Exit(code=2)
    result = run_bench(arch, steps=steps, device=device, dtype=dtype, resolution=resolution,  # type: ignore[arg-type]
                       repeats=repeats)
    typer.echo(json.dumps(result, indent=2))
