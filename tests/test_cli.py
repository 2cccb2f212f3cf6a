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


def _params_with_help(path: list[str]) -> list[tuple[str, str]]:
    import typer.main

    from dicom_node.cli import app

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return [(p.name, getattr(p, "help", None) or "") for p in cmd.params if p.name != "help"]


@pytest.mark.parametrize("path", [p for p in _all_command_paths() if p], ids=lambda p: " ".join(p))
def test_help_shows_every_option_with_its_text(path: list[str]) -> None:
    """`--help` once printed '(default:  device)': Rich markup ate '[model]'. Every parameter has a help
    text, and the rendered help contains it whole, brackets included."""
    from typer.testing import CliRunner

    from dicom_node.cli import app

    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    rendered = " ".join(result.output.split())
    for name, text in _params_with_help(path):
        assert text, f"x2x {' '.join(path)}: parameter {name} has no help text"
        assert " ".join(text.split()) in rendered, f"x2x {' '.join(path)} --help lost part of: {text!r}"
    assert "(default: )" not in rendered and "(default:  " not in result.output


@pytest.mark.slow
def test_cli_errors_are_one_line_with_what_to_do(tmp_path, chest_cr_path) -> None:
    args = ["edit", str(chest_cr_path), "-i", "Add the finding of pleural effusion.", "-o", str(tmp_path / "o")]
    out = _run(*args, "--model", "/nope/model")
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "model path /nope/model does not exist. To fix: " in out.stderr and "Traceback" not in out.stderr
    debug = _run("--debug", *args, "--model", "/nope/model")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ModelLoadError" in debug.stderr

    misspelt = _run("edit", str(chest_cr_path), "-i", "Add the finding of pleural efusion.", "-o", str(tmp_path))
    assert misspelt.returncode == 2 and misspelt.stderr.strip().count("\n") == 0
    assert misspelt.stderr.count("did you mean") == 1, misspelt.stderr  # once, not twice

    cfg = tmp_path / "x2x.toml"
    cfg.write_text("[node]\nprot = 104\n")
    bad = _run("--config", str(cfg), "config", "show")
    assert bad.returncode == 2 and "did you mean 'port'" in bad.stderr and "To fix: " in bad.stderr


@pytest.mark.slow
def test_edit_shows_progress_on_a_terminal_and_nothing_in_a_pipe(tmp_path, tiny_model_dir, chest_cr_path,
                                                                  monkeypatch) -> None:
    from tests.support.dicom_files import renumbered_copy
    from tests.support.terminal import run_on_terminal

    small = renumbered_copy(chest_cr_path, tmp_path / "small.dcm", crop=384)  # the steps matter, not the size
    monkeypatch.setenv("X2X_EDIT__RESOLUTION", "128")
    args = ["edit", str(small), "-i", "Add the finding of pleural effusion.", "--model",
            str(tiny_model_dir), "--steps", "3"]
    code, stdout, terminal = run_on_terminal([*X2X, *args, "-o", str(tmp_path / "tty")], timeout=300)
    assert code == 0, terminal[-2000:]
    assert "SYNTHETIC edit" in stdout  # the result line stays on stdout
    assert "3 DDIM steps" in terminal and "3/3" in terminal, terminal[-2000:]
    piped = _run(*args, "-o", str(tmp_path / "pipe"))
    assert piped.returncode == 0 and "SYNTHETIC edit" in piped.stdout
    assert "DDIM" not in piped.stderr and "loading model" not in piped.stderr
