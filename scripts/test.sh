#!/usr/bin/env bash
# Quick start, command 2: set up if needed and run the whole test suite with the quality gates
# (ruff, mypy, pytest). Fails when any gate fails or when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests talk to real programs; install them from Debian when missing and we may.
need=()
command -v storescu >/dev/null || need+=(dcmtk)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancWebViewer.so ] || need+=(orthanc-webviewer)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v npm >/dev/null || need+=(npm)  # fetches the pinned OHIF viewer for tests/test_viewer_ohif.py
if [ ${#need[@]} -gt 0 ]; then
  echo "x2x test: installing Debian packages: ${need[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

bash scripts/setup.sh

export TCP_NODELAY=1  # dcmtk: avoid ~47 ms Nagle stalls per C-STORE
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "x2x test: pytest collected no tests — failing" >&2
  exit 1
fi
exit "$rc"
