"""`x2x edit SRC --instruction TEXT --out DIR`: one edit of one DICOM / PNG file, written as files.

Writes (all on the source's native grid): counterfactual.png, guidance_overlay.png (red intensity = G
where G >= tau, the source image elsewhere), relevance.npy, guidance.npy, mask.png and result.json
(EditResult.summary(): parameters, model id + hash, timings, provenance). Every output is synthetic.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import typer

from dicom_node.cli_apps import app, settings

if TYPE_CHECKING:
    from editor.types import EditResult


def _to_uint8(display01: np.ndarray) -> np.ndarray:
    return np.asarray(np.clip(np.rint(np.asarray(display01, dtype=np.float64) * 255), 0, 255), dtype=np.uint8)


def guidance_overlay(display01: np.ndarray, guidance: np.ndarray, tau: float) -> np.ndarray:
    """RGB uint8: pure red of intensity G where G >= tau, the grey image elsewhere (research display)."""
    grey = _to_uint8(display01)
    rgb = np.stack([grey, grey, grey], axis=-1)
    shown = guidance >= tau
    rgb[shown] = 0
    rgb[..., 0][shown] = _to_uint8(guidance)[shown]
    return rgb


def write_edit_outputs(result: EditResult, counterfactual_display: np.ndarray, out_dir: Path) -> list[Path]:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    source_display = result.source_display if result.source_display is not None else counterfactual_display
    files = {
        "counterfactual.png": lambda p: Image.fromarray(_to_uint8(counterfactual_display)).save(p),
        "guidance_overlay.png": lambda p: Image.fromarray(
            guidance_overlay(source_display, result.guidance, result.params.tau)
        ).save(p),
        "relevance.npy": lambda p: np.save(p, result.relevance.astype(np.float32)),
        "guidance.npy": lambda p: np.save(p, result.guidance.astype(np.float32)),
        "mask.png": lambda p: Image.fromarray(result.mask.astype(np.uint8) * 255).save(p),
        "result.json": lambda p: p.write_text(json.dumps(result.summary(), indent=2, default=str)),
    }
    written = []
    for name, write in files.items():
        path = out_dir / name
        write(path)
        written.append(path)
    return written


@contextmanager
def step_progress(total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar of the DDIM steps on stderr when it is a terminal; nothing otherwise (pipes,
    logs, tests). Yields the `step_callback` for `Editor.edit`."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("denoising"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("denoise", total=total)
        yield lambda i: bar.update(task, completed=i + 1)


@app.command()
def edit(
    src: Path = typer.Argument(..., exists=True, dir_okay=False, help="DICOM, PNG, JPEG or .npy image."),
    instruction: str = typer.Option(..., "--instruction", "-i", help="e.g. 'Add the finding of pleural effusion.'"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the output files."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder or single file (default: configured)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: [edit] seed of the config)."),
    steps: Optional[int] = typer.Option(None, min=1, help="DDIM steps (default: [edit] steps, 100)."),
    no_rse: bool = typer.Option(False, "--no-rse", help="Plain InstructPix2Pix (no region-specific editing)."),
    tau: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Guidance threshold (default 0.1)."),
    prior: str = typer.Option("anatomy", help="Region prior: anatomy | paper | none."),
    paper_prior_dir: Optional[Path] = typer.Option(None, help="Folder of pseudo_mask_<Finding>.npy (--prior paper)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default: [model] device)."),
) -> None:
    """Edit one image and write the counterfactual, guidance maps and result.json. Output is SYNTHETIC."""
    from dicom_node.context import resolve_model_path
    from editor.editor import Editor
    from editor.instructions import InstructionError, parse_instruction
    from editor.model import disable_progress_bars
    from editor.preprocess import DisplayMapping
    from editor.source import UnsupportedImageError, source_from_file
    from editor.types import EditParams

    disable_progress_bars()
    cfg = settings()
    try:
        parsed = parse_instruction(instruction)
    except InstructionError as exc:
        hint = f" (did you mean: {exc.suggestion})" if getattr(exc, "suggestion", None) else ""
        typer.echo(f"x2x edit: invalid instruction: {exc}{hint}", err=True)
        raise typer.Exit(code=2) from exc
    if prior not in ("anatomy", "paper", "none"):
        typer.echo("x2x edit: --prior must be anatomy, paper or none", err=True)
        raise typer.Exit(code=2)
    try:
        image = source_from_file(src)
    except UnsupportedImageError as exc:
        typer.echo(f"x2x edit: {exc}", err=True)
        raise typer.Exit(code=2) from exc

    defaults = cfg.edit
    params = EditParams(
        steps=steps if steps is not None else defaults.steps,
        text_guidance=defaults.text_guidance,
        image_guidance=defaults.image_guidance,
        tau=tau if tau is not None else defaults.tau,
        rse=not no_rse,
        prior=prior,  # type: ignore[arg-type]
        paper_prior_dir=str(paper_prior_dir) if paper_prior_dir else None,
    )
    model_path = model if model is not None else resolve_model_path(cfg)
    editor = Editor.from_pretrained(
        model_path,
        device=device or cfg.model.device,
        dtype=cfg.model.dtype,
        single_file_config=cfg.model.single_file_config,
    )
    with step_progress(params.steps) as on_step:
        result = editor.edit(image, parsed, seed=seed if seed is not None else defaults.seed, params=params,
                             step_callback=on_step)
    counterfactual_display = DisplayMapping.from_source(image).to_display(result.counterfactual)
    write_edit_outputs(result, counterfactual_display, out)
    from dicom_node.results import write_dicom_outputs_for_file  # H4: the five DICOM objects (DICOM sources)

    write_dicom_outputs_for_file(src, result, out, cfg)
    typer.echo(
        f"SYNTHETIC edit '{result.prompt}' model={result.model_id} seed={result.seed} "
        f"steps={params.steps} rse={'on' if params.rse and params.tau > 0 else 'off'} "
        f"prior={result.prior_source} coverage={result.coverage:.3f} "
        f"time={result.timings.get('total', 0.0):.1f}s -> {out}"
    )
