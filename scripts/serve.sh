#!/usr/bin/env bash
# Quick start, command 1: set everything up and start the DICOM node with its embedded defaults
# (spool + job DB under ./var, SQLite queue, C-STORE on 11112, REST + dashboard on 8000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/x2x serve "$@"
