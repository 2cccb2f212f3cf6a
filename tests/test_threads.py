"""The thread policy (dicom_node/threads.py): editing processes size torch's pools from [worker]; every
other node process (receivers, API) starts no torch pool, with passive OpenMP waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.config import WorkerConfig
from dicom_node.threads import _cgroup_cpu_limit, editing_threads
from tests.support.node import run_node


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (4, 3), (8, 7), (16, 14), (64, 62)])
def test_auto_threads_leave_room_for_the_scp_and_api(cpus: int, threads: int) -> None:
    assert editing_threads(WorkerConfig(), cpus=cpus) == threads


def test_configured_threads_win() -> None:
    assert editing_threads(WorkerConfig(threads=3), cpus=2) == 3


def test_usable_cpus_follow_the_affinity_mask() -> None:
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from dicom_node.threads import usable_cpus, editing_threads; from dicom_node.config import "
            "WorkerConfig; print(usable_cpus(), editing_threads(WorkerConfig()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]


def test_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None
    assert _cgroup_cpu_limit(tmp_path / "absent") is None


_WORKER_PROBE = """
import json, os, sys
from dicom_node.threads import prepare_node_process
prepare_node_process()
from dicom_node.config import load_settings
from dicom_node.context import build_context
ctx = build_context(load_settings())
before = "torch" in sys.modules
ctx.editor()
import torch
print(json.dumps({"torch_before_model": before, "intra": torch.get_num_threads(),
                  "inter": torch.get_num_interop_threads(), "wait": os.environ.get("OMP_WAIT_POLICY")}))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_the_worker_sizes_torch_pools_from_config(tmp_path: Path, tiny_model_dir: Path, threads: int) -> None:
    env = dict(os.environ, X2X_PATHS__VAR_DIR=str(tmp_path), X2X_MODEL__PATH=str(tiny_model_dir),
               X2X_WORKER__THREADS=str(threads), X2X_WORKER__INTEROP_THREADS="1")
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", _WORKER_PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"torch_before_model": False, "intra": threads, "inter": 1, "wait": "PASSIVE"}


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_scp_and_api_processes_start_no_torch_pool(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    with run_node(tmp_path, model_dir=tiny_model_dir, receiver_processes=2) as node:
        # spawned: the two receivers and the encode process (the edit process starts with the first edit)
        receivers = [p for p in _children(node.proc.pid)
                     if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(receivers) == 3, receivers
        for pid in [node.proc.pid, *receivers]:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "libtorch" not in maps and "libgomp" not in maps, f"process {pid} loaded torch/OpenMP"
        for pid in receivers:
            child_env = _environ(pid)
            assert child_env.get("OMP_WAIT_POLICY") == "PASSIVE"
            assert child_env.get("OMP_NUM_THREADS") == "1" and child_env.get("OPENBLAS_NUM_THREADS") == "1"
