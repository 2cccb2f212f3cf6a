"""`x2x reproduce TABLE --classifiers DIR --out DIR`: the paper's evaluation over the test split.

Thin wrapper over editor/evaluation/reproduce.py (docs/research.md §4): every test-split row of a
MIMIC-EDIT-INSTRUCTION table (v1 or v2) is edited by each method (plain IP2P, the paper's fixed masks,
the per-image anatomy prior, a tau sweep), resumably, and scored with torchxrayvision's classifiers from
a local folder; writes report.md / report.json / figure.png. Every counterfactual is SYNTHETIC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dicom_node.cli.apps import app, settings


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from exc


@app.command("reproduce")
def reproduce_command(
    table: Path = typer.Argument(..., exists=True,
                                 help="MIMIC-EDIT-INSTRUCTION instructions.csv, or a folder holding it."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (resumable: rerun the same command)."),
    classifiers: Optional[Path] = typer.Option(
        None, "--classifiers", file_okay=False,
        help="Folder of torchxrayvision weight files (docs/research.md). Without it: locality only."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder (default: configured)."),
    images: Optional[Path] = typer.Option(None, "--images", file_okay=False,
                                          help="Image root (images/, past/, current/); default: the table's folder."),
    jpg_root: Optional[Path] = typer.Option(None, "--jpg-root", file_okay=False,
                                            help="MIMIC-CXR-JPG root (files/pXX/...); needs --metadata."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", dir_okay=False,
                                            help="mimic-cxr-2.0.0-metadata.csv(.gz) for --jpg-root."),
    split: str = typer.Option("test", help="Split of the table to evaluate."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N rows of the split."),
    methods: str = typer.Option("ip2p,anatomy", help="Comma list of ip2p, paper, anatomy, none "
                                                      "(paper is added when --paper-masks is given)."),
    paper_masks: Optional[Path] = typer.Option(None, "--paper-masks", file_okay=False,
                                               help="Folder of pseudo_mask_<Finding>.npy (method 'paper')."),
    tau: float = typer.Option(0.1, min=0.0, max=1.0, help="Guidance threshold of the RSE methods."),
    tau_sweep: str = typer.Option("", help="Extra thresholds for the anatomy prior, e.g. 0.05,0.2,0.3."),
    seed: int = typer.Option(0, help="Seed of every edit (the same for every method: paired comparison)."),
    steps: int = typer.Option(100, min=1, help="DDIM steps (paper: 100)."),
    batch_size: int = typer.Option(1, min=1, help="Rows handed to the editor at a time."),
    bootstrap: int = typer.Option(1000, min=0, help="Bootstrap resamples for the 95 % intervals (0: none)."),
    figure_rows: int = typer.Option(8, min=0, help="Rows in figure.png."),
    pathology_weights: str = typer.Option("densenet121-res224-all", help="torchxrayvision DenseNet weights name."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (default: [model] device)."),
) -> None:
    """Reproduce the paper's table (CMIG, race accuracy, age correlation, locality, FID). SYNTHETIC output."""
    from dicom_node.context import resolve_model_path
    from editor.evaluation.classifiers import ClassifierError, XrvClassifiers
    from editor.evaluation.methods import build_methods
    from editor.evaluation.reproduce import ReproduceConfig, RunMismatch, run
    from editor.evaluation.xrv_weights import PATHOLOGY_WEIGHTS
    from editor.model import ModelLoadError, describe_model, disable_progress_bars
    from editor.types import EditParams

    def fail(message: str) -> typer.Exit:
        typer.echo(f"x2x reproduce: {message}", err=True)
        return typer.Exit(code=2)

    cfg = settings()
    names = [n.strip() for n in methods.split(",") if n.strip()]
    if paper_masks is not None and "paper" not in names:
        names.append("paper")
    try:
        method_list = build_methods(names, tau=tau, tau_sweep=_floats(tau_sweep),
                                    paper_masks=str(paper_masks) if paper_masks else None)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if pathology_weights not in PATHOLOGY_WEIGHTS:
        raise fail(f"--pathology-weights must be one of {', '.join(PATHOLOGY_WEIGHTS)}")
    disable_progress_bars()
    model_path = model if model is not None else resolve_model_path(cfg)
    device_name = device or cfg.model.device
    clf = None
    if classifiers is not None:
        import torch

        use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        try:
            clf = XrvClassifiers.from_folder(classifiers, pathology=pathology_weights,
                                             device="cuda" if use_cuda else "cpu")
        except (ClassifierError, ValueError) as exc:
            raise fail(str(exc)) from exc
    try:
        info = describe_model(model_path)
    except ModelLoadError as exc:
        raise fail(str(exc)) from exc

    def editor_factory():  # type: ignore[no-untyped-def]
        from editor.editor import Editor

        return Editor.from_pretrained(model_path, device=device_name, dtype=cfg.model.dtype,
                                      single_file_config=cfg.model.single_file_config)

    run_cfg = ReproduceConfig(
        table=table, out=out, methods=method_list, base_params=EditParams(steps=steps, tau=tau), split=split,
        limit=limit, images_root=images, jpg_root=jpg_root, metadata=metadata, seed=seed, batch_size=batch_size,
        bootstrap=bootstrap, figure_rows=figure_rows,
        model={"model_id": info.model_id, "weights_hash": info.weights_hash, "kind": info.kind},
    )

    def progress(name: str, done: int, total: int) -> None:
        typer.echo(f"  {name}: {done}/{total} rows", err=True)

    try:
        report = run(run_cfg, editor_factory, classifiers=clf, progress=progress)
    except (RunMismatch, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    for entry in report["methods"]:
        m = entry["metrics"]
        typer.echo(f"{entry['name']:>16}: CMIG {100 * m['cmig']:.2f}  race {100 * m['race_accuracy']:.2f}  "
                   f"age r {100 * m['age_correlation']:.2f}  rows {int(m['rows'])}")
    typer.echo(f"SYNTHETIC counterfactuals; report: {out / 'report.md'} (JSON: {out / 'report.json'})")
