"""`x2x dataset phantoms` and `x2x model build-demo`: the synthetic phantom data set and the demo model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from dicom_node.cli.apps import dataset_app, model_app


@dataset_app.command("phantoms")
def dataset_phantoms(
    out_dir: Path = typer.Argument(..., help="Folder to write instructions.csv, images/ and masks/ to."),
    n: int = typer.Option(2000, "--n", min=1, help="Number of (past, current) pairs."),
    size: int = typer.Option(128, "--size", min=32, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes drawing pairs in parallel."),
) -> None:
    """Write synthetic chest phantom pairs with instructions, in the MIMIC-EDIT-INSTRUCTION layout.

    PA display convention (patient's left on the image's right). Each pair differs in one finding
    (pleural effusion, cardiomegaly, focal lung opacity, apical pneumothorax); masks/<pair_id>.png is
    the ground-truth change. Every image is synthetic.
    """
    from editor.training.phantoms import write_dataset

    summary = write_dataset(out_dir, n=n, size=size, seed=seed, workers=workers)
    typer.echo(json.dumps(summary, indent=2))


@model_app.command("build-demo")
def model_build_demo(
    out_dir: Optional[Path] = typer.Argument(
        None, help="Where to write the model (default: inside the package, where the node looks for it)."
    ),
    device: str = typer.Option("auto", help="auto / cpu / cuda (the same recipe everywhere: 22 min on 2 CPU cores)."),
    unet_steps: Optional[int] = typer.Option(None, help="UNet optimizer steps (default: the recipe's)."),
    time_budget: Optional[float] = typer.Option(
        None, help="Seconds of UNet training at most (stops between chunks; steps done are recorded)."
    ),
    vae_steps: Optional[int] = typer.Option(None, help="VAE optimizer steps (default: the recipe's)."),
    pairs: Optional[int] = typer.Option(None, help="Phantom pairs to train on (default: the recipe's)."),
    workers: int = typer.Option(2, min=1, help="Processes drawing phantoms (the files do not depend on it)."),
    work_dir: Optional[Path] = typer.Option(
        None, help="Scratch folder (phantoms, checkpoints); default: a temporary folder, removed afterwards."
    ),
) -> None:
    """Build the phantom demo model: phantoms -> VAE -> IP2P UNet with `x2x train`'s code (fixed seeds).

    It knows only synthetic phantoms; it exists to show the editor working without the gated weights.
    Each stage is logged; on a terminal the VAE loss every 100 steps and a UNet progress bar are shown too.
    """
    import dataclasses

    from dicom_node.cli.progress import interactive
    from editor.demo import SHIPPED_DIR
    from editor.training.demo_recipe import DemoRecipe, build_demo_model

    # Stage lines (phantoms, VAE, UNet chunks) are logged either way; the bars only on a terminal.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    recipe = DemoRecipe()
    changes: dict[str, object] = {}
    if unet_steps is not None:
        changes["unet_steps"] = unet_steps
    if time_budget is not None:
        changes["time_budget_s"] = time_budget
    if pairs is not None:
        changes["n_pairs"] = pairs
    if vae_steps is not None:
        changes["vae"] = dataclasses.replace(recipe.vae, steps=vae_steps)
    recipe = dataclasses.replace(recipe, **changes)  # type: ignore[arg-type]
    out = build_demo_model(out_dir or SHIPPED_DIR, recipe, device=device, work_dir=work_dir, workers=workers,
                           progress=interactive())
    meta = json.loads((out / "x2x_model.json").read_text())
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    typer.echo(f"wrote {meta['model_id']} to {out} ({size / 1e6:.1f} MB, "
               f"{meta['recipe']['unet_steps_done']} UNet steps). {meta['warning']}")


@dataset_app.command("phantom-studies")
def dataset_phantom_studies(
    out_dir: Path = typer.Argument(..., help="Folder to write the DICOM files to."),
    n: int = typer.Option(4, "--n", min=1, help="Number of studies (one CR image each)."),
    size: int = typer.Option(256, "--size", min=64, help="Image side in pixels."),
    seed: int = typer.Option(4242, "--seed", help="Same seed, same files and UIDs (4242: never trained on)."),
) -> None:
    """Write phantom chest CR studies whose private tag asks for an edit: send them to the node to see it work.

    Example: x2x dataset phantom-studies var/demo/ && storescu -R -aec X2X 127.0.0.1 11112 var/demo/*.dcm
    """
    import pydicom

    from dicom_node.tools.phantom_studies import write_phantom_studies

    for path in write_phantom_studies(out_dir, n=n, size=size, seed=seed):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        block = ds.private_block(0x0071, "INSTRUCTX2X")
        typer.echo(f"{path}: {block[0x10].value}")
