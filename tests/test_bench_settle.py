"""`wait_settled`: the ingest benchmark measures a receiver only once its start-up is over."""

from __future__ import annotations

import subprocess
import sys
import time

from dicom_node.cli.bench_support import stop_process, wait_settled

# A parent that starts a child (as `x2x serve` starts receivers and a worker's encode child) and idles;
# the child is busy for a while, then idles too.
_BUSY_CHILD = """
import subprocess, sys, time
burn = "import time\\nend = time.process_time() + {seconds}\\nwhile time.process_time() < end: pass\\ntime.sleep(60)"
subprocess.Popen([sys.executable, "-c", burn])
time.sleep(60)
"""


def _start(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _BUSY_CHILD.format(seconds=seconds)],
                            start_new_session=True)


def test_waits_for_the_whole_process_group_to_go_idle():
    proc = _start(1.5)
    try:
        t0 = time.monotonic()
        waited = wait_settled(proc, timeout=20)
        assert time.monotonic() - t0 >= 1.5 - 0.3  # the child burnt 1.5 s of CPU first (the parent idled)
        assert waited < 20  # and then it was found idle
    finally:
        stop_process(proc)


def test_gives_up_after_the_timeout_on_a_receiver_that_stays_busy():
    proc = _start(60)
    try:
        assert wait_settled(proc, timeout=1.5) >= 1.5
    finally:
        stop_process(proc)
