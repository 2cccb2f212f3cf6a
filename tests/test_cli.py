"""The `x2x` command line: help everywhere, version, init-tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

X2X = [sys.executable, "-m", "dicom_node.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*X2X, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for command in ("version", "config", "model", "jobs", "dataset", "bench"):
        assert command in out.stdout


def _all_command_paths() -> list[list[str]]:
    """Every command and subcommand path registered on the Typer app."""
    import typer.main

    from dicom_node.cli import app

    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(cmd: object, prefix: list[str]) -> None:
        paths.append(prefix)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "x2x")
def test_every_command_has_help(path: list[str]) -> None:
    from typer.testing import CliRunner

    from dicom_node.cli import app

    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version_prints_json() -> None:
    out = _run("version")
    assert out.returncode == 0
    versions = json.loads(out.stdout)
    assert versions["instructx2x-node"] and versions["pydicom"] and versions["diffusers"]
