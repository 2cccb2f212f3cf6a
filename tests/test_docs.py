"""Docs that are generated from the code must be current; links in the docs must resolve; CI runs the
README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current() -> None:
    from dicom_node.cli.references import render_config_markdown as render_markdown

    text = (ROOT / "docs" / "config-reference.md").read_text()
    assert render_markdown() in text, "run: x2x config reference  (and paste into docs/config-reference.md)"


def test_cli_reference_is_current() -> None:
    import typer.main

    from dicom_node.cli import app
    from dicom_node.cli.references import render_cli_markdown

    def render_markdown() -> str:
        return render_cli_markdown(typer.main.get_command(app))

    assert (ROOT / "docs" / "cli-reference.md").read_text() == render_markdown(), (
        "run: x2x config cli-reference > docs/cli-reference.md"
    )


def test_relative_links_in_docs_resolve() -> None:
    broken = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S)
    assert quick_start, "README has no quick-start block"
    commands = [line.split("#")[0].strip() for line in quick_start.group(1).strip().splitlines()]
    assert len(commands) == 2, "the quick start is exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


def test_readme_demo_leaves_the_checkout_clean() -> None:
    """The demo's phantom studies used to land in an untracked demo/ folder of the checkout."""
    import shlex
    import subprocess

    readme = (ROOT / "README.md").read_text()
    demo = re.search(r"## See it work.*?```bash\n(.*?)```", readme, re.S)
    assert demo, "README has no demo block"
    (write,) = [ln for ln in demo.group(1).splitlines() if "phantom-studies" in ln]
    words = shlex.split(write.split("#")[0])
    folder = words[words.index("phantom-studies") + 1]
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder.rstrip('/')}/study-1.dcm"], cwd=ROOT)
    assert ignored.returncode == 0, f"{folder} is not ignored by git: the demo would leave untracked files"
    assert f"{folder.rstrip('/')}/*.dcm" in demo.group(1), "the demo sends what it wrote"


def test_operations_has_the_first_day_mistakes() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    section = re.search(r"## First day.*?\n(.*?)(?:\n## |\Z)", text, re.S)
    assert section, "docs/operations.md has no First day section"
    items = re.findall(r"^\s*(\d+)\. \*\*", section.group(1), re.M)
    assert items == [str(i) for i in range(1, 11)], items
