"""`x2x bench edit`: our RSE loop vs diffusers' IP2P pipeline on the same components, or (`--batch B`)
edits/s of B images edited one at a time vs together (JSON)."""

from __future__ import annotations

import json

import typer

from dicom_node.cli.apps import bench_app


@bench_app.command("edit")
def bench_edit(
    arch: str = typer.Option("tiny", help="tiny (fixture size) | sd15 (random SD1.5-size weights, no download) "
                             "| demo (the shipped phantom demo model; --batch only)."),
    steps: int = typer.Option(10, min=2, help="DDIM steps per timed run."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    dtype: str = typer.Option("auto", help="auto (CUDA: fp16, latents fp32; CPU: fp32) | float32 | "
                              "float16 | bfloat16."),
    resolution: int = typer.Option(0, min=0, help="Square input size (multiple of 8); 0 = 512, with --batch "
                                   "the model's own."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per loop (median reported)."),
    batch: int = typer.Option(0, min=0, help="B > 0: edits/s of B whole edits one at a time vs one "
                              "Editor.edit_batch of B (same images, seeds, parameters)."),
    vae_batch: bool = typer.Option(False, help="With --batch: one VAE pass for the whole batch too."),
) -> None:
    """Print seconds per step of our loop and of diffusers' pipeline, their ratio, stage times, memory;
    with --batch B, edits/s single vs batched and their ratio."""
    from dicom_node.cli.apps import settings
    from dicom_node.threads import configure_torch
    from editor import disable_progress_bars

    disable_progress_bars()
    configure_torch(settings().worker)  # the worker's thread policy ([worker] threads)

    if arch not in ("tiny", "sd15") and not (batch and arch == "demo"):
        typer.echo("x2x bench edit: --arch must be tiny or sd15 (or demo with --batch)", err=True)
        raise typer.Exit(code=2)
    if resolution % 8:
        typer.echo("x2x bench edit: --resolution must be a multiple of 8", err=True)
        raise typer.Exit(code=2)
    if batch:
        from editor.bench_batch import run_batch_bench

        result = run_batch_bench(arch, batch=batch, steps=steps, device=device, dtype=dtype,  # type: ignore[arg-type]
                                 resolution=resolution or None, repeats=repeats, vae_batch=vae_batch)
    else:
        from editor.bench import run_bench

        result = run_bench(arch, steps=steps, device=device, dtype=dtype,  # type: ignore[arg-type]
                           resolution=resolution or 512, repeats=repeats)
    typer.echo(json.dumps(result, indent=2))
