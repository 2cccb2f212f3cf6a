"""Structural rules: imports flow one way (editor never imports dicom_node)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_editor_never_imports_dicom_node() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(path) if m.split(".")[0] == "dicom_node")
        for path in (ROOT / "editor").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_editor_does_not_load_dicom_node() -> None:
    code = "import sys, editor; assert not any(m.startswith('dicom_node') for m in sys.modules), 'dicom_node loaded'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_cli_help_does_not_import_torch() -> None:
    # `x2x --help` must stay instant: heavy libraries load inside the commands that need them.
    code = "import sys; from dicom_node.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
