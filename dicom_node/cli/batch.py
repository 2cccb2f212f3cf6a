"""`x2x batch SRC --instruction TEXT | --instructions-csv FILE --out DIR`: edit a folder tree of DICOM files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dicom_node.cli.apps import app, settings


@app.command()
def batch(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder tree of DICOM files."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (manifest.csv + one folder per edit)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", "-i", help="One instruction for every image."),
    instructions_csv: Optional[Path] = typer.Option(
        None, "--instructions-csv", exists=True, dir_okay=False,
        help="CSV: path (relative to SRC) or sop_instance_uid, instruction[, seed].",
    ),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: [model] path)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="DDIM steps (default: [edit] steps)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default: [edit] seed)."),
    send: Optional[str] = typer.Option(None, "--send", help="Also C-STORE the objects to AE@host:port."),
) -> None:
    """Edit every eligible chest radiograph under SRC; skip the rest with a reason. Output is SYNTHETIC.

    Writes the DICOM objects, PNG previews and a manifest CSV. Rerun the same command to resume after an
    interruption: items already in the manifest are not redone. Ctrl-C stops cleanly.
    """
    import time

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from dicom_node.edit_params import InvalidEditParams, default_seed, resolve_params
    from dicom_node.logs import setup_logging
    from dicom_node.tools.batch import BatchRunner, Manifest, parse_peer, plan_items, read_instructions_csv

    if (instruction is None) == (instructions_csv is None):
        typer.echo("x2x: give exactly one of --instruction or --instructions-csv", err=True)
        raise typer.Exit(2)
    if send:
        try:
            parse_peer(send)
        except ValueError as exc:
            typer.echo(f"x2x: --send: {exc}", err=True)
            raise typer.Exit(2) from None
    s = settings()
    setup_logging(s.logging.level if s.logging.level.upper() != "INFO" else "WARNING", s.logging.json_format)
    console = Console(stderr=True)
    if instruction is not None:
        from editor import InstructionError, parse_instruction

        try:
            parse_instruction(instruction)
        except InstructionError as exc:
            typer.echo(f"x2x: invalid instruction: {exc}", err=True)
            raise typer.Exit(2) from None
    try:
        params = resolve_params(s, {"steps": steps})
    except InvalidEditParams as exc:
        typer.echo(f"x2x: {exc}", err=True)
        raise typer.Exit(2) from None
    per_file = read_instructions_csv(instructions_csv) if instructions_csv else None
    base_seed = default_seed(s, seed)
    items = plan_items(src.resolve(), instruction=instruction, per_file=per_file, seed=base_seed)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    todo = [it for it in items if it.key not in manifest.done_keys]

    def load_editor():  # type: ignore[no-untyped-def]
        from dicom_node.context import resolve_model_path
        from dicom_node.threads import configure_torch
        from editor import Editor

        configure_torch(s.worker)
        path = model or resolve_model_path(s)
        return Editor.from_pretrained(path, device=s.model.device, dtype=s.model.dtype,
                                      single_file_config=s.model.single_file_config)

    runner = BatchRunner(out_dir=out, editor_factory=load_editor, params=params, settings=s, send_to=send)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    console.print(f"{len(items)} item(s) under {src}; {len(items) - len(todo)} already in the manifest, "
                  f"{len(todo)} to go. Outputs are SYNTHETIC.")
    started = time.perf_counter()
    interrupted = False
    try:
        with Progress(
            TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        ) as progress:
            task = progress.add_task("batch", total=len(todo), counts="")
            for item in todo:
                row = runner.run_item(item)
                manifest.append(row)
                counts[row["status"]] += 1
                progress.update(task, advance=1,
                                counts=f"done {counts['done']} skipped {counts['skipped']} failed {counts['failed']}")
    except KeyboardInterrupt:
        # The item in progress has no manifest row, so a rerun redoes it; finished rows are fsync'ed.
        interrupted = True
    finally:
        manifest.close()
    elapsed = time.perf_counter() - started
    console.print(f"done {counts['done']}, skipped {counts['skipped']}, failed {counts['failed']} "
                  f"in {elapsed:.1f} s; manifest {manifest.path}")
    if interrupted:
        console.print("[yellow]interrupted: rerun the same command to resume[/yellow]")
        raise typer.Exit(130)
