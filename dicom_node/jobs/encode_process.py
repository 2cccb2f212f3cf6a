"""Each encode in a child process under the same memory limit as the edits (jobs/sandbox.py says why:
encoding copies a sender's elements into five objects, and a library that grows without bound there
must end the job, not the worker).

A second child beside the edit's, so encoding also runs on another core than the worker's own threads
and the edit child: one spawned process (no torch in it) from a `ProcessPoolExecutor` whose initializer
sets RLIMIT_DATA before anything heavy is imported. It starts with the worker (`start_encoder`) and
imports the encoders at once, so the first job does not wait for that. A MemoryError fails its job and
replaces the process (giving the memory back); a dead process is replaced and its job encoded once more
in the new one, so only a job that kills two processes fails for it.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from dicom_node.config import Settings
from dicom_node.jobs.editing import EditFailed, EditInput, EncodeOutput, encode_job
from dicom_node.jobs.sandbox import PerProcess, SandboxStopping, memory_limit_bytes

log = logging.getLogger("x2x.jobs.encode")


class EncodeProcessDied(EditFailed):
    """The encode's child process ended without an answer."""


def _limit_memory(limit: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _warm_up() -> None:
    import dicom_node.results  # noqa: F401 - pydicom, highdicom, PIL: imported once, before the first job


class EncodeProcess:
    """The worker's encode child process (started by `start`, replaced after it dies or runs out of memory)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limit = memory_limit_bytes(settings)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stopping = False

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._stopping:  # the worker stops: the job goes back to the delivery queue
                raise SandboxStopping()
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                                                 initializer=_limit_memory, initargs=(self.limit,))
                self._pool.submit(_warm_up)
            return self._pool

    def start(self) -> EncodeProcess:
        self._get_pool()
        return self

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def encode(self, job: EditInput, out_dir: Path) -> EncodeOutput:
        """`editing.encode_job` in the child; its exceptions are raised here as they were there. A child
        found dead (it died after an earlier job, or with this one) is replaced and the encode tried once
        more: only a job that kills two children fails for it."""
        for attempt in (1, 2):
            pool = self._get_pool()
            try:
                future = pool.submit(encode_job, job, out_dir, self.settings)
            except BrokenProcessPool:  # its process died after an earlier job: a new one
                self._replace(pool)
                continue
            except RuntimeError:  # another thread replaced this pool just now (shut down): use the new one
                continue
            try:
                return future.result()
            except BrokenProcessPool as exc:
                self._replace(pool)
                if self._stopping:
                    raise SandboxStopping() from exc
                if attempt == 2:
                    raise EncodeProcessDied(f"the encode's process died encoding this job, in a new one too; memory "
                                            f"limit {self.limit // 2**20} MB (queue.edit_memory_limit_mb)") from exc
                log.warning("job %s: the encode process was gone; encoding in a new one", job.job_id)
            except MemoryError as exc:
                self._replace(pool)  # a fresh process for the next encode gives the memory back
                raise EditFailed(f"the encode needed more memory than queue.edit_memory_limit_mb allows "
                                 f"({self.limit // 2**20} MB)") from exc
        raise EncodeProcessDied("the encode's process was replaced twice while this job waited for it")

    def child_pid(self) -> int:
        """The encode child's process id (operators' logs, tests)."""
        return int(self._get_pool().submit(os.getpid).result())

    def stop(self) -> None:
        """The worker is stopping: a running encode finishes, a later one raises SandboxStopping."""
        with self._lock:
            self._stopping = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_encoders = PerProcess(EncodeProcess)


def encoder_for(settings: Settings) -> EncodeProcess:
    """This process's encode child for these settings (one per worker process, as its edit sandbox)."""
    return _encoders.get(settings)


def stop_encoders() -> None:
    _encoders.stop_all()
