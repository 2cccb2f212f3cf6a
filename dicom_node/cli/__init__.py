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
    bench_stages,
    bench_threads,
    core,
    demo,
    edit,
    jobs,
    research,
    serve,
    worker,
)
from dicom_node.cli.apps import app


def main() -> None:
    app()


__all__ = ["app", "main"]
