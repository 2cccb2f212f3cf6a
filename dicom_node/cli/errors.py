"""How `x2x` reports an error: one line, what went wrong and what to do, exit code 1 or 2 — never a
traceback unless `x2x --debug` (or X2X_DEBUG=1).

Commands report the errors they expect with `fail(...)`; `run(app)` (the `x2x` entry point) turns any other
exception into the same one line, with a hint chosen by the exception's type.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer

INSTRUCTION_HELP = (
    "write 'Add the finding of X.', 'Remove the finding of X.' or 'Change the level of X from A to B.' "
    "naming findings the editor knows (the message suggests the closest)"
)
MODEL_HELP = (
    "point --model or [model] path at a diffusers model folder (with model_index.json) or a .ckpt/.safetensors "
    "file; `x2x model info PATH` checks one (docs/models.md)"
)
CONFIG_HELP = "fix it in the config file or its X2X_* variable; `x2x config check` lists every problem"
DEBUG_HELP = "rerun with `x2x --debug ...` for the full traceback"

# exception class name (anywhere in its MRO) -> what to do; names, so no library is imported to compare
_HINTS: tuple[tuple[str, str], ...] = (
    ("ModelLoadError", MODEL_HELP),
    ("InstructionError", INSTRUCTION_HELP),
    ("UnsupportedImageError", "give a DICOM image (CR/DX), a PNG, a JPEG or a .npy array"),
    ("InvalidEditParams", "fix the value in [edit] or the option; `x2x config reference` lists the bounds"),
    ("ConfigError", CONFIG_HELP),
    ("SpoolInUse", "stop the other `x2x serve`, or give this node its own [paths] var_dir (or spool_dir)"),
    ("SchemaTooNew", "upgrade x2x, or point [database] url at another database"),
    ("OperationalError", "check [database] url and that the database server is up"),
    ("OutOfMemoryError", "use fewer --steps or a smaller [edit] resolution, or run on a GPU with more memory"),
    ("MemoryError", "use fewer --steps or a smaller [edit] resolution, or a machine with more memory"),
    ("PermissionError", "check that this user may read (and write) that path"),
    ("FileNotFoundError", "check the path"),
    ("IsADirectoryError", "give a file, not a folder"),
    ("ConnectionError", "check that the other side is running and reachable (host, port, firewall)"),
    ("OSError", "check the path, free disk space and permissions"),
)

_debug = {"on": False}


def set_debug(on: bool) -> None:
    _debug["on"] = on


def debug_enabled() -> bool:
    return _debug["on"]


def line(command: str, message: str, fix: str | None) -> str:
    """`x2x edit: <what went wrong>. To fix: <what to do>` (one line)."""
    text = " ".join(str(message).split())  # one line, whatever the message held
    prefix = f"x2x {command}:" if command else "x2x:"
    return f"{prefix} {text}" + (f". To fix: {fix}" if fix else "")


def fail(command: str, message: str, fix: str | None = None, *, code: int = 1, cause: BaseException | None = None,
         ) -> NoReturn:
    """Print the one-line error and exit; with --debug the cause's traceback first."""
    if cause is not None and debug_enabled():
        import traceback

        traceback.print_exception(cause, file=sys.stderr)
    typer.echo(line(command, message, fix), err=True)
    raise typer.Exit(code=code)


def hint_for(exc: BaseException) -> str:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((hint for name, hint in _HINTS if name in names), DEBUG_HELP)


def run(app: Any) -> None:
    """The `x2x` entry point: the Typer app, with unexpected exceptions as one line (exit code 1)."""
    try:
        app()
    except Exception as exc:
        if debug_enabled():
            raise
        # The project's own errors read as sentences; anything else is named, as Python would.
        own = {"ModelLoadError", "InstructionError", "UnsupportedImageError", "InvalidEditParams", "ConfigError",
               "SchemaTooNew", "DatabaseUnusable", "SpoolInUse"}
        name = type(exc).__name__
        message = str(exc) if name in own and str(exc) else f"{name}: {exc}"
        typer.echo(line("", message, hint_for(exc)), err=True)
        sys.exit(1)
