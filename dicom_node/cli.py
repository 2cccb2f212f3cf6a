"""Entry point of the `x2x` command: imports each command module so it registers itself."""

from __future__ import annotations

from dicom_node.cli_apps import app
from dicom_node.commands import (  # noqa: F401  (imported to register their commands)
    admin,
    batch,
    bench_edit,
    bench_ingest,
    core,
    demo,
    edit,
    jobs,
    reproduce,
    research,
    serve,
    worker,
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
