"""`x2x bench threads`: a demo edit quiet and beside one busy core, torch's default threads vs the node's
thread policy (dicom_node/threads.py), same model, image and steps, same run.

Each configuration runs in a fresh process (thread pools are fixed when torch loads): the shipped phantom
demo model edits a phantom `edits` times after one warm-up edit, once on a quiet machine and once beside a
busy core (a process spinning in a loop, standing in for the SCP or anything else). Rounds interleave the
configurations; best and median seconds per edit are reported, with the slowdown busy / quiet.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import typer

from dicom_node.cli.apps import bench_app
from dicom_node.cli.bench_support import busy_core

# Child: one configuration, prints the seconds of each timed edit as JSON.
_CHILD = """
import json, os, sys, time
mode, steps, edits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "policy":
    from dicom_node.threads import prepare_node_process, configure_torch
    from dicom_node.config import WorkerConfig
    prepare_node_process()
    configure_torch(WorkerConfig())
import torch
from editor import Editor, EditParams, demo_model_path, disable_progress_bars
from editor.training.phantoms import make_pair, to_source_image
disable_progress_bars()
editor = Editor.from_pretrained(demo_model_path(), device="cpu")
pair = make_pair(0, 1, 128)
source = to_source_image(pair.past)
params = EditParams(steps=steps)
editor.edit(source, pair.instruction, seed=0, params=params)
seconds, cpu = [], []
for i in range(edits):
    t0, c0 = time.perf_counter(), time.process_time()
    editor.edit(source, pair.instruction, seed=i, params=params)
    seconds.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
print(json.dumps({"threads": torch.get_num_threads(), "seconds": seconds, "cpu": cpu}))
"""

MODES = {
    "torch_default": "torch's own defaults: one intra-op thread per core, OpenMP's active waits",
    "policy": "the node's policy: [worker] threads = auto, OMP_WAIT_POLICY=PASSIVE",
}
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME")


def _child(mode: str, steps: int, edits: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_ENV and not k.startswith("X2X_WORKER__")}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(steps), str(edits)], env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"bench child ({mode}) failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"best_s": round(min(seconds), 3), "median_s": round(statistics.median(seconds), 3)}


def run_bench(steps: int, edits: int, rounds: int) -> dict[str, Any]:
    from dicom_node.threads import usable_cpus

    samples: dict[str, dict[str, list[float]]] = {
        m: {"quiet": [], "busy": [], "quiet_cpu": [], "busy_cpu": []} for m in MODES}
    threads: dict[str, int] = {}
    for _ in range(rounds):
        for mode in MODES:
            quiet = _child(mode, steps, edits)
            with busy_core():
                busy = _child(mode, steps, edits)
            samples[mode]["quiet"] += quiet["seconds"]
            samples[mode]["busy"] += busy["seconds"]
            samples[mode]["quiet_cpu"] += quiet["cpu"]
            samples[mode]["busy_cpu"] += busy["cpu"]
            threads[mode] = int(quiet["threads"])
    result: dict[str, Any] = {
        "model": "shipped phantom demo model", "steps": steps, "edits_per_process": edits, "rounds": rounds,
        "usable_cpus": usable_cpus(), "load_average_at_end": list(os.getloadavg()),
        "notes": "busy = one process spinning beside the edit; slowdown = busy / quiet of the same mode. "
                 "On a machine shared with other work, 'quiet' is only as quiet as the load average says",
        "target_slowdown": 1.3,
    }
    for mode, description in MODES.items():
        quiet, busy = _summary(samples[mode]["quiet"]), _summary(samples[mode]["busy"])
        result[mode] = {
            "what": description, "torch_threads": threads[mode], "quiet": quiet, "busy_core": busy,
            "slowdown_median": round(busy["median_s"] / quiet["median_s"], 3),
            "slowdown_best": round(busy["best_s"] / quiet["best_s"], 3),
            # CPU seconds the edit's process burnt: spinning OpenMP threads show up here
            "cpu_s_median": {"quiet": round(statistics.median(samples[mode]["quiet_cpu"]), 3),
                             "busy_core": round(statistics.median(samples[mode]["busy_cpu"]), 3)},
        }
    base = result["torch_default"]["quiet"]["median_s"]
    result["policy"]["busy_median_over_torch_default_quiet_median"] = round(
        result["policy"]["busy_core"]["median_s"] / base, 3)
    result["meets_target"] = result["policy"]["slowdown_median"] <= 1.3
    return result


@bench_app.command("threads")
def bench_threads(
    steps: int = typer.Option(20, min=1, help="DDIM steps per edit."),
    edits: int = typer.Option(5, min=1, help="Timed edits per process (after one warm-up)."),
    rounds: int = typer.Option(2, min=1, help="Interleaved rounds of every configuration."),
) -> None:
    """Seconds per demo edit, quiet and beside one busy core: torch's defaults vs the thread policy (JSON)."""
    typer.echo(json.dumps(run_bench(steps, edits, rounds), indent=2))
