"""`x2x version`, `x2x config show`, `x2x model init-tiny`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from dicom_node.cli.apps import app, config_app, config_path, model_app, settings
from dicom_node.cli.errors import MODEL_HELP, fail
from dicom_node.config import Settings


@app.command()
def version() -> None:
    """Print the versions of this package and the libraries it stands on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    out: dict[str, str | None] = {}
    for dist in ("instructx2x-node", "pydicom", "pynetdicom", "highdicom", "torch", "diffusers", "transformers"):
        try:
            out[dist] = dist_version(dist)
        except PackageNotFoundError:
            out[dist] = None
    typer.echo(json.dumps(out, indent=2))


@config_app.command("show")
def config_show() -> None:
    """Print the effective configuration (file + environment) as JSON; secrets are masked."""
    typer.echo(json.dumps(settings().masked_dict(), indent=2, default=str))


@config_app.command("check")
def config_check(
    probe: bool = typer.Option(False, "--probe", help="Also contact every destination: C-ECHO for cstore, HTTP "
                               "OPTIONS/GET for stow, a probe file for folder."),
    skip_ports: bool = typer.Option(False, "--skip-ports", help="Do not check that node.port and api.port are "
                                    "free (e.g. while this node is running)."),
) -> None:
    """Check everything before traffic: keys, model, destinations, rules, instructions, TLS files, ports,
    folders. One line per problem; exit code 2 when there is an error (warnings only: 0)."""
    from dicom_node.config import ConfigError, load_settings

    try:
        s = load_settings(config_path())
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"x2x config check: {problem}", err=True)
        typer.echo(f"x2x config check: {len(exc.problems)} problem(s) in the configuration. To fix: correct these "
                   "keys in the file (or their X2X_* variables); `x2x config reference` lists every key", err=True)
        raise typer.Exit(code=2) from None
    if not report_problems("config check", s, probe=probe, ports=not skip_ports):
        raise typer.Exit(code=2)
    model = s.model.path or "default (phantom demo model)"
    typer.echo(f"config OK: model {model}; {len(s.destinations)} destination(s)"
               f"{' reachable' if probe and s.destinations else ''}; {len(s.rules)} rule(s); "
               f"AE titles {', '.join(s.known_called_aes())}")


def report_problems(command: str, s: Settings, *, probe: bool = False, ports: bool = True) -> bool:
    """Run config_check on `s`, print one line per problem to stderr; True when there is no error."""
    from dicom_node.config_check import check_settings, errors

    problems = check_settings(s, probe=probe, ports=ports)
    for problem in problems:
        typer.echo(f"x2x {command}: {problem.line()}", err=True)
    if errors(problems):
        again = "run it again" if command == "config check" else "`x2x config check` repeats these checks"
        typer.echo(f"x2x {command}: {len(errors(problems))} error(s) in the configuration"
                   f"{'' if command == 'config check' else '; not starting'}. To fix: correct the keys named "
                   f"above ({again})", err=True)
        return False
    return True


@model_app.command("init-tiny")
def model_init_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write the diffusers model to."),
    seed: int = typer.Option(0, help="Seed of the random weights (same seed, same bytes)."),
) -> None:
    """Write a tiny RANDOM-weight InstructPix2Pix model (a test fixture: its edits are meaningless)."""
    from editor import init_tiny_model

    path = init_tiny_model(out_dir, seed=seed)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    typer.echo(f"wrote tiny random fixture model to {path} ({size / 1e6:.1f} MB); NOT a medical model")


@config_app.command("reference")
def config_reference() -> None:
    """Print the configuration reference (every key, type, default) as Markdown."""
    from dicom_node.cli.references import render_config_markdown

    typer.echo(render_config_markdown())


@model_app.command("info")
def model_info(
    path: Path = typer.Argument(None, help="Model folder or single file (default: the node's configured model)."),
) -> None:
    """Print a model's id, weights hash, resolution and kind (no model is built)."""
    from dicom_node.context import resolve_model_path
    from editor import ModelLoadError, describe_model

    target = path or resolve_model_path(settings())
    try:
        info = describe_model(target)
    except ModelLoadError as exc:
        fail("model info", str(exc), MODEL_HELP, cause=exc)
    typer.echo(json.dumps({"path": str(target), **info.__dict__}, indent=2))


@model_app.command("convert")
def model_convert(
    checkpoint: Path = typer.Argument(..., exists=True, help="Original-format .ckpt / .safetensors file."),
    out_dir: Path = typer.Argument(..., help="Diffusers folder to write."),
    config: Path = typer.Option(
        ..., "--config", exists=True, file_okay=False,
        help="Local diffusers config folder of the SD1.5 InstructPix2Pix layout (see docs/models.md).",
    ),
) -> None:
    """Convert a single-file InstructPix2Pix checkpoint once into a diffusers folder (offline)."""
    from editor.model import ModelLoadError, load_model, save_model_folder

    try:
        loaded = load_model(checkpoint, device="cpu", dtype="float32", single_file_config=config)
    except ModelLoadError as exc:
        fail("model convert", str(exc), "give the original-format checkpoint and the SD1.5 InstructPix2Pix "
             "config folder (docs/models.md)", cause=exc)
    save_model_folder(loaded, out_dir)
    typer.echo(f"wrote {out_dir} (model id {loaded.model_id}, source weights sha256 {loaded.weights_hash[:16]}…)")


@config_app.command("cli-reference")
def cli_reference() -> None:
    """Print the command-line reference (every command and option) as Markdown."""
    import typer.main

    from dicom_node.cli.references import render_cli_markdown

    typer.echo(render_cli_markdown(typer.main.get_command(app)), nl=False)
