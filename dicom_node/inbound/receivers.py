"""Several receiver processes on one port (SO_REUSEPORT), each a StorageSCP writing the shared spool and
forwarding its events to the serving process over a multiprocessing queue."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from typing import Any

from dicom_node.config import NodeConfig
from dicom_node.inbound.associations import AssociationGate
from dicom_node.inbound.events import EventSink
from dicom_node.inbound.scp import StorageSCP
from dicom_node.inbound.spool import Spool

log = logging.getLogger("x2x.receive")


def _child_main(config_json: str, spool_root: str, events: Any, log_level: str, json_logs: bool,
                counts: Any, gate_lock: Any, slot: int, called_aes: list[str] | None = None) -> None:
    from pathlib import Path

    from dicom_node.logs import setup_logging

    setup_logging(log_level, json_logs)
    config = NodeConfig.model_validate_json(config_json)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    gate = AssociationGate(config.max_associations, counts, gate_lock, slot)
    scp = StorageSCP(config, Spool(Path(spool_root), fsync=config.spool_fsync), events.put, reuse_port=True,
                     called_aes=called_aes, gate=gate)
    scp.start()
    events.put(("ready", os.getpid()))
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # orphaned: the serving process died
            break
    scp.stop()


class ReceiverPool:
    """N receiver processes on one port (SO_REUSEPORT), forwarding events to `sink` in this process.

    They share one association count (an array with a slot per process, see AssociationGate), so
    `node.max_associations` is the node's total, however many receivers run."""

    def __init__(self, config: NodeConfig, spool_root: str, sink: EventSink, processes: int,
                 log_level: str = "INFO", json_logs: bool = False, called_aes: list[str] | None = None):
        self.config = config
        self.called_aes = called_aes
        self.spool_root = spool_root
        self.sink = sink
        self.n = processes
        self.log_level = log_level
        self.json_logs = json_logs
        self._ctx = mp.get_context("spawn")
        self._events: Any = self._ctx.Queue()
        self._counts: Any = self._ctx.Array("i", processes, lock=False)
        self._gate_lock: Any = self._ctx.Lock()
        self._procs: list[Any] = []
        self._stopping = threading.Event()
        self._pump: threading.Thread | None = None

    def _spawn(self, slot: int) -> Any:
        self._counts[slot] = 0  # a restarted receiver's predecessor held nothing any more
        p = self._ctx.Process(
            target=_child_main,
            args=(self.config.model_dump_json(), self.spool_root, self._events, self.log_level,
                  self.json_logs, self._counts, self._gate_lock, slot, self.called_aes),
            name="x2x-receiver",
            daemon=True,
        )
        p.start()
        return p

    def start(self, timeout: float = 60.0) -> None:
        self._procs = [self._spawn(i) for i in range(self.n)]
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < self.n:
            try:
                item = self._events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty as exc:
                raise RuntimeError("receiver processes did not start in time") from exc
            if isinstance(item, tuple) and item[0] == "ready":
                ready += 1
            else:
                self.sink(item)
        self._pump = threading.Thread(target=self._pump_events, name="x2x-receiver-events", daemon=True)
        self._pump.start()

    def _pump_events(self) -> None:
        last_check = time.monotonic()
        while not self._stopping.is_set():
            try:
                item = self._events.get(timeout=0.5)
            except queue.Empty:
                item = None
            except (EOFError, OSError):
                return
            if item is not None and not (isinstance(item, tuple) and item[0] == "ready"):
                try:
                    self.sink(item)
                except Exception:
                    log.exception("event sink failed")
            if time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                self._restart_dead()

    def _restart_dead(self) -> None:
        for i, p in enumerate(self._procs):
            if not p.is_alive() and not self._stopping.is_set():
                log.error("receiver process %s exited with %s; starting a new one", p.pid, p.exitcode)
                self._procs[i] = self._spawn(i)

    def stop(self) -> None:
        self._stopping.set()
        for p in self._procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        # Drain what the children reported before they stopped.
        while True:
            try:
                item = self._events.get(timeout=0.2)
            except (queue.Empty, EOFError, OSError):
                break
            if not (isinstance(item, tuple) and item[0] == "ready"):
                with contextlib.suppress(Exception):
                    self.sink(item)
        if self._pump is not None:
            self._pump.join(timeout=5)
