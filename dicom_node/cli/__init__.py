"""The `x2x` command: one module per area, each registering its commands on the apps in cli/apps.py.

Command modules import heavy libraries (torch, diffusers) inside their functions so that `x2x --help`
stays instant.
"""

from __future__ import annotations

from dicom_node.cli import (  # noqa: F401  (imported to register their commands)
    admin,
    batch,
    bench_edit,
    bench_ingest,
    bench_node,
    bench_retrieve,
    bench_stages,
    bench_threads,
    core,
    demo,
    edit,
    jobs,
    reproduce,
    research,
    serve,
    studies,
    worker,
)
from dicom_node.cli.apps import app
from dicom_node.cli.errors import run


def main() -> None:
    """`x2x`: an unexpected error is one line with what to do (`x2x --debug` for the traceback)."""
    run(app)


__all__ = ["app", "main"]
