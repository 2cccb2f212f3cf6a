"""`x2x bench ingest`: C-STORE ingest rate of `x2x serve` against dcmtk's storescp, same data, same run.

Both receivers get the same N instances (~1 MB each, made from pydicom-data's chest CR with new UIDs)
from dcmtk `storescu` (TCP_NODELAY=1, as every dcmtk tool here): once over one association, once split
over 8 concurrent associations (dcmtk side: `storescp --fork`). Our node fsyncs every instance before
answering (durable spool); storescp does not fsync. Prints JSON with instances/s and ratios ours/dcmtk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from dicom_node.cli.apps import bench_app
from dicom_node.cli.errors import fail

_ENV = dict(os.environ, TCP_NODELAY="1")


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_instances(out_dir: Path, count: int, target_bytes: int = 1_000_000) -> list[Path]:
    """`count` copies of the chest CR, cropped to about `target_bytes` of pixel data, new UIDs."""
    import math

    import pydicom
    from data_store import data as data_pkg  # type: ignore[import-not-found]
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(Path(data_pkg.__path__[0]) / "RG1_UNCR.dcm")
    side = int(math.sqrt(target_bytes / (src.BitsAllocated // 8)))
    pixels = src.pixel_array[:side, :side].copy()
    src.Rows, src.Columns = pixels.shape
    src.PixelData = pixels.tobytes()
    study = generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        src.StudyInstanceUID = study
        src.SOPInstanceUID = generate_uid()
        src.file_meta.MediaStorageSOPInstanceUID = src.SOPInstanceUID
        path = out_dir / f"{i:05d}.dcm"
        src.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# The node's default AE title (it refuses unknown called AE titles); storescp accepts any.
CALLED_AE = "X2X"


def _wait_echo(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    echoscu = dcmtk("echoscu")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before answering C-ECHO")
        r = subprocess.run([echoscu, "-aec", CALLED_AE, "127.0.0.1", str(port)], env=_ENV, capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError("receiver did not answer C-ECHO in time")


def _send(port: int, files: list[Path], concurrency: int) -> float:
    """Seconds for `concurrency` storescu processes (one association each) to send all files."""
    groups = [files[i::concurrency] for i in range(concurrency)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([dcmtk("storescu"), "-R", "-aec", CALLED_AE, "127.0.0.1", str(port), *map(str, g)], env=_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for g in groups if g
    ]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError("storescu failed: " + b" ".join(errors).decode(errors="replace")[-2000:])
    return seconds


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def _storescp(work: Path, fork: bool) -> Iterator[tuple[int, Path]]:
    out = work / f"storescp-{'fork' if fork else 'single'}"
    out.mkdir()
    port = _free_port()
    cmd = [dcmtk("storescp"), *(["--fork"] if fork else []), "-od", str(out), str(port)]
    proc = subprocess.Popen(cmd, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_echo(port, proc)
        yield port, out
    finally:
        _stop(proc)


@contextlib.contextmanager
def _x2x(work: Path, name: str, receiver_processes: int | None, fsync: bool = True
         ) -> Iterator[tuple[int, Path]]:
    var = work / f"x2x-{name}"
    var.mkdir()
    port = _free_port()
    env = dict(_ENV, X2X_NODE__HOST="127.0.0.1", X2X_NODE__PORT=str(port), X2X_PATHS__VAR_DIR=str(var),
               X2X_API__ENABLED="false", X2X_API__PORT=str(_free_port()),
               X2X_NODE__STUDY_QUIET_SECONDS="3600")  # no study processing during the measurement
    if not fsync:
        env["X2X_NODE__SPOOL_FSYNC"] = "false"
    if receiver_processes is not None:
        env["X2X_NODE__RECEIVER_PROCESSES"] = str(receiver_processes)
    x2x = str(Path(sys.executable).with_name("x2x"))
    log = open(var / "node.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([x2x, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        _wait_echo(port, proc)
        yield port, var / "spool"
    finally:
        _stop(proc)


def _fsync_cost_ms(folder: Path, n: int = 20) -> float:
    """What one durable 1 MB write (write + fsync) costs on this disk right now."""
    data = os.urandom(1_000_000)
    path = folder / "fsync-probe"
    t0 = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    path.unlink()
    return round((time.perf_counter() - t0) / n * 1e3, 2)


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def run_bench(count: int, concurrency: int, workdir: Path, receiver_processes: int | None) -> dict:
    from dicom_node.config import load_settings
    from dicom_node.node import receiver_process_count

    files = make_instances(workdir / "instances", count)
    size = files[0].stat().st_size
    result: dict = {
        "instances": count,
        "instance_bytes": size,
        "concurrency": concurrency,
        "x2x_receiver_processes": receiver_processes or receiver_process_count(load_settings(None)),
        "cpus": os.cpu_count(),
        "notes": "x2x (default, durable) fsyncs each instance (file + folder) before Success; storescp "
                 "does not fsync. x2x_no_fsync = node.spool_fsync=false (UNSAFE, same durability as "
                 "storescp): the software overhead alone. Sender: dcmtk storescu -R, TCP_NODELAY=1.",
        "fsync_1mb_ms": _fsync_cost_ms(workdir),
    }
    for mode, n, fork in (("one_association", 1, False), (f"{concurrency}_associations", concurrency, True)):
        rates = {}
        with _storescp(workdir, fork) as (port, out):
            seconds = _send(port, files, n)
            received = _count(out)
        if received != count:
            raise RuntimeError(f"storescp stored {received} of {count}")
        rates["dcmtk_storescp" + ("_fork" if fork else "")] = round(count / seconds, 1)
        for key, fsync in (("x2x", True), ("x2x_no_fsync", False)):
            with _x2x(workdir, f"{mode}-{key}", receiver_processes, fsync) as (port, spool):
                seconds = _send(port, files, n)
                received = _count(spool)
            if received != count:
                raise RuntimeError(f"{key} stored {received} of {count}")
            rates[key] = round(count / seconds, 1)
        dcmtk = next(v for k, v in rates.items() if k.startswith("dcmtk"))
        rates["ratio_x2x_over_dcmtk"] = round(rates["x2x"] / dcmtk, 3)
        rates["ratio_x2x_no_fsync_over_dcmtk"] = round(rates["x2x_no_fsync"] / dcmtk, 3)
        result[mode] = rates
    return result


@bench_app.command("ingest")
def bench_ingest(
    count: int = typer.Option(200, min=1, help="Instances to send (about 1 MB each)."),
    concurrency: int = typer.Option(8, min=2, help="Concurrent associations in the second run."),
    receiver_processes: int = typer.Option(0, min=0, help="x2x receiver processes (0 = the config's)."),
    workdir: Path = typer.Option(None, help="Scratch folder (default: a temp dir, removed after)."),
) -> None:
    """Instances/s of `x2x serve` vs dcmtk storescp (1 and N associations); prints JSON with ratios."""
    for tool in ("storescp", "storescu", "echoscu"):
        try:
            dcmtk(tool)
        except FileNotFoundError as e:
            fail("bench ingest", str(e), "install dcmtk (apt-get install dcmtk)", code=2)
    keep = workdir is not None
    work = workdir or Path(tempfile.mkdtemp(prefix="x2x-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        out = run_bench(count, concurrency, work, receiver_processes or None)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    typer.echo(json.dumps(out, indent=2))
