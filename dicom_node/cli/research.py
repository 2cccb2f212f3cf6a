"""`x2x dataset build`, `x2x train`, `x2x eval`: rebuild MIMIC-EDIT-INSTRUCTION, fine-tune, evaluate.

Thin wrappers over editor/training (mimic/, train.py, evaluate.py); heavy imports stay inside the
functions so that `x2x --help` is instant. Several GPUs: `accelerate launch -m dicom_node.cli train ...`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dicom_node.cli.apps import app, dataset_app
from dicom_node.cli.errors import fail


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console()


@dataset_app.command("build")
def dataset_build(
    questions: Path = typer.Option(..., exists=True, dir_okay=False,
                                   help="MIMIC-Diff-VQA mimic_pair_questions.csv (or .json)."),
    metadata: Path = typer.Option(..., exists=True, dir_okay=False,
                                  help="MIMIC-CXR mimic-cxr-2.0.0-metadata.csv(.gz)."),
    jpg_root: Path = typer.Option(..., exists=True, file_okay=False,
                                  help="MIMIC-CXR-JPG root (holds files/pXX/...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
    split_file: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                              help="mimic-cxr-2.0.0-split.csv(.gz); needed unless the "
                                                   "questions have a 'split' column."),
    v2: bool = typer.Option(True, "--v2/--v1",
                            help="v2 (default, the research release's current form): one finding per "
                                 "instruction with location and severity; v1: one instruction per operation."),
    images: bool = typer.Option(False, "--images", help="Also write images/<dicom_id>.png."),
    image_size: int = typer.Option(512, min=16, help="Side of the square PNGs."),
    fit: str = typer.Option("squash", help="squash (paper, whole image) | pad | crop."),
    workers: int = typer.Option(4, min=1, help="Threads for the image conversion."),
) -> None:
    """Turn MIMIC-Diff-VQA difference answers into edit instructions (instructions.csv + stats.json)."""
    from editor.training.mimic import build_dataset, stats_table

    if fit not in ("squash", "pad", "crop"):
        fail("dataset build", f"--fit {fit!r} is not a fit mode", "use squash, pad or crop", code=2)
    try:
        stats = build_dataset(questions, metadata, jpg_root, out, split_file=split_file, v2=v2,
                              write_images=images, image_size=image_size, fit=fit,  # type: ignore[arg-type]
                              workers=workers)
    except ValueError as exc:
        fail("dataset build", str(exc), "check the input files and columns (docs/research.md)", code=2, cause=exc)
    _console().print(stats_table(stats))
    typer.echo(f"wrote {stats.rows_written} rows to {out / 'instructions.csv'} (stats: {out / 'stats.json'})")


@app.command("train")
def train_command(
    base_model: Path = typer.Option(..., "--base-model", exists=True, file_okay=False,
                                    help="Local diffusers InstructPix2Pix folder to fine-tune."),
    dataset: Path = typer.Option(..., exists=True, file_okay=False,
                                 help="Dataset folder: instructions.csv + images/<dicom_id>.png."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (checkpoints/, train_log.jsonl, model/)."),
    resolution: int = typer.Option(512, min=16, help="Training resolution (square)."),
    split: str = typer.Option("train", help="Split of instructions.csv to train on ('all' = every row)."),
    max_steps: int = typer.Option(6500, min=1, help="Optimizer steps (paper: v1 4500, v2 6500)."),
    batch_size: int = typer.Option(4, min=1, help="Per-device micro-batch."),
    effective_batch: int = typer.Option(1024, min=1, help="batch x accumulation x processes."),
    accumulation: Optional[int] = typer.Option(None, min=1, help="Override the derived accumulation."),
    lr: float = typer.Option(1e-4, help="AdamW learning rate (constant)."),
    mixed_precision: str = typer.Option("auto", help="auto | no | fp16 | bf16 (auto: bf16/fp16 on GPU)."),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU even when a GPU is present."),
    seed: int = typer.Option(0, help="Seed of the noise, timesteps and data order (same seed, same run)."),
    checkpoint_every: int = typer.Option(500, min=0, help="Checkpoint every N steps (0: only at the end)."),
    keep_checkpoints: Optional[int] = typer.Option(None, min=1, help="Keep only the newest N checkpoints."),
    resume: Optional[str] = typer.Option(None, help="'latest' or a checkpoint folder."),
    log_every: int = typer.Option(10, min=1, help="Write a train_log.jsonl line every N steps."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Keep an EMA of the UNet and export it (research config)."),
    ema_decay: float = typer.Option(0.9999, help="EMA decay per step (with --ema)."),
    rotation: float = typer.Option(2.0, "--rotation", min=0.0, max=44.9,
                                   help="Random rotation +-degrees with a centre crop, one angle per pair "
                                        "(research config 2; 0 = off, needed with --cache-latents)."),
    max_grad_norm: float = typer.Option(0.0, "--max-grad-norm", min=0.0,
                                        help="Clip the gradient norm (0 = no clipping, the research config)."),
    input_profile: Optional[str] = typer.Option(None, "--input-profile",
                                                help="Input profile the trained model declares (research | "
                                                     "windowed-aspect; default: the base model's)."),
    hflip: bool = typer.Option(False, "--hflip",
                               help="Random horizontal flips (swaps left/right words). Breaks anatomy "
                                    "laterality (heart side): off by default."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
    cache_latents: bool = typer.Option(False, "--cache-latents",
                                       help="Encode every image once before training and keep the latents in "
                                            "memory (small datasets; not with --hflip; needs --rotation 0)."),
    workers: int = typer.Option(4, min=0, help="DataLoader workers."),
    model_id: Optional[str] = typer.Option(None, help="model_id for x2x_model.json."),
) -> None:
    """Fine-tune the UNet of an InstructPix2Pix model (VAE and text encoder frozen).

    On a terminal a progress bar shows steps, loss and time left (stderr); in a pipe nothing but the
    result line (the loss is in train_log.jsonl either way)."""
    from dicom_node.cli.progress import interactive
    from editor.training.train import TrainConfig, train

    if mixed_precision not in ("auto", "no", "fp16", "bf16"):
        fail("train", f"--mixed-precision {mixed_precision!r} is not a precision", "use auto, no, fp16 or bf16",
             code=2)
    if hflip:
        typer.echo("WARNING: --hflip mirrors the heart and swaps left/right findings; instructions' "
                   "left/right words are swapped to match, but anatomy is no longer realistic.", err=True)
    cfg = TrainConfig(
        base_model=base_model, dataset_dir=dataset, output_dir=out, resolution=resolution,
        split=None if split == "all" else split, max_steps=max_steps, train_batch_size=batch_size,
        effective_batch_size=effective_batch, gradient_accumulation_steps=accumulation, learning_rate=lr,
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        cpu=cpu, seed=seed, checkpoint_every=checkpoint_every, checkpoints_total_limit=keep_checkpoints,
        resume=resume, log_every=log_every, use_ema=ema, ema_decay=ema_decay, hflip=hflip,
        gradient_checkpointing=gradient_checkpointing, num_workers=workers, model_id=model_id,
        cache_latents=cache_latents, rotation_degrees=rotation,
        max_grad_norm=max_grad_norm if max_grad_norm > 0 else None, input_profile=input_profile,
        progress=interactive(),
    )
    try:
        model_dir = train(cfg)
    except (ValueError, FileNotFoundError) as exc:
        fail("train", str(exc), "check --base-model, --dataset and the options (docs/research.md)", code=2,
             cause=exc)
    meta = json.loads((model_dir / "x2x_model.json").read_text())
    typer.echo(f"trained {meta['model_id']} ({meta['training']['steps']} steps, final loss "
               f"{meta['training']['final_loss']}) -> {model_dir}  (use: x2x edit --model {model_dir})")


@app.command("eval")
def eval_command(
    folder: Path = typer.Argument(..., exists=True, file_okay=False,
                                  help="Case folders (source + counterfactual + mask + result.json) or "
                                       "cases.csv; see editor/training/eval_cases.py."),
    classifier: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                              help="Local TorchScript classifier .pt (with its .json sidecar)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON report here."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON report instead of the table."),
) -> None:
    """Locality, fidelity outside the mask, laterality (and classifier metrics when configured)."""
    from editor.training.evaluate import evaluate, summary_table, to_json

    try:
        report = evaluate(folder, classifier=classifier)
    except (ValueError, FileNotFoundError) as exc:
        fail("eval", str(exc), "give case folders or a cases.csv as docs/research.md describes", code=2, cause=exc)
    text = to_json(report)
    if out is not None:
        out.write_text(text)
    if as_json:
        typer.echo(text)
    else:
        _console().print(summary_table(report))
