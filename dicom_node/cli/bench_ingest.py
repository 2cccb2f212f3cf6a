"""`x2x bench ingest`: C-STORE ingest rate of `x2x serve` against Orthanc and dcmtk's storescp, same data,
same run.

Every receiver gets the same N instances (~1 MB each, made from pydicom-data's chest CR with new UIDs)
from dcmtk `storescu` (TCP_NODELAY=1, as every dcmtk tool here): once over one association, once split
over 8 concurrent associations (dcmtk side: `storescp --fork`), in interleaved rounds, each receiver
fresh and measured once its processes are idle (start-up done: bench_support.wait_settled). Our node
fsyncs every instance before answering (durable spool); Orthanc and storescp do not fsync. Prints JSON
with instances/s and ratios.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from dicom_node.cli.apps import bench_app
from dicom_node.cli.bench_support import (
    DCMTK_ENV,
    chest_cr_path,
    dcmtk,
    free_port,
    orthanc,
    stop_process,
    wait_echo,
    wait_settled,
)
from dicom_node.cli.errors import fail


def make_instances(out_dir: Path, count: int, target_bytes: int = 1_000_000) -> list[Path]:
    """`count` copies of the chest CR, cropped to about `target_bytes` of pixel data, new UIDs."""
    import math

    import pydicom
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(chest_cr_path())
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


# The node's default AE title (it refuses unknown called AE titles); storescp and Orthanc accept any.
CALLED_AE = "X2X"


def _send(port: int, files: list[Path], concurrency: int) -> float:
    """Seconds for `concurrency` storescu processes (one association each) to send all files."""
    groups = [files[i::concurrency] for i in range(concurrency)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([dcmtk("storescu"), "-R", "-aec", CALLED_AE, "127.0.0.1", str(port), *map(str, g)],
                         env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for g in groups if g
    ]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError("storescu failed: " + b" ".join(errors).decode(errors="replace")[-2000:])
    return seconds


@contextlib.contextmanager
def _storescp(work: Path, fork: bool, name: str) -> Iterator[tuple[int, Path]]:
    out = work / f"storescp-{name}"
    out.mkdir()
    port = free_port()
    cmd = [dcmtk("storescp"), *(["--fork"] if fork else []), "-od", str(out), str(port)]
    proc = subprocess.Popen(cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_echo(port, proc)
        wait_settled(proc)  # start-up done: only the instances use the cores
        yield port, out
    finally:
        stop_process(proc)


@contextlib.contextmanager
def _x2x(work: Path, name: str, receiver_processes: int | None, fsync: bool = True
         ) -> Iterator[tuple[int, Path]]:
    var = work / f"x2x-{name}"
    var.mkdir()
    port = free_port()
    env = dict(DCMTK_ENV, X2X_NODE__HOST="127.0.0.1", X2X_NODE__PORT=str(port), X2X_PATHS__VAR_DIR=str(var),
               X2X_API__ENABLED="false", X2X_API__PORT=str(free_port()),
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
        wait_echo(port, proc)
        wait_settled(proc)  # start-up done: only the instances use the cores
        yield port, var / "spool"
    finally:
        stop_process(proc)


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


def _count_orthanc(storage: Path) -> int:
    return sum(1 for p in storage.glob("*/*/*") if p.is_file())  # <storage>/ab/cd/<uuid>; the index sits above


RECEIVERS = ("dcmtk_storescp", "orthanc", "x2x", "x2x_no_fsync")


def _receive_once(receiver: str, work: Path, name: str, files: list[Path], associations: int,
                  receiver_processes: int | None) -> float:
    """Instances/s of one fresh receiver for `files` over `associations` concurrent associations."""
    count: Callable[[Path], int] = _count
    if receiver == "dcmtk_storescp":
        cm = _storescp(work, associations > 1, name)
    elif receiver == "orthanc":
        cm, count = orthanc(work, f"orthanc-{name}"), _count_orthanc
    else:
        cm = _x2x(work, name, receiver_processes, fsync=receiver == "x2x")
    with cm as (port, out):
        seconds = _send(port, files, associations)
        deadline = time.monotonic() + 30  # a receiver may index the last instances just after the reply
        while (received := count(out)) < len(files) and time.monotonic() < deadline:
            time.sleep(0.1)
    if received != len(files):
        raise RuntimeError(f"{receiver} stored {received} of {len(files)}")
    return len(files) / seconds


def _stats(rates: list[float]) -> dict[str, Any]:
    # every round's rate too: on a shared machine the spread is part of the result
    return {"median": round(statistics.median(rates), 1), "best": round(max(rates), 1),
            "rounds": [round(r, 1) for r in rates]}


def run_bench(count: int, concurrency: int, workdir: Path, receiver_processes: int | None, rounds: int = 3,
              receivers: tuple[str, ...] = RECEIVERS) -> dict:
    from dicom_node.config import load_settings
    from dicom_node.node import receiver_process_count

    files = make_instances(workdir / "instances", count)
    modes = {"one_association": 1, f"{concurrency}_associations": concurrency}
    samples: dict[str, dict[str, list[float]]] = {m: {r: [] for r in receivers} for m in modes}
    for round_no in range(rounds):  # interleaved: every receiver and mode once per round
        for mode, associations in modes.items():
            for receiver in receivers:
                rate = _receive_once(receiver, workdir, f"{round_no}-{mode}-{receiver}", files, associations,
                                     receiver_processes)
                samples[mode][receiver].append(rate)
    result: dict = {
        "instances": count,
        "instance_bytes": files[0].stat().st_size,
        "concurrency": concurrency,
        "rounds": rounds,
        "x2x_receiver_processes": receiver_processes or receiver_process_count(load_settings(None)),
        "cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "notes": "instances/s, median and best of interleaved rounds, a fresh receiver each time, measured "
                 "once it answers C-ECHO and its processes are idle (start-up done). x2x (default, "
                 "durable) fsyncs each instance before Success (concurrent instances share one flush); "
                 "Orthanc (stock settings, the reference PACS) stores file + index before answering, without "
                 "fsync; storescp neither (`--fork` for N associations). x2x_no_fsync = node.spool_fsync="
                 "false (UNSAFE): the software overhead alone. Sender: dcmtk storescu -R, TCP_NODELAY=1.",
        "fsync_1mb_ms": _fsync_cost_ms(workdir),
        "targets": {f"x2x_{concurrency}_over_x2x_one": 1.5, "x2x_over_orthanc": 1.0},
    }
    for mode in modes:
        stats: dict[str, Any] = {r: _stats(samples[mode][r]) for r in receivers}
        if "x2x" in receivers:
            for ref in ("orthanc", "dcmtk_storescp", "x2x_no_fsync"):
                if ref in receivers:
                    stats[f"ratio_x2x_over_{ref}"] = round(stats["x2x"]["median"] / stats[ref]["median"], 3)
        result[mode] = stats
    multi = result[f"{concurrency}_associations"]
    one = result["one_association"]
    for receiver in receivers:
        result[f"scaling_{receiver}"] = round(multi[receiver]["median"] / one[receiver]["median"], 3)
        # paired within a round (the two modes ran minutes apart at most): how much of the spread is noise
        result[f"scaling_{receiver}_per_round"] = [
            round(m / o, 3) for m, o in zip(samples[f"{concurrency}_associations"][receiver],
                                            samples["one_association"][receiver], strict=True)]
    if "x2x" in receivers and "orthanc" in receivers:
        result["meets_targets"] = {
            "scaling": result["scaling_x2x"] >= 1.5,
            "one_association_vs_orthanc": one["ratio_x2x_over_orthanc"] >= 1.0,
            f"{concurrency}_associations_vs_orthanc": multi["ratio_x2x_over_orthanc"] >= 1.0,
        }
    return result


@bench_app.command("ingest")
def bench_ingest(
    count: int = typer.Option(200, min=1, help="Instances to send (about 1 MB each)."),
    concurrency: int = typer.Option(8, min=2, help="Concurrent associations in the second run."),
    receiver_processes: int = typer.Option(0, min=0, help="x2x receiver processes (0 = the config's)."),
    workdir: Path = typer.Option(None, help="Scratch folder (default: a temp dir, removed after)."),
    rounds: int = typer.Option(3, min=1, help="Interleaved rounds (median and best reported)."),
    only: str = typer.Option("", help="Comma-separated subset of receivers: " + ", ".join(RECEIVERS) + "."),
) -> None:
    """Instances/s of `x2x serve` vs Orthanc and dcmtk storescp (1 and N associations); JSON with ratios."""
    chosen = tuple(r.strip() for r in only.split(",") if r.strip()) or RECEIVERS
    unknown = sorted(set(chosen) - set(RECEIVERS))
    if unknown:
        typer.echo(f"x2x: unknown receiver(s) {unknown}; choose from {', '.join(RECEIVERS)}", err=True)
        raise typer.Exit(code=2)
    for tool in ("storescp", "storescu", "echoscu"):
        try:
            dcmtk(tool)
        except FileNotFoundError as e:
            fail("bench ingest", str(e), "install dcmtk (apt-get install dcmtk)", code=2)
    keep = workdir is not None
    work = workdir or Path(tempfile.mkdtemp(prefix="x2x-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        out = run_bench(count, concurrency, work, receiver_processes or None, rounds, chosen)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    typer.echo(json.dumps(out, indent=2))
