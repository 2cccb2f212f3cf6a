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


# The import graph -------------------------------------------------------------------------------
PACKAGES = ("editor", "dicom_node")
MAX_MODULE_LINES = 420  # "about 400": a module that grows past this is split
# Modules still over the limit, each waiting for its split (the list may only shrink).
OVERSIZED: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _targets(node: ast.AST, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules one import statement uses (a submodule, never its package's __init__ for it)."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                out.add(alias.name)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = here.split(".") if is_package else here.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            if sub in known:
                out.add(sub)
            elif module in known:
                out.add(module)
    return out


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):  # function-level imports count: a cycle hidden in a function is a cycle
            edges |= _targets(node, name, path.name == "__init__.py", known)
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_anywhere() -> None:
    graph = _import_graph()
    assert "dicom_node.jobs.queue" in graph and graph["dicom_node.cli"], "the graph was built"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    too_big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES and name not in OVERSIZED}
    assert too_big == {}, f"split these modules (> {MAX_MODULE_LINES} lines): {too_big}"
    assert all(sizes[name] > MAX_MODULE_LINES for name in OVERSIZED), "remove split modules from OVERSIZED"


def test_dicom_node_uses_the_editor_only_through_its_seam() -> None:
    """Outside the research commands (dicom_node/cli, dicom_node/tools), dicom_node imports only names that
    `editor/__init__` exports."""
    import editor

    offenders: dict[str, list[str]] = {}
    for path in (ROOT / "dicom_node").rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[1] in ("cli", "tools"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "editor":
                names = [a.name for a in node.names]
                if node.module != "editor" or set(names) - set(editor.__all__):
                    offenders.setdefault(str(rel), []).append(f"from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "editor" for a in node.names):
                offenders.setdefault(str(rel), []).append("import editor...")
    assert offenders == {}
