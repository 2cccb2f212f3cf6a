"""Association admission: which transfer syntax we accept, how many associations may exist, and how long
a connection may take to negotiate one.

- **Transfer syntax preference** (`preferred_syntaxes`): of what a presentation context proposes, we
  accept its uncompressed or lossless syntaxes in the sender's own order; a lossy one only when the
  context proposes nothing lossless; Deflate only when it proposes nothing else. (pynetdicom picks the
  first of *our* list that the context proposes, so the order is set per association before it does.)
  Each context is decided on its own: a sender that proposes one context per syntax (dcmtk's default)
  gets each of them, and sends each file in its own encoding, untranscoded; refusing its lossy context
  would only force it to decompress an already lossy file, or fail (dcmtk cannot decode JPEG 2000).
- **A total association limit** (`AssociationGate`): `node.max_associations` established associations
  across every receiver process (a shared array, one slot per process, under a shared lock).
- **A negotiation deadline and a cap on pending connections** (`NegotiationWatchdog`): a connection
  must have an accepted (or rejected) association `node.acse_timeout` seconds after it was accepted,
  however it trickles its bytes (pynetdicom's timers restart on every byte), and at most
  `node.max_pending_associations` connections negotiate at once: one more drops the oldest.

`GuardedACSE` is pynetdicom's ACSE with the gate and the preference applied before its own
`_negotiate_as_acceptor` runs (a subclass calling `super()`, nothing of pynetdicom's copied).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import MutableSequence
from typing import Any

from pynetdicom.acse import ACSE
from pynetdicom.association import Association

log = logging.getLogger("x2x.receive")

_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                 "1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3")
LOSSLESS_SYNTAXES = frozenset((
    *_UNCOMPRESSED,
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.92",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.5",  # RLE Lossless
))
DEFLATE_SYNTAXES = frozenset((
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205",  # JPIP ... Deflate
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
))

REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit
MIN_PENDING_AGE_S = 0.5  # a pending connection younger than this is still a fair negotiation


def preferred_syntaxes(proposed: list[str], supported: set[str]) -> list[str]:
    """Our order for the syntaxes the sender proposed (and we support): its lossless ones in its own
    order, then its lossy ones, then the deflated ones. pynetdicom accepts, for each proposed context,
    the first of this list that the context contains."""
    ours = [ts for ts in dict.fromkeys(proposed) if ts in supported]
    lossless = [ts for ts in ours if ts in LOSSLESS_SYNTAXES]
    deflated = [ts for ts in ours if ts in DEFLATE_SYNTAXES]
    lossy = [ts for ts in ours if ts not in LOSSLESS_SYNTAXES and ts not in DEFLATE_SYNTAXES]
    return lossless + lossy + deflated


def apply_preference(requested: list[Any], supported: list[Any]) -> None:
    """Order each supported context's syntaxes for this association's proposal (see the module doc)."""
    proposed: dict[str, list[str]] = {}
    for cx in requested:
        proposed.setdefault(str(cx.abstract_syntax), []).extend(str(ts) for ts in cx.transfer_syntax)
    for cx in supported:
        offered = proposed.get(str(cx.abstract_syntax))
        if offered is None:
            continue
        order = preferred_syntaxes(offered, {str(ts) for ts in cx.transfer_syntax})
        if order:
            cx.transfer_syntax = order


class AssociationGate:
    """At most `limit` established associations across every process that shares `counts`.

    `counts` has one slot per receiver process (only that process writes it; the parent zeroes the slot
    of a process it restarts, so a killed receiver's associations do not stay counted)."""

    def __init__(self, limit: int, counts: MutableSequence[int] | None = None, lock: Any = None, slot: int = 0):
        self.limit = limit
        self.counts: MutableSequence[int] = counts if counts is not None else [0]
        self.lock = lock if lock is not None else threading.Lock()
        self.slot = slot
        self._local = threading.Lock()

    def total(self) -> int:
        return int(sum(self.counts))

    def try_enter(self) -> bool:
        locked = self.lock.acquire(timeout=1.0)  # a receiver killed inside this lock must not stop us all
        try:
            with self._local:
                if self.total() >= self.limit:
                    return False
                self.counts[self.slot] += 1
                return True
        finally:
            if locked:
                self.lock.release()

    def leave(self) -> None:
        with self._local:
            self.counts[self.slot] = max(0, self.counts[self.slot] - 1)


class NegotiationWatchdog:
    """Drops connections that have not negotiated within the deadline, and the oldest pending one when
    too many negotiate at once; gives back the gate's permit of every association that ends."""

    def __init__(self, gate: AssociationGate, deadline_s: float, max_pending: int, tick_s: float = 0.2):
        self.gate = gate
        self.deadline_s = deadline_s
        self.max_pending = max_pending
        self.tick_s = tick_s
        self._pending: dict[Association, tuple[float, socket.socket]] = {}
        self._admitted: set[Association] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="x2x-negotiation-watchdog", daemon=True)
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def track(self, assoc: Association, sock: socket.socket, accepted_at: float | None = None) -> None:
        """A new connection (its association not yet started). Over the cap, the oldest pending one
        makes room — unless even that one is younger than MIN_PENDING_AGE_S (a burst, not slow senders:
        a real negotiation takes milliseconds), then the new one is dropped instead."""
        dropped: tuple[Association, socket.socket, str] | None = None
        now = time.monotonic()
        started = min(now, accepted_at) if accepted_at is not None else now
        with self._lock:
            if len(self._pending) >= self.max_pending:
                victim = min(self._pending, key=lambda a: self._pending[a][0])
                if now - self._pending[victim][0] >= MIN_PENDING_AGE_S:
                    dropped = (victim, self._pending.pop(victim)[1], "dropped the oldest")
                else:
                    dropped = (assoc, sock, "dropped this new one")
            if dropped is None or dropped[0] is not assoc:
                self._pending[assoc] = (started, sock)
        if dropped is not None:
            victim, victim_sock, which = dropped
            self._drop(victim, victim_sock,
                       why=f"more than node.max_pending_associations={self.max_pending} connections "
                           f"negotiating; {which}")

    def admitted(self, assoc: Association) -> None:
        """The gate let this association in: its permit is given back when it ends."""
        with self._lock:
            self._admitted.add(assoc)

    def ended(self, assoc: Association) -> None:
        """Give back the association's permit (idempotent)."""
        with self._lock:
            had = assoc in self._admitted
            self._admitted.discard(assoc)
            self._pending.pop(assoc, None)
        if had:
            self.gate.leave()

    @staticmethod
    def _drop(assoc: Association, sock: socket.socket, why: str) -> None:
        peer = getattr(assoc.requestor, "address", "?")
        log.warning("connection from %s dropped before an association was agreed: %s", peer, why)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv(): the association ends

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            now = time.monotonic()
            late: list[tuple[Association, socket.socket]] = []
            finished: list[Association] = []
            with self._lock:
                for assoc, (started, sock) in list(self._pending.items()):
                    if assoc.is_established or assoc.is_rejected or assoc.is_aborted or assoc.is_released:
                        del self._pending[assoc]
                    elif now - started > self.deadline_s:
                        del self._pending[assoc]
                        late.append((assoc, sock))
                finished = [a for a in self._admitted if a.ident is not None and not a.is_alive()]
            for assoc, sock in late:
                self._drop(assoc, sock, f"no association within node.acse_timeout={self.deadline_s:g} s")
            for assoc in finished:
                self.ended(assoc)


class GuardedACSE(ACSE):
    """pynetdicom's ACSE, with the association gate and the transfer syntax preference applied first."""

    x2x_watchdog: NegotiationWatchdog

    def _negotiate_as_acceptor(self) -> None:
        watchdog = self.x2x_watchdog
        primitive = self.requestor.primitive
        if not watchdog.gate.try_enter():
            self.assoc.x2x_reject_reason = (  # type: ignore[attr-defined]
                f"more than node.max_associations={watchdog.gate.limit} associations (all receivers)"
            )
            self.send_reject(*REJECT_LOCAL_LIMIT)
            from pynetdicom import evt

            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        watchdog.admitted(self.assoc)
        if primitive is not None:
            apply_preference(list(primitive.presentation_context_definition_list or []),
                             self.acceptor.supported_contexts)
        super()._negotiate_as_acceptor()
        if not self.assoc.is_established:
            watchdog.ended(self.assoc)


def guard(assoc: Association, sock: socket.socket, watchdog: NegotiationWatchdog,
          accepted_at: float | None = None) -> Association:
    """Put a new acceptor association (not yet started) under the gate, the preference and the deadline."""
    acse = assoc.acse
    acse.__class__ = GuardedACSE
    assert isinstance(acse, GuardedACSE)
    acse.x2x_watchdog = watchdog
    watchdog.track(assoc, sock, accepted_at)
    return assoc
