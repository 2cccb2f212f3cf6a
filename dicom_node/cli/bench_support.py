"""What the `x2x bench` commands share: real programs (dcmtk, Orthanc, `x2x serve`) on free local ports,
the chest CR, and a busy core.

Orthanc is the reference PACS of the ingest benchmark: its stock Debian build (`/usr/sbin/Orthanc`),
storage and index in a scratch folder, no plugins, otherwise its default settings, DICOM on 127.0.0.1.
It stores every instance (file + SQLite index row) before answering; TCP_NODELAY=1 as for dcmtk tools."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")  # dcmtk waits for Nagle + delayed ACK without it
ORTHANC_BINARY = "/usr/sbin/Orthanc"


def dcmtk(tool: str) -> str:
    """Path of dcmtk's `tool`. pynetdicom installs apps with the same names (storescu, storescp,
    echoscu) into this Python environment's scripts folder, first on PATH in an activated venv, and
    they take other options: skip that folder."""
    own_scripts = str(Path(sys.executable).parent)
    search = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d != own_scripts)
    path = shutil.which(tool, path=search)
    if path is None:
        raise FileNotFoundError(f"{tool} (dcmtk) is required for this benchmark")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chest_cr_path() -> Path:
    """pydicom-data's chest CR (RG1_UNCR.dcm, 1955 x 1841, MONOCHROME1)."""
    from data_store import data as data_pkg  # type: ignore[import-not-found]

    return Path(data_pkg.__path__[0]) / "RG1_UNCR.dcm"


def wait_echo(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0, called_ae: str = "X2X") -> None:
    """C-ECHO until the receiver answers (the node's AE title by default: it refuses unknown ones)."""
    echoscu = dcmtk("echoscu")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before answering C-ECHO")
        r = subprocess.run([echoscu, "-aec", called_ae, "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("receiver did not answer C-ECHO in time")


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group `pgid` (Linux /proc)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # after ")": state, ppid, pgrp, ..., utime (12th), stime (13th)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_settled(proc: subprocess.Popen[bytes], timeout: float = 30.0, window: float = 0.5,
                 below_cores: float = 0.1) -> float:
    """Wait until a receiver started with start_new_session=True has finished starting up: its whole
    process group (receiver processes, worker children) uses under `below_cores` of a core over `window`
    seconds. `x2x serve` answers C-ECHO seconds before its embedded worker has imported its libraries;
    measured from the first echo, that start-up shares the cores with the instances. Returns the seconds
    waited (`timeout` if it never settled: the measurement goes on, on a busy receiver)."""
    t0 = time.monotonic()
    last = _group_cpu_seconds(proc.pid)
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        time.sleep(window)
        now = _group_cpu_seconds(proc.pid)
        if now - last < below_cores * window:
            break
        last = now
    return round(time.monotonic() - t0, 2)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of a child started with start_new_session=True (SIGKILL after 30 s)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def orthanc(work: Path, name: str = "orthanc") -> Iterator[tuple[int, Path]]:
    """A fresh Orthanc on a free DICOM port; yields (port, storage folder)."""
    if not Path(ORTHANC_BINARY).exists():
        raise FileNotFoundError(f"{ORTHANC_BINARY} (Orthanc) is required for this benchmark")
    folder = work / name
    folder.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": "x2x-bench-reference", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": free_port(), "DicomPort": port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "UnknownSopClassAccepted": True,
        "Plugins": [],  # otherwise stock settings
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - handed to the child
    # Orthanc's DICOM server is dcmtk's: without TCP_NODELAY its C-STORE responses wait for Nagle.
    proc = subprocess.Popen([ORTHANC_BINARY, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder, start_new_session=True, env=DCMTK_ENV)
    log.close()
    try:
        wait_echo(port, proc)
        wait_settled(proc)
        yield port, folder / "db"
    finally:
        stop_process(proc)


@contextlib.contextmanager
def busy_core() -> Iterator[subprocess.Popen[bytes]]:
    """A process spinning on one core until the block ends (standing in for the SCP or another job)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield hog
    finally:
        hog.kill()
        hog.wait()
