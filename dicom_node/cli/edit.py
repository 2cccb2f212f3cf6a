"""`x2x edit SRC --instruction TEXT --out DIR`: one edit of one DICOM / PNG file, written as files.

Writes (all on the source's native grid): counterfactual.png, guidance_overlay.png (red intensity = G
where G >= tau, the source image elsewhere), relevance.npy, guidance.npy, mask.png, source.png,
overlay.png, result.json (EditResult.summary(): parameters, model id + hash, timings, provenance) and,
for a DICOM source, the five DICOM objects with the same UIDs a node job of the same edit gets.
Every output is synthetic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dicom_node.cli.apps import app, settings
from dicom_node.cli.errors import INSTRUCTION_HELP, MODEL_HELP, fail


@app.command()
def edit(
    src: Path = typer.Argument(..., exists=True, dir_okay=False, help="DICOM, PNG, JPEG or .npy image."),
    instruction: str = typer.Option(..., "--instruction", "-i", help="e.g. 'Add the finding of pleural effusion.'"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the output files."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder or single file (default: configured)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: [edit] seed of the config)."),
    steps: Optional[int] = typer.Option(None, min=1, help="DDIM steps (default: [edit] steps, 100)."),
    no_rse: bool = typer.Option(False, "--no-rse", help="Plain InstructPix2Pix (no region-specific editing)."),
    tau: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Guidance threshold (default: [edit] tau)."),
    prior: Optional[str] = typer.Option(None, help="Region prior: anatomy | paper | none (default: [edit] prior)."),
    paper_prior_dir: Optional[Path] = typer.Option(None, help="Folder of pseudo_mask_<Finding>.npy (--prior paper)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default: [model] device)."),
) -> None:
    """Edit one image and write the counterfactual, guidance maps and result.json. Output is SYNTHETIC.

    On a terminal, each stage and every DDIM step is shown (stderr); in a pipe only the result line."""
    from pydicom import dcmread

    from dicom_node.cli.progress import steps as progress_steps
    from dicom_node.context import resolve_model_path
    from dicom_node.edit_params import InvalidEditParams, default_seed, job_key, resolve_params
    from dicom_node.results import is_dicom_file, write_outputs
    from dicom_node.results.outputs import EDIT_OUTPUTS
    from dicom_node.threads import configure_torch
    from editor import (
        Editor,
        InstructionError,
        ModelLoadError,
        UnsupportedImageError,
        disable_progress_bars,
        parse_instruction,
        source_from_dataset,
        source_from_file,
    )

    disable_progress_bars()
    cfg = settings()
    try:
        parsed = parse_instruction(instruction)
    except InstructionError as exc:  # its message already carries the "did you mean"
        fail("edit", f"invalid instruction: {exc}", INSTRUCTION_HELP, code=2, cause=exc)
    try:
        params = resolve_params(cfg, {
            "steps": steps, "tau": tau, "rse": False if no_rse else None, "prior": prior,
            "paper_prior_dir": str(paper_prior_dir) if paper_prior_dir else None,
        })
    except InvalidEditParams as exc:
        fail("edit", str(exc), "use a value inside the bounds `x2x config reference` lists for [edit]", code=2,
             cause=exc)
    try:
        source_ds = dcmread(src) if is_dicom_file(src) else None
    except Exception as exc:  # pydicom raises many types on a broken file
        fail("edit", f"{src} is not a readable DICOM file: {type(exc).__name__}: {exc}",
             "give a complete DICOM Part 10 file (dcmdump shows whether it reads)", code=2, cause=exc)
    try:
        image = source_from_dataset(source_ds) if source_ds is not None else source_from_file(src)
    except UnsupportedImageError as exc:
        fail("edit", str(exc), "give a greyscale radiograph: DICOM CR/DX, PNG, JPEG or .npy", code=2, cause=exc)

    model_path = model if model is not None else resolve_model_path(cfg)
    configure_torch(cfg.worker)  # torch's thread pools sized before the model loads (dicom_node/threads.py)
    seed_value = default_seed(cfg, seed)
    with progress_steps() as shown:
        shown.stage(f"loading model {model_path}")
        try:
            editor = Editor.from_pretrained(
                model_path,
                device=device or cfg.model.device,
                dtype=cfg.model.dtype,
                single_file_config=cfg.model.single_file_config,
            )
        except ModelLoadError as exc:
            fail("edit", str(exc), MODEL_HELP, cause=exc)
        shown.stage(f"denoising (relevance map, then {params.steps} DDIM steps)", total=params.steps)
        result = editor.edit(image, parsed, seed=seed_value, params=params, step_callback=shown.callback)
        shown.stage("writing outputs")
        key = job_key(str(source_ds.SOPInstanceUID) if source_ds is not None else src.name,
                      result.prompt, result.model_hash, seed_value, params)
        write_outputs(result, out, source=image, source_ds=source_ds, job_key=key, settings=cfg, which=EDIT_OUTPUTS)
    typer.echo(
        f"SYNTHETIC edit '{result.prompt}' model={result.model_id} seed={result.seed} "
        f"steps={params.steps} rse={'on' if params.rse and params.tau > 0 else 'off'} "
        f"prior={result.prior_source} coverage={result.coverage:.3f} "
        f"time={result.timings.get('total', 0.0):.1f}s -> {out}"
    )
