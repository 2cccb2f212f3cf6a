"""Thread policy: how many threads torch, OpenMP and BLAS may start in each process of the node.

Why: torch sizes its intra-op pool to every core of the machine, and OpenMP threads spin while they
wait for the others at the end of each parallel region. Beside the SCP, the API or any other busy
process, a spinning thread that lost its core stalls every region: a 20-step demo edit took 0.59 s on a
quiet 2-core box and 2.57 s beside one busy core (docs/operations.md, "Threads"). Hence:

- a process that edits (`editing_threads`, applied by `configure_torch` when the editor loads) gets
  `[worker] threads` intra-op threads — by default the cores this process may use minus room for the
  SCP and API — and `[worker] interop_threads` inter-op threads;
- every node process starts with `prepare_node_process()`: OpenMP waits passively (OMP_WAIT_POLICY=
  PASSIVE, read by OpenMP when torch loads it, so it must be set before torch is imported) and native
  pools of one thread (OMP / MKL / OpenBLAS), inherited by the receiver processes it spawns. The SCP and
  the API never import torch; only `configure_torch` sizes its pool up, in the process that edits.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from dicom_node.config import WorkerConfig

log = logging.getLogger("x2x.threads")

# Read by the native libraries when they load; "1" keeps a non-editing process from starting pools.
NATIVE_POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# OpenMP threads sleep instead of spinning between parallel regions (GNU and LLVM OpenMP; Intel's
# runtime reads KMP_BLOCKTIME).
PASSIVE_WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}

_interop_set = False


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole cores allowed by a cgroup v2 CPU quota (`docker --cpus`), or None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def reserved_cpus(cpus: int) -> int:
    """Cores left to the SCP (receiver processes) and the API beside an editing process."""
    if cpus <= 1:
        return 0
    return 1 if cpus <= 8 else 2


def editing_threads(config: WorkerConfig, cpus: int | None = None) -> int:
    """torch intra-op threads for a process that edits: `[worker] threads`, or derived (0 = auto)."""
    if config.threads > 0:
        return config.threads
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, cpus - reserved_cpus(cpus))


def prepare_node_process() -> None:
    """At the start of a node process, before torch is imported: passive OpenMP waits and one-thread
    native pools (kept if the operator set them), inherited by every child process."""
    for name, value in PASSIVE_WAIT_ENV.items():
        os.environ.setdefault(name, value)
    if "torch" not in sys.modules:  # once torch is loaded, its pool is sized by configure_torch only
        for name in NATIVE_POOL_ENV:
            os.environ.setdefault(name, "1")


def configure_torch(config: WorkerConfig) -> int:
    """Size torch's thread pools for editing in this process (before the model loads); returns the
    intra-op thread count. Passive OpenMP waits are set first when torch is not imported yet."""
    if "torch" not in sys.modules:
        for name, value in PASSIVE_WAIT_ENV.items():
            os.environ.setdefault(name, value)
    import torch

    global _interop_set
    threads = editing_threads(config)
    torch.set_num_threads(threads)
    if not _interop_set:
        try:  # allowed once per process, before any inter-op parallel work
            torch.set_num_interop_threads(config.interop_threads)
        except RuntimeError as exc:
            log.debug("torch inter-op threads already fixed: %s", exc)
        _interop_set = True
    log.info(
        "torch threads: %d intra-op, %d inter-op (%d usable core(s); [worker] threads = %s; OMP_WAIT_POLICY=%s)",
        torch.get_num_threads(), torch.get_num_interop_threads(), usable_cpus(),
        config.threads or "auto", os.environ.get("OMP_WAIT_POLICY", "unset"),
    )
    return threads
