"""Each edit in a child process under a memory limit, so that one job cannot take the worker or the host.

Why a child process: an edit reads a sender's file, decodes its pixels and copies its elements into the
outputs; whatever in those libraries grows without bound (issue 16: pydicom's exception re-wrapping
reached 24.5 GB on a nested sequence) must end that job, not the worker (with the embedded worker: the
whole node, SCP included) and not the machine. The child sets RLIMIT_DATA (heap and anonymous
mappings: what an edit allocates; file mappings and a GPU driver's reserved address space are not
counted, unlike RLIMIT_AS) to `queue.edit_memory_limit_mb` (0 = half the machine's memory) before it
imports anything heavy. Allocations past it fail inside the child (MemoryError, or torch's "can't
allocate memory"), the job fails with that reason and the child lives on; if the child dies anyway
(a hard crash, the kernel's OOM killer) the job fails naming its exit, and the next edit starts a new one.

One long-lived child per worker process (spawned, never forked: torch and CUDA do not survive a fork),
loading the model once. Protocol over a pipe: the parent sends a batch [(EditInput, out_dir), ...]
(one job, or `[worker] batch_size` of them edited together); per job the child says ("result", (job
id, "done" | "error", EditOutput or text)); last ("end", None), or ("end", text) after a memory error:
the child exits after it, giving its memory back, and jobs without a result fail with that text.
The child edits and saves each job's arrays; the delivery stage encodes them (jobs/encode_process.py).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from dicom_node.config import Settings
from dicom_node.jobs.editing import EditFailed, EditInput, EditOutput, edit_batch

log = logging.getLogger("x2x.jobs.sandbox")


class EditProcessDied(EditFailed):
    """The edit's child process ended without an answer."""


class SandboxStopping(BaseException):  # noqa: N818 - not an error of the job: the worker is stopping
    """The worker stops its edit (or encode) process while an edit (or encode) runs: the job is put back
    where that step starts, not failed (BaseException, so that no job-level handler records it as the
    job's error)."""


def memory_limit_bytes(settings: Settings) -> int:
    mb = settings.queue.edit_memory_limit_mb
    if mb > 0:
        return mb * 1024 * 1024
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]


def _is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)


def _child_main(conn: Any, settings: Settings, limit: int, parent: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    from dicom_node.context import resolve_model_path
    from dicom_node.logs import setup_logging

    setup_logging(settings.logging.level, settings.logging.json_format)
    editor: Any = None
    while True:
        try:
            if not conn.poll(1.0):
                if os.getppid() != parent:
                    return  # the worker is gone
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return  # the worker closed the pipe: it is stopping
        if message == "quit":
            return
        batch = [(job, Path(out_dir)) for job, out_dir in message]
        try:
            if editor is None:
                from dicom_node.threads import configure_torch
                from editor import Editor

                configure_torch(settings.worker)  # this process edits: its torch pools, sized once

                editor = Editor.from_pretrained(resolve_model_path(settings), device=settings.model.device,
                                                dtype=settings.model.dtype,
                                                single_file_config=settings.model.single_file_config)
            results = edit_batch(editor, batch)
        except Exception as exc:  # noqa: BLE001 - loading the model: every job's error
            results = [exc] * len(batch)
        fatal = None
        for (job, _out_dir), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                text = _error_text(result)
                if _is_memory_error(result):
                    text = fatal = (f"the edit needed more memory than queue.edit_memory_limit_mb allows "
                                    f"({limit // 2**20} MB): {text[:300]}")
                conn.send(("result", (job.job_id, "error", text)))
            else:
                conn.send(("result", (job.job_id, "done", result)))
        conn.send(("end", fatal))
        if fatal is not None:
            return  # a fresh process for the next edit gives the memory back


class EditSandbox:
    """The worker's edit child process (started on first use, restarted after it dies)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limit = memory_limit_bytes(settings)
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._lock = threading.Lock()
        self._stopping = False

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_child_main, args=(child, self.settings, self.limit, os.getpid()),
            name="x2x-edit", daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        log.info("edit process %s started (memory limit %d MB)", self._proc.pid, self.limit // 2**20)

    def _receive(self) -> tuple[str, Any]:
        conn, proc = self._conn, self._proc  # stop() may clear them from another thread meanwhile
        if conn is None or proc is None:
            raise SandboxStopping()
        while True:
            if self._stopping:
                raise SandboxStopping()
            try:
                if conn.poll(0.5):
                    message: tuple[str, Any] = conn.recv()
                    return message
            except (EOFError, OSError, ValueError) as exc:  # closed by stop(), or the child's end
                if self._stopping:
                    raise SandboxStopping() from exc
                self._shutdown()
                raise EditProcessDied(f"the edit's process closed its pipe ({exc})") from exc
            if not proc.is_alive() and not conn.poll(0):
                code = proc.exitcode
                self._shutdown()
                how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise EditProcessDied(
                    f"the edit's process died ({how}) before finishing; memory limit "
                    f"{self.limit // 2**20} MB (queue.edit_memory_limit_mb)"
                )

    def run_batch(self, jobs: list[tuple[EditInput, Path]]) -> dict[int, EditOutput | BaseException]:
        """Edit several jobs together in the child, each job's arrays saved in its folder: job id -> its
        EditOutput or the exception that stopped it (EditFailed with the child's text). SandboxStopping
        (raised) when the worker stops this sandbox meanwhile; EditProcessDied (raised) when the child
        dies."""
        with self._lock:
            if self._stopping:
                raise SandboxStopping()
            if self._proc is None or not self._proc.is_alive():
                self._start()
            message = [(job, str(out_dir)) for job, out_dir in jobs]
            try:
                self._conn.send(message)
            except OSError:  # it ended just now (after an earlier job): a new one
                self._shutdown()
                self._start()
                self._conn.send(message)
            proc = self._proc
            results: dict[int, EditOutput | BaseException] = {}
            while True:
                kind, value = self._receive()
                if kind == "result":
                    job_id, how, payload = value
                    if how == "done":
                        results[job_id] = payload
                    else:
                        results[job_id] = EditFailed(payload or f"edit process answered {how!r}")
                elif kind == "end":
                    if value is not None:  # the child ends after this answer (memory): wait for it
                        proc.join(10)
                        self._shutdown()
                    for job, _out_dir in jobs:
                        results.setdefault(job.job_id, EditFailed(value or "the edit process gave no result"))
                    return results
                else:
                    raise EditFailed(f"edit process answered {kind!r}")

    def stop(self) -> None:
        """The worker is stopping: end the child (an edit in progress raises SandboxStopping in run())."""
        self._stopping = True
        self._shutdown()

    def _shutdown(self) -> None:
        proc, self._proc = self._proc, None
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send("quit")
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None
        if proc is not None and proc.is_alive():
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()


class _Child(Protocol):
    settings: Settings

    def stop(self) -> None: ...


Child = TypeVar("Child", bound=_Child)


class PerProcess(Generic[Child]):
    """One child-process handle per worker process, for the settings it runs with (Celery's prefork
    children each get their own; new settings replace it). Serves the edit sandbox and the encode
    process (jobs/encode_process.py)."""

    def __init__(self, make: Callable[[Settings], Child]):
        self._make = make
        self._handles: dict[int, Child] = {}
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> Child:
        key = os.getpid()
        with self._lock:
            handle = self._handles.get(key)
            if handle is None or handle.settings is not settings:
                if handle is not None:
                    handle.stop()
                handle = self._handles[key] = self._make(settings)
            return handle

    def stop_all(self) -> None:
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for handle in handles:
            handle.stop()


_sandboxes = PerProcess(EditSandbox)


def sandbox_for(settings: Settings) -> EditSandbox:
    """This process's sandbox for these settings."""
    return _sandboxes.get(settings)


def stop_sandboxes() -> None:
    _sandboxes.stop_all()
