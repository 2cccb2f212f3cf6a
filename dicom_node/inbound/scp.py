"""The DICOM SCP: C-ECHO + C-STORE for every storage SOP class, calling-AE allow-list, called-AE policy,
optional TLS.

Called AE titles: the node answers to its own AE title and every rule's `called_ae`. An association to
any other title (a misspelt rule AE would otherwise silently lose its rule) is rejected with
A-ASSOCIATE-RJ "called AE title not recognised" (`node.unknown_called_ae = "reject"`, the default) or
accepted as if sent to the node's own title with a warning (`"default"`); both are logged with the
calling AE and address.

Hot path of a C-STORE (no decode / re-encode of the data set):
1. read Study / Series / SOP Instance UID from the head of the encoded data set (elements up to
   (0020,000E) only; pixel data is never touched);
2. walk the encoded data set for its bounds (inbound/bounds.py: sequence depth, element count);
3. `Spool.store` the received bytes (128-byte preamble + file meta + the data set exactly as sent),
   durable (fsync + atomic rename) before we answer;
4. answer Success (0x0000); Out of resources (0xA700) on a write error, a full spool or an instance
   over `node.max_instance_mb`; Cannot understand (0xC210, reason logged) when the head cannot be
   parsed or a UID is not a UID; 0xC212 when the data set is over a bound;
5. report an `InstanceReceived` event to the study tracker.

Admission (inbound/associations.py): a total association limit across receiver processes, the
transfer syntax preference (lossless as proposed, lossy only alone, Deflate last), a deadline for the
whole negotiation and a cap on connections still negotiating. Large data sets arrive into a temporary
file instead of memory (inbound/streaming.py). With `node.scp_tuning` (default) each acceptor
association runs the prompt reactor loops of inbound/tuning.py; with it off, stock pynetdicom. Several
receiver processes can share the port (inbound/receivers.py). Logs: one line per association (at its
end) and one per rejection; never patient name or ID.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeConfig
from dicom_node.inbound.associations import AssociationGate, NegotiationWatchdog
from dicom_node.inbound.bounds import LimitExceeded, Limits, check_encoded
from dicom_node.inbound.encoding import HEAD_BYTES, UndecodableDataset, file_meta_bytes, peek_identifiers
from dicom_node.inbound.events import (
    DIMSE,
    AssociationEnded,
    AssociationRejected,
    EventSink,
    InstanceReceived,
    InstanceRefused,
    ReceiveEvent,
)
from dicom_node.inbound.http import uid_problem
from dicom_node.inbound.spool import FileSlice, Spool, StoreStatus
from dicom_node.inbound.streaming import SpillBuffer
from dicom_node.inbound.transport import GuardedRequestHandler, PromptRequestHandler, Server, build_ssl_context

log = logging.getLogger("x2x.receive")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_OVER_LIMITS = 0xC212  # "cannot understand" family: the data set is over the node's bounds
SPILLED_HEAD_BYTES = 1024 * 1024
# A-ASSOCIATE-RJ: rejected-permanent, by the DUL service user, "called AE title not recognised" (PS3.8 9.3.4)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)

# Every syntax pynetdicom knows; which one an association gets is chosen per proposal
# (inbound/associations.py: the sender's lossless syntaxes as proposed, lossy only alone, Deflate last).
ACCEPTED_TRANSFER_SYNTAXES = list(ALL_TRANSFER_SYNTAXES)


@dataclass
class _AssocStats:
    association_id: str
    calling_ae: str
    called_ae: str
    peer: str
    started: float = field(default_factory=time.monotonic)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0


class StorageSCP:
    """One pynetdicom acceptor writing into the spool and reporting events to `sink`."""

    def __init__(self, config: NodeConfig, spool: Spool, sink: EventSink, *, reuse_port: bool = False,
                 called_aes: Collection[str] | None = None, gate: AssociationGate | None = None):
        """`called_aes`: the AE titles this node answers to (Settings.known_called_aes(): its own and every
        rule's); default: only `config.ae_title`. `gate`: the association count shared by receivers."""
        self.config = config
        self.spool = spool
        self.sink = sink
        self.reuse_port = reuse_port
        self.called_aes = {a.strip() for a in (called_aes or [config.ae_title])}
        self.limits = Limits.from_node(config)
        self.max_instance_bytes = config.max_instance_mb * 1024 * 1024
        self.min_free_bytes = config.spool_min_free_mb * 1024 * 1024
        self.gate = gate or AssociationGate(config.max_associations)
        self.watchdog = NegotiationWatchdog(self.gate, config.acse_timeout, config.max_pending_associations)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stats: dict[int, _AssocStats] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
        # The limit is ours (AssociationGate: established associations, all receivers together);
        # pynetdicom's own counts every thread, negotiating ones included, in this process only.
        ae.maximum_associations = 100_000
        ae.maximum_pdu_size = cfg.maximum_pdu_size
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.network_timeout
        # pynetdicom can only require its one AE title; the node answers to several (rules), so the called
        # AE is checked in _on_requested against self.called_aes.
        ae.require_called_aet = False
        ae.require_calling_aet = list(cfg.allowed_calling_aes)
        return ae

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        # pynetdicom's "standard" event handlers decode and format every PDU / DIMSE message for DEBUG
        # logs we never emit (setup_logging keeps pynetdicom at WARNING): pure per-PDU cost. Its
        # supported switch turns them off for every association (bound anew by each one).
        _config.LOG_HANDLER_LEVEL = "none"
        # Each C-STORE hops between the DUL and association threads several times; with Python's
        # default 5 ms GIL switch interval those hand-offs add latency (measured ~+20% instances/s).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda _e: STATUS_SUCCESS),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        Server.reuse_port = self.reuse_port
        Server.handshake_timeout = min(self.config.acse_timeout, 10.0)
        Server.request_queue_size = self.config.listen_backlog
        Server.x2x_scp = self
        Server.x2x_accepted_at = {}
        server: Server = self.ae.make_server(  # type: ignore[assignment]
            (self.config.host, self.config.port),
            ssl_context=build_ssl_context(self.config.tls),
            evt_handlers=handlers,
            server_class=Server,
            request_handler=PromptRequestHandler if self.config.scp_tuning else GuardedRequestHandler,
        )
        self._server = server
        self.watchdog.start()
        self.ae._servers.append(server)  # pynetdicom's shutdown() removes it from this list
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="x2x-scp", daemon=True
        )
        self._thread.start()
        host, port = server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for assoc in list(self._server.active_associations):
                assoc.abort()
            self._server = None
            self.watchdog.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # handlers (run on association threads) --------------------------------------------------
    def _stats_for(self, assoc: Association) -> _AssocStats:
        with self._lock:
            st = self._stats.get(id(assoc))
            if st is None:  # EVT_ACCEPTED normally creates it; be robust anyway
                st = self._new_stats(assoc)
            return st

    def _new_stats(self, assoc: Association) -> _AssocStats:
        rq = assoc.requestor
        called = getattr(rq.primitive, "called_ae_title", None) or self.config.ae_title
        st = _AssocStats(
            association_id=f"{os.getpid()}-{next(self._ids)}",
            calling_ae=str(rq.ae_title or "").strip(),
            called_ae=str(called).strip(),
            peer=f"{rq.address}:{rq.port}",
        )
        self._stats[id(assoc)] = st
        return st

    def _on_accepted(self, event: evt.Event) -> None:
        with self._lock:
            self._new_stats(event.assoc)

    def _on_requested(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ received, before negotiation: apply the called-AE policy."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        if called in self.called_aes:
            return
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        known = ", ".join(sorted(self.called_aes))
        if self.config.unknown_called_ae == "default":
            log.warning("called AE %r is not one of this node's AE titles (%s): accepted as %r "
                        "(node.unknown_called_ae = default); calling AE %r from %s",
                        called, known, self.config.ae_title, calling, peer)
            return
        assoc.x2x_reject_reason = (  # type: ignore[attr-defined]  # read by _on_rejected
            f"called AE title {called!r} not recognised (this node answers to {known}; "
            "node.unknown_called_ae = reject)"
        )
        # pynetdicom's documented way to refuse from EVT_REQUESTED: send the A-ASSOCIATE-RJ; run_reactor
        # then skips negotiation. The rest is what its own rejections do (EVT_REJECTED, then kill).
        assoc.acse.send_reject(*REJECT_CALLED_AE)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_rejected(self, event: evt.Event) -> None:
        primitive = event.assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", None) or event.assoc.requestor.ae_title or "").strip()
        allowed = self.config.allowed_calling_aes
        # set where we refuse (the called-AE policy here, the association gate in inbound/associations.py)
        reason: str | None = getattr(event.assoc, "x2x_reject_reason", None)
        if not reason:
            reason = ("calling AE title not in node.allowed_calling_aes"
                      if allowed and calling not in [a.strip() for a in allowed]
                      else "no acceptable presentation context or protocol error")
        log.warning(
            "association rejected: calling AE %r from %s:%s: %s",
            calling, event.assoc.requestor.address, event.assoc.requestor.port, reason,
        )
        self._emit(AssociationRejected(calling_ae=calling, reason=reason))

    def _on_ended(self, event: evt.Event) -> None:
        self.watchdog.ended(event.assoc)
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        with self._lock:
            st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
        seconds = time.monotonic() - st.started
        log.info(
            "association %s %s: calling AE %r -> called AE %r from %s, %d stored, %d duplicate, "
            "%d failed, %.1f MB in %.2f s",
            st.association_id, how, st.calling_ae, st.called_ae, st.peer, st.stored, st.duplicates,
            st.failed, st.bytes / 1e6, seconds,
        )
        self._emit(AssociationEnded(st.association_id, st.calling_ae, st.called_ae, how, DIMSE))

    def _refuse(self, st: _AssocStats, sop: str, status: int, kind: str, reason: str) -> int:
        st.failed += 1
        log.warning("C-STORE of SOP %s refused (0x%04X): %s", sop, status, reason)
        self._emit(InstanceRefused(sop, kind, reason))
        return status

    def _on_store(self, event: evt.Event) -> int:
        st = self._stats_for(event.assoc)
        request: Any = event.request  # a C_STORE primitive
        received = request.DataSet
        try:
            return self._store(st, request, received, str(event.context.transfer_syntax))
        except Exception as exc:  # noqa: BLE001 - the last net: a status and one line, never a traceback
            log.debug("C-STORE handler failed", exc_info=True)
            return self._refuse(st, str(request.AffectedSOPInstanceUID), 0xC211, "cannot-understand",
                                f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if isinstance(received, SpillBuffer) and received.spilled:
                received.release()  # the temporary file now; an in-memory buffer goes with the message

    def _store(self, st: _AssocStats, request: Any, received: Any, transfer_syntax: str) -> int:
        affected = str(request.AffectedSOPInstanceUID or "")
        spilled = isinstance(received, SpillBuffer) and received.spilled
        if isinstance(received, SpillBuffer) and received.over_cap:
            return self._refuse(st, affected, STATUS_OUT_OF_RESOURCES, "out-of-resources",
                                f"instance of {received.size / 2**20:.0f} MB is larger than "
                                f"node.max_instance_mb={self.config.max_instance_mb}")
        mapped: Any = None
        try:
            if spilled:
                size = received.size
                mapped = mmap.mmap(received.fileno_for_copy(), size, access=mmap.ACCESS_READ)
                dataset: Any = mapped
                head = received.head(SPILLED_HEAD_BYTES)
            else:
                # A view of pynetdicom's buffer: the data set is never copied, decoded or re-encoded.
                dataset = received.getbuffer()
                size = len(dataset)
                head = bytes(dataset[:HEAD_BYTES])
            try:  # first, before anything parses it: pydicom recurses into nested sequences
                check_encoded(dataset, transfer_syntax, self.limits)
            except LimitExceeded as exc:
                return self._refuse(st, ascii(affected)[1:-1], STATUS_OVER_LIMITS, "cannot-understand", str(exc))
            try:
                try:  # the UIDs sit near the start; parse a small head first, everything if that fails
                    study, series, sop = peek_identifiers(head, transfer_syntax)
                except UndecodableDataset:
                    if spilled:
                        raise
                    study, series, sop = peek_identifiers(bytes(dataset), transfer_syntax)
            except UndecodableDataset as exc:
                return self._refuse(st, affected, STATUS_CANNOT_UNDERSTAND, "cannot-understand", str(exc))
            sop = sop or affected
            for what, uid in (("Study Instance UID", study), ("Series Instance UID", series),
                              ("SOP Instance UID", sop)):
                problem = uid_problem(uid)
                if problem is not None:
                    return self._refuse(st, ascii(affected)[1:-1], STATUS_CANNOT_UNDERSTAND, "cannot-understand",
                                        f"{what}: {problem}")
            return self._spool(st, request, dataset, received if spilled else None, size,
                               (study, series, sop), transfer_syntax)
        finally:
            if mapped is not None:
                mapped.close()

    def _spool(self, st: _AssocStats, request: Any, dataset: Any, spill: SpillBuffer | None, size: int,
               uids: tuple[str, str, str], transfer_syntax: str) -> int:
        study, series, sop = uids
        try:
            free = self.spool.free_bytes()
        except OSError:
            free = None
        if free is not None and free - size < self.min_free_bytes:
            return self._refuse(st, sop, STATUS_OUT_OF_RESOURCES, "out-of-resources",
                                f"spool has {free / 2**20:.0f} MB free, keeping node.spool_min_free_mb="
                                f"{self.config.spool_min_free_mb}")
        # File meta (as pynetdicom would build it), written ahead of the untouched data set bytes.
        meta = file_meta_bytes(
            str(request.AffectedSOPClassUID), sop, transfer_syntax, st.calling_ae,
            self.ae.implementation_class_uid, self.ae.implementation_version_name or "",
        )
        try:
            self.spool.record_origin(study, st.called_ae, st.calling_ae)
        except OSError as exc:
            log.error("C-STORE of SOP %s: cannot record study origin: %s", sop, exc)
            return self._refuse(st, sop, STATUS_OUT_OF_RESOURCES, "out-of-resources", str(exc))
        body = FileSlice(spill.fileno_for_copy(), 0, size) if spill is not None else dataset
        outcome = self.spool.store((meta, body), study_uid=study, series_uid=series, sop_uid=sop)
        if not outcome.ok:
            st.failed += 1
            self._emit(InstanceRefused(sop, "out-of-resources", outcome.error or ""))
            return STATUS_OUT_OF_RESOURCES
        duplicate = outcome.status is StoreStatus.ALREADY_STORED
        if duplicate:
            st.duplicates += 1
        else:
            st.stored += 1
            st.bytes += size
        self._emit(
            InstanceReceived(
                study_uid=study, series_uid=series, sop_uid=sop, path=str(outcome.path),
                calling_ae=st.calling_ae, called_ae=st.called_ae,
                association_id=st.association_id, duplicate=duplicate,
            )
        )
        return STATUS_SUCCESS

    def _emit(self, event: ReceiveEvent) -> None:
        try:
            self.sink(event)
        except Exception:  # the tracker must never make a C-STORE fail after it is on disk
            log.exception("event sink failed for %s", type(event).__name__)
