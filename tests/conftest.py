"""Shared fixtures: the tiny random model, the real chest CR, free ports, dcmtk environment."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

# dcmtk waits ~47 ms per C-STORE on Nagle without this (ARCHITECTURE.md §5).
os.environ.setdefault("TCP_NODELAY", "1")
# pynetdicom's apps named storescu/storescp/echoscu sit in this environment's scripts folder, first on
# PATH when the venv is activated; the tests mean dcmtk's. Search that folder last.
_own_scripts = str(Path(sys.executable).parent)
os.environ["PATH"] = os.pathsep.join(
    [d for d in os.environ.get("PATH", "").split(os.pathsep) if d != _own_scripts] + [_own_scripts]
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight IP2P fixture model, built once per test session."""
    from editor.tiny import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def chest_cr_path() -> Path:
    """pydicom-data's real chest CR: MONOCHROME1, 15 bits stored, 1955 x 1841, PA, L\\F."""
    if os.environ.get("X2X_TEST_CHEST_CR"):  # e.g. on a GPU machine without pydicom-data installed
        return Path(os.environ["X2X_TEST_CHEST_CR"])
    from data_store import data as _data_pkg  # type: ignore[import-not-found]

    path = Path(_data_pkg.__path__[0]) / "RG1_UNCR.dcm"
    if not path.exists():  # pragma: no cover - layout of pydicom-data changed
        matches = list(Path(_data_pkg.__path__[0]).rglob("RG1_UNCR.dcm"))
        assert matches, "pydicom-data does not ship RG1_UNCR.dcm"
        path = matches[0]
    return path


@pytest.fixture(scope="session")
def pydicom_data_dir(chest_cr_path: Path) -> Path:
    return chest_cr_path.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


def require_tool(name: str) -> str:
    """Path of an external program the tests need; .ci/run installs them, so absence is a failure."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"required program {name!r} is not installed (run .ci/run or see README)")
    return path
