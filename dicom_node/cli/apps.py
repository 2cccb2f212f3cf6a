"""The `x2x` Typer application objects, shared by the command modules in `dicom_node.cli`.

Command modules import heavy libraries (torch, diffusers) inside their functions so that
`x2x --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from dicom_node.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from dicom_node.context import NodeContext

app = typer.Typer(
    name="x2x",
    help="InstructX2X DICOM node: region-specific counterfactual chest X-ray editing beside a PACS. "
    "Every output is synthetic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show and check the configuration.", no_args_is_help=True)
model_app = typer.Typer(help="Create and inspect models.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and manage jobs (list, show, retry, cancel).", no_args_is_help=True)
dataset_app = typer.Typer(help="Build training data (MIMIC-EDIT-INSTRUCTION, phantoms).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks printing JSON with ratios against a reference.", no_args_is_help=True)

app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(jobs_app, name="jobs")
app.add_typer(dataset_app, name="dataset")
app.add_typer(bench_app, name="bench")

_state: dict[str, Optional[Path]] = {"config": None}


@app.callback()
def _main(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", envvar="X2X_CONFIG", help="TOML config file (else $X2X_CONFIG)."
    ),
) -> None:
    _state["config"] = config


def settings() -> Settings:
    """The effective settings; an invalid config exits with code 2 and a one-line error."""
    try:
        return load_settings(_state["config"])
    except ConfigError as exc:
        typer.echo(f"x2x: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def node_context(s: Settings | None = None) -> NodeContext:
    """The node's context (database opened and migrated); a database this x2x cannot use exits with
    code 2 and one line saying which database and what to do."""
    from dicom_node.context import build_context
    from dicom_node.db.migrate import DatabaseUnusable

    try:
        return build_context(s if s is not None else settings())
    except DatabaseUnusable as exc:  # damaged, locked, unopenable or too new: one line, exit 2
        typer.echo(f"x2x: {exc}", err=True)
        raise typer.Exit(code=2) from exc
