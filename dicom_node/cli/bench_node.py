"""`x2x bench node`: phantom studies through a running node over C-STORE, measured from the outside.

A real `x2x serve` (the shipped phantom demo model unless [model] path says otherwise, its own thread
policy) sends its results to a C-STORE destination run by this command, which notes when each object
arrives. Each study is one phantom CR asking for its edit in the private request block, sent with dcmtk
`storescu` (one association per study). Measured only through the node's public behaviour:

- latency of a study = its association's release (storescu exits) -> the last of its five objects at
  the destination; it includes the node's study quiet period (reported, and subtracted as well);
- "alone": studies sent one at a time, each after the previous one's objects arrived;
- "queued": N studies sent back to back; throughput = N / (first release -> last object);
- stage times: each job's timings from the REST API (GET /jobs?study=...);
- each of these on a quiet machine and beside one busy core.

Target (issue 17): queued throughput >= 0.9 x 1 / (edit time alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from dicom_node.cli.apps import bench_app
from dicom_node.cli.bench_support import DCMTK_ENV, busy_core, dcmtk, free_port, stop_process, wait_echo

OBJECTS_PER_STUDY = 5


class Destination:
    """A C-STORE SCP that records when each object of each study arrives (nothing is written)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: dict[str, list[float]] = {}
        self._cond = threading.Condition()
        self._server: Any = None

    def _on_store(self, event: Any) -> int:
        study = str(event.dataset.StudyInstanceUID)
        with self._cond:
            self.arrivals.setdefault(study, []).append(time.monotonic())
            self._cond.notify_all()
        return 0x0000

    def start(self) -> Destination:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title="BENCHDEST")
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = 64
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def wait_complete(self, studies: list[str], timeout: float) -> dict[str, float]:
        """Time of the last object of each study, once every study has all of its objects."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(len(self.arrivals.get(s, [])) >= OBJECTS_PER_STUDY for s in studies):
                left = deadline - time.monotonic()
                if left <= 0:
                    have = {s: len(self.arrivals.get(s, [])) for s in studies}
                    raise RuntimeError(f"objects did not all arrive within {timeout:.0f} s: {have}")
                self._cond.wait(min(left, 1.0))
            return {s: max(self.arrivals[s][:OBJECTS_PER_STUDY]) for s in studies}


# The benchmark's own node reads its jobs over the API, which needs a token for reads.
BENCH_TOKEN = secrets.token_urlsafe(24)


@contextlib.contextmanager
def _node(work: Path, dest: Destination, steps: int, quiet_s: float, model: Path | None, batch_size: int = 1
          ) -> Iterator[tuple[int, int]]:
    var = work / "node"
    var.mkdir()
    port, api_port = free_port(), free_port()
    config = work / "node.toml"
    config.write_text(
        f'[destinations.bench]\ntype = "cstore"\nae_title = "BENCHDEST"\nhost = "127.0.0.1"\nport = {dest.port}\n'
        '[send]\ndefault_destination = "bench"\n'
    )
    env = dict(DCMTK_ENV, X2X_NODE__HOST="127.0.0.1", X2X_NODE__PORT=str(port), X2X_PATHS__VAR_DIR=str(var),
               X2X_API__HOST="127.0.0.1", X2X_API__PORT=str(api_port), X2X_EDIT__STEPS=str(steps),
               X2X_NODE__STUDY_QUIET_SECONDS=str(quiet_s), X2X_API__TOKEN=BENCH_TOKEN,
               X2X_WORKER__BATCH_SIZE=str(batch_size))
    env.pop("X2X_CONFIG", None)
    if model is not None:
        env["X2X_MODEL__PATH"] = str(model)
    x2x = str(Path(sys.executable).with_name("x2x"))
    log = open(var / "node.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([x2x, "-c", str(config), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    try:
        wait_echo(port, proc)
        yield port, api_port
    finally:
        stop_process(proc)


def _studies(folder: Path, n: int, seed: int, size: int) -> list[tuple[str, Path]]:
    import pydicom

    from dicom_node.tools.phantom_studies import write_phantom_studies

    paths = write_phantom_studies(folder, n=n, size=size, seed=seed)
    return [(str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID), p) for p in paths]


def _send(port: int, path: Path) -> float:
    """C-STORE one study (its own association); the time of the release."""
    out = subprocess.run([dcmtk("storescu"), "-R", "-aec", "X2X", "127.0.0.1", str(port), str(path)],
                         env=DCMTK_ENV, capture_output=True)
    if out.returncode != 0:
        raise RuntimeError(f"storescu failed: {out.stderr.decode(errors='replace')[-1000:]}")
    return time.monotonic()


def _flat(timings: dict[str, Any]) -> dict[str, float]:
    """A job's numeric timings, each stage's detail flattened: {"encode_detail": {"read_s": x}} ->
    {"encode_read_s": x}."""
    out: dict[str, float] = {}
    for key, value in timings.items():
        if isinstance(value, dict):
            stage = key.removesuffix("_detail")
            out |= {f"{stage}_{k}": v for k, v in value.items() if isinstance(v, (int, float))}
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


def _job_timings(api_port: int, study: str, wait_s: float = 30.0) -> dict[str, float]:
    """The study's job's stage timings, once the job has finished (its send time is recorded after the
    objects reached the destination)."""
    import requests

    deadline = time.monotonic() + wait_s
    while True:
        answer = requests.get(f"http://127.0.0.1:{api_port}/jobs", params={"study": study}, timeout=30,
                              headers={"Authorization": f"Bearer {BENCH_TOKEN}"})
        answer.raise_for_status()
        jobs = answer.json()["jobs"]
        if not jobs:
            return {}
        if jobs[0]["state"] in ("done", "failed", "dead-letter") or time.monotonic() > deadline:
            return _flat(jobs[0].get("timings") or {})
        time.sleep(0.1)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _stage_medians(timings: list[dict[str, float]]) -> dict[str, float | None]:
    keys = sorted({k for t in timings for k in t})
    return {k: _median([t[k] for t in timings if k in t]) for k in keys}


def _phase(port: int, api_port: int, dest: Destination, studies: list[tuple[str, Path]], queued: bool,
           quiet_s: float, timeout: float) -> dict[str, Any]:
    releases: dict[str, float] = {}
    done: dict[str, float] = {}
    if queued:
        for uid, path in studies:
            releases[uid] = _send(port, path)
        done = dest.wait_complete([u for u, _ in studies], timeout)
    else:
        for uid, path in studies:
            releases[uid] = _send(port, path)
            done |= dest.wait_complete([uid], timeout)
    latency = [done[u] - releases[u] for u, _ in studies]
    timings = [_job_timings(api_port, u) for u, _ in studies]
    span = max(done.values()) - min(releases.values())
    out: dict[str, Any] = {
        "studies": len(studies),
        "latency_s": {"median": _median(latency), "best": round(min(latency), 3), "worst": round(max(latency), 3)},
        "latency_minus_quiet_period_s_median": _median([x - quiet_s for x in latency]),
        "stage_medians_s": _stage_medians(timings),
    }
    if queued:
        out["throughput_studies_per_s"] = round(len(studies) / span, 3)
        out["span_s"] = round(span, 3)
        # The first study's quiet period opens the span and nothing can overlap it: the rate after it.
        out["throughput_after_first_quiet_period"] = round(len(studies) / max(span - quiet_s, 1e-9), 3)
    return out


def run_bench(n: int, alone: int, steps: int, quiet_s: float, size: int, model: Path | None,
              busy: bool, timeout: float, batch_size: int = 1) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="x2x-bench-node-"))
    base_seed = random.SystemRandom().randrange(10**6, 10**9)  # new studies: a node de-duplicates resends
    dest = Destination().start()
    result: dict[str, Any] = {
        "model": str(model) if model else "shipped phantom demo model", "steps": steps, "phantom_size": size,
        "study_quiet_seconds": quiet_s, "queued_studies": n, "alone_studies": alone,
        "cpus": len(os.sched_getaffinity(0)),
        "notes": "latency = association release -> last of the study's 5 objects at the destination; it "
                 "includes the node's study quiet period. throughput = queued studies / (first release -> last "
                 "object). Stage medians from the jobs' timings (REST API). busy_core = one spinning process.",
        "target_throughput_over_1_per_edit": 0.9,
        "worker_batch_size": batch_size,
    }
    try:
        with _node(work, dest, steps, quiet_s, model, batch_size) as (port, api_port):
            warm = _studies(work / "warm", 1, base_seed, size)  # loads the model: not measured
            _phase(port, api_port, dest, warm, False, quiet_s, timeout)
            conditions = [("quiet", contextlib.nullcontext())]
            if busy:
                conditions.append(("busy_core", busy_core()))  # type: ignore[arg-type]
            for k, (name, load) in enumerate(conditions, start=1):
                with load:
                    single = _studies(work / f"{name}-alone", alone, base_seed + 10 * k, size)
                    queue = _studies(work / f"{name}-queued", n, base_seed + 10 * k + 1, size)
                    phases = {"alone": _phase(port, api_port, dest, single, False, quiet_s, timeout),
                              "queued": _phase(port, api_port, dest, queue, True, quiet_s, timeout)}
                alone_stages = phases["alone"]["stage_medians_s"]
                edit_alone = alone_stages.get("edit_s")
                if edit_alone:
                    phases["queued_throughput_over_1_per_edit_alone"] = round(
                        phases["queued"]["throughput_studies_per_s"] * edit_alone, 3)
                    phases["after_first_quiet_period_over_1_per_edit_alone"] = round(
                        phases["queued"]["throughput_after_first_quiet_period"] * edit_alone, 3)
                    # What one edit at a time can reach at best by this measure: the span holds the quiet
                    # period, n edits back to back and the last job's encode and send.
                    tail = alone_stages.get("encode_s", 0.0) + alone_stages.get("send_s", 0.0)
                    phases["one_at_a_time_bound_over_1_per_edit"] = round(
                        n * edit_alone / (quiet_s + n * edit_alone + tail), 3)
                result[name] = phases
            result["load_average_at_end"] = list(os.getloadavg())
    finally:
        dest.stop()
    if busy and result.get("quiet", {}).get("alone") and result.get("busy_core", {}).get("alone"):
        quiet_edit = result["quiet"]["alone"]["stage_medians_s"].get("edit_s")
        busy_edit = result["busy_core"]["alone"]["stage_medians_s"].get("edit_s")
        if quiet_edit and busy_edit:
            result["busy_core_edit_slowdown"] = round(busy_edit / quiet_edit, 3)
    return result


@bench_app.command("node")
def bench_node(
    studies: int = typer.Option(8, min=1, help="Studies queued at once (throughput)."),
    alone: int = typer.Option(3, min=1, help="Studies sent one at a time (latency, edit time alone)."),
    steps: int = typer.Option(20, min=1, help="DDIM steps per edit ([edit] steps of the node)."),
    quiet_seconds: float = typer.Option(1.0, min=0, help="The node's study quiet period."),
    size: int = typer.Option(256, min=64, help="Phantom image side in pixels."),
    model: Path = typer.Option(None, help="Model folder (default: the shipped phantom demo model)."),
    busy: bool = typer.Option(True, help="Also measure beside one busy core."),
    timeout: float = typer.Option(900.0, min=10, help="Seconds to wait for a phase's objects."),
    batch_size: int = typer.Option(1, min=1, max=64, help="The node's [worker] batch_size (queued jobs "
                                   "edited together)."),
) -> None:
    """Per-study latency and throughput of a running node over C-STORE, quiet and beside a busy core (JSON)."""
    for tool in ("storescu", "echoscu"):
        try:
            dcmtk(tool)
        except FileNotFoundError as e:
            typer.echo(f"x2x: {e}", err=True)
            raise typer.Exit(code=2) from None
    out = run_bench(studies, alone, steps, quiet_seconds, size, model, busy, timeout, batch_size)
    typer.echo(json.dumps(out, indent=2))
