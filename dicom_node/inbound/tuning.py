"""Lower-latency acceptor loops for pynetdicom (measured: ~50 -> ~200 instances/s for 1 MB C-STOREs).

pynetdicom 3.0 polls: the DUL thread sleeps 1 ms whenever the socket has no complete PDU yet and the
association thread sleeps 1 ms between looks at its DIMSE queue. A 1 MB C-STORE arrives as several
PDUs, so each instance pays several of those sleeps. These subclasses keep pynetdicom's state machine
and handlers untouched and only replace the *waiting*:

- `WakeableDUL` blocks in `select()` on the peer socket plus a wake-up socketpair that is poked when the
  association queues a primitive to send (our C-STORE response), so it reacts at once to either.
- `PromptAcceptor` blocks on the DIMSE message queue (with a short timeout for release/abort checks)
  instead of sleeping.

`adopt(assoc)` switches a freshly created acceptor `Association` (and its DUL) to these classes; both
only override methods, so the switch is safe before the threads start. `node.scp_tuning = false` leaves
pynetdicom's own loops in place.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import time
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.utils import make_target

log = logging.getLogger("x2x.receive")

# Upper bound on how long either loop blocks without looking at timers / release / abort.
_MAX_BLOCK_S = 0.02

# The upstream functions these loops replace, as released in the pynetdicom version pinned in
# pyproject.toml: sha256 of `inspect.getsource(...)`. tests/test_receive.py checks them, so a pynetdicom
# upgrade that changes either loop fails loudly instead of silently drifting from ours.
UPSTREAM_VERSION = "3.0.4"
UPSTREAM_SOURCE_SHA256 = {
    "pynetdicom.dul.DULServiceProvider.run_reactor":
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.association.Association._run_reactor":
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
}


class WakeableDUL(DULServiceProvider):
    """DUL reactor that sleeps in select() on (peer socket, wake-up socket) instead of fixed sleeps."""

    _wake_r: socket.socket
    _wake_w: socket.socket

    def _init_wakeup(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        # A closed socket object raises OSError (its fd is -1, never reused): safe after shutdown.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _wait_for_work(self) -> None:
        peer = self.socket.socket if self.socket is not None else None
        if peer is None or (isinstance(peer, ssl.SSLSocket) and peer.pending()):
            time.sleep(0.0005)
            return
        try:
            select.select([peer, self._wake_r], [], [], _MAX_BLOCK_S)
        except (OSError, ValueError):  # socket closed under us: let the state machine notice
            time.sleep(0.0005)
            return
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def run_reactor(self) -> None:
        # Same steps as DULServiceProvider.run_reactor; only the idle wait differs.
        self._idle_timer.start()
        idle = False
        try:
            while True:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                    idle = True
                if idle:
                    self._wait_for_work()
                if self._kill_thread:
                    break
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception:
                    self._abort_after_exception()
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    idle = True
                    continue
                self.state_machine.do_action(event)
                idle = False
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _abort_after_exception(self) -> None:
        # As pynetdicom does: bypass the state machine, send A-ABORT, stop both reactors.
        log.exception("DUL failure, aborting association")
        pdu = A_ABORT_RQ()
        pdu.source = 0x02
        pdu.reason_diagnostic = 0x00
        with contextlib.suppress(Exception):
            self.socket.send(pdu.encode())  # type: ignore[union-attr]
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class PromptAcceptor(Association):
    """Acceptor reactor that blocks on the DIMSE queue instead of sleeping 1 ms per loop.

    Everything else is pynetdicom 3.0.4's `Association._run_reactor`, step for step: the pause
    handshake (`_is_paused` set around `_reactor_checkpoint.wait()`, which pynetdicom's own
    `send_*()` and release paths wait on) and the network-timeout branch with its A-RELEASE option.
    """

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            # Paused while an acceptor-side send_*() or release runs; they wait for _is_paused.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=_MAX_BLOCK_S)
            except queue.Empty:
                context_id, msg = None, None
            if msg is not None:
                self._serve_request(msg, int(context_id))  # type: ignore[arg-type]

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                log.error("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


def adopt(assoc: Association) -> Association:
    """Switch a new (not yet started) acceptor association to the prompt loops."""
    assoc.__class__ = PromptAcceptor
    dul = assoc.dul
    dul.__class__ = WakeableDUL
    assert isinstance(dul, WakeableDUL)
    dul._init_wakeup()
    # DULServiceProvider binds its thread target to run_reactor at construction: rebind to ours.
    dul._target = make_target(dul.run_reactor)  # type: ignore[attr-defined]
    return assoc
