"""Headless Chromium (Debian's package) for tests that look at rendered pages."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from tests.conftest import require_tool


def chromium(tmp_path: Path, url: str, *mode: str, budget_ms: int = 3000) -> subprocess.CompletedProcess[bytes]:
    """Run Chromium headless on `url` with `mode` (e.g. "--dump-dom", "--screenshot=FILE"), letting the
    page's scripts run for `budget_ms` of virtual time first."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or require_tool("chromium")
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:6]}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
           "--window-size=1280,900", "--hide-scrollbars", f"--virtual-time-budget={budget_ms}", *mode, url]
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r
