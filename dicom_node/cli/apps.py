"""The `x2x` Typer application objects, shared by the command modules in `dicom_node.cli`.

Command modules import heavy libraries (torch, diffusers) inside their functions so that
`x2x --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from dicom_node.cli.errors import CONFIG_HELP, fail, set_debug
from dicom_node.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from dicom_node.context import NodeContext

# Help is plain text (no Rich markup): help strings name config keys as "[edit] steps", which Rich markup
# would swallow as style tags ("(default:  steps)").
app = typer.Typer(
    name="x2x",
    help="InstructX2X DICOM node: region-specific counterfactual chest X-ray editing beside a PACS. "
    "Every output is synthetic.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _group(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


config_app = _group("Show and check the configuration.")
model_app = _group("Create and inspect models.")
jobs_app = _group("Inspect and manage jobs (list, show, retry, cancel).")
studies_app = _group("What arrived: studies, their edit request (or its error), every skipped instance and why.")
dataset_app = _group("Build training data (MIMIC-EDIT-INSTRUCTION, phantoms).")
bench_app = _group("Benchmarks printing JSON with ratios against a reference.")

app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(jobs_app, name="jobs")
app.add_typer(studies_app, name="studies")
app.add_typer(dataset_app, name="dataset")
app.add_typer(bench_app, name="bench")

_state: dict[str, Optional[Path]] = {"config": None}


@app.callback()
def _main(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", envvar="X2X_CONFIG", help="TOML config file (else $X2X_CONFIG)."
    ),
    debug: bool = typer.Option(
        False, "--debug", envvar="X2X_DEBUG", help="On an error, show the full traceback (else one line)."
    ),
) -> None:
    _state["config"] = config
    set_debug(debug)


def config_path() -> Optional[Path]:
    """The --config file of this invocation (else $X2X_CONFIG is read by load_settings)."""
    return _state["config"]


def settings() -> Settings:
    """The effective settings; an invalid config exits with code 2 and a one-line error."""
    try:
        return load_settings(_state["config"])
    except ConfigError as exc:
        fail("", str(exc), CONFIG_HELP, code=2, cause=exc)


def node_context(s: Settings | None = None) -> NodeContext:
    """The node's context (database opened and migrated); a database this x2x cannot use exits with
    code 2 and one line saying which database and what to do."""
    from dicom_node.context import build_context
    from dicom_node.db.migrate import DatabaseUnusable

    try:
        return build_context(s if s is not None else settings())
    except DatabaseUnusable as exc:  # damaged, locked, unopenable or too new: its message says what to do
        fail("", str(exc), None, code=2, cause=exc)
