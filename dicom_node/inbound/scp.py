"""The DICOM SCP: C-ECHO + C-STORE for every storage SOP class, calling-AE allow-list, optional TLS.

Hot path of a C-STORE (no decode / re-encode of the data set):
1. read Study / Series / SOP Instance UID from the head of the encoded data set (elements up to
   (0020,000E) only; pixel data is never touched);
2. `Spool.store` the received bytes (128-byte preamble + file meta + the data set exactly as sent),
   durable (fsync + atomic rename) before we answer;
3. answer Success (0x0000), Out of resources (0xA700) on any write error, or Cannot understand
   (0xC210, reason logged) when the head of the data set cannot be parsed;
4. report an `InstanceReceived` event to the study tracker.

With `node.scp_tuning` (default) each acceptor association runs the prompt reactor loops of
inbound/tuning.py; with it off, stock pynetdicom. Several receiver processes can share the port
(inbound/receivers.py). Logs: one line per association (at its end) and one per rejection; never
patient name or ID.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import os
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.config import NodeConfig, TLSConfig
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
from dicom_node.inbound.spool import Spool, StoreStatus
from dicom_node.inbound.tuning import adopt

log = logging.getLogger("x2x.receive")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210


_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
# pynetdicom accepts the first of *our* syntaxes that the sender proposes. Uncompressed last, so a
# sender offering its file's own (compressed) encoding plus fallbacks sends it as it is, untranscoded.
ACCEPTED_TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED] + list(
    _UNCOMPRESSED
)


def build_ssl_context(tls: TLSConfig) -> ssl.SSLContext | None:
    if not tls.enabled:
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("node.tls.enabled needs node.tls.cert_file and node.tls.key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    if tls.require_client_cert:
        if tls.ca_file is None:
            raise ValueError("node.tls.require_client_cert needs node.tls.ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


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


class SupportedContexts(list):  # type: ignore[type-arg]
    """The SCP's supported presentation contexts, cheap to deep-copy.

    pynetdicom deep-copies the server's contexts for every association it accepts
    (`RequestHandler._create_association`): with every storage SOP class x 45 transfer syntaxes that is
    ~8,000 UID objects, ~20-50 ms of Python per association (one per study for most senders). UIDs are
    immutable strings, so copying each context's own lists and dicts is the same copy.
    tests/test_receive.py checks that pynetdicom still copies this way and that the copies are equal.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        out = []
        for cx in self:
            new = copy.copy(cx)
            for name, value in vars(cx).items():
                if isinstance(value, (list, dict, set)):
                    setattr(new, name, copy.copy(value))
            out.append(new)
        return out


# pynetdicom's code that deep-copies the contexts per association (sha256 of its source, pinned version)
CONTEXT_COPY_SOURCE_SHA256 = {
    "pynetdicom.transport.RequestHandler._create_association":
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e",
}


class _PromptRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        return adopt(super()._create_association())


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, optionally sharing its port with sibling processes."""

    reuse_port = False
    daemon_threads = True

    handshake_timeout = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Unlike pynetdicom, no TLS handshake here: a silent client would block every later connection.
        # process_request_thread does it, on the connection's own thread, with a timeout.
        assert self.socket is not None
        client, address = self.socket.accept()
        # Small responses (C-STORE-RSP) must not wait for Nagle + the peer's delayed ACK.
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is not None:
            try:
                request.settimeout(self.handshake_timeout)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                log.warning("TLS handshake with %s failed: %s", client_address, exc)
                with contextlib.suppress(OSError):
                    request.close()
                return
        super().process_request_thread(request, client_address)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = SupportedContexts(self.contexts)

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class StorageSCP:
    """One pynetdicom acceptor writing into the spool and reporting events to `sink`."""

    def __init__(self, config: NodeConfig, spool: Spool, sink: EventSink, *, reuse_port: bool = False):
        self.config = config
        self.spool = spool
        self.sink = sink
        self.reuse_port = reuse_port
        self._server: _Server | None = None
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
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.maximum_pdu_size
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.network_timeout
        ae.require_called_aet = False  # the called AE selects the edit rule; any is accepted
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
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        _Server.reuse_port = self.reuse_port
        _Server.handshake_timeout = min(self.config.acse_timeout, 10.0)
        server: _Server = self.ae.make_server(  # type: ignore[assignment]
            (self.config.host, self.config.port),
            ssl_context=build_ssl_context(self.config.tls),
            evt_handlers=handlers,
            server_class=_Server,
            request_handler=_PromptRequestHandler if self.config.scp_tuning else RequestHandler,
        )
        self._server = server
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

    def _on_rejected(self, event: evt.Event) -> None:
        calling = str(event.assoc.requestor.ae_title or "").strip()
        allowed = self.config.allowed_calling_aes
        if allowed and calling not in [a.strip() for a in allowed]:
            reason = "calling AE title not in node.allowed_calling_aes"
        elif len(self._server.active_associations if self._server else []) > self.config.max_associations:
            reason = f"more than node.max_associations={self.config.max_associations} associations"
        else:
            reason = "no acceptable presentation context or protocol error"
        log.warning(
            "association rejected: calling AE %r from %s:%s: %s",
            calling, event.assoc.requestor.address, event.assoc.requestor.port, reason,
        )
        self._emit(AssociationRejected(calling_ae=calling, reason=reason))

    def _on_ended(self, event: evt.Event) -> None:
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

    def _on_store(self, event: evt.Event) -> int:
        st = self._stats_for(event.assoc)
        request: Any = event.request  # a C_STORE primitive
        # A view of pynetdicom's buffer: the data set is never copied, decoded or re-encoded.
        dataset = request.DataSet.getbuffer()  # type: ignore[union-attr]
        transfer_syntax = event.context.transfer_syntax
        try:
            try:  # the UIDs sit near the start; parse a small head first, everything if that fails
                study, series, sop = peek_identifiers(bytes(dataset[:HEAD_BYTES]), transfer_syntax)
            except UndecodableDataset:
                study, series, sop = peek_identifiers(bytes(dataset), transfer_syntax)
        except UndecodableDataset as exc:
            st.failed += 1
            log.warning("C-STORE of SOP %s refused (0xC210): %s",
                        request.AffectedSOPInstanceUID, exc)
            self._emit(InstanceRefused(str(request.AffectedSOPInstanceUID), "cannot-understand", str(exc)))
            return STATUS_CANNOT_UNDERSTAND
        sop = sop or str(request.AffectedSOPInstanceUID)
        # File meta (as pynetdicom would build it), written ahead of the untouched data set bytes.
        meta = file_meta_bytes(
            str(request.AffectedSOPClassUID), sop, str(transfer_syntax), st.calling_ae,
            self.ae.implementation_class_uid, self.ae.implementation_version_name or "",
        )
        try:
            self.spool.record_origin(study, st.called_ae, st.calling_ae)
        except OSError as exc:
            st.failed += 1
            log.error("C-STORE of SOP %s: cannot record study origin: %s", sop, exc)
            self._emit(InstanceRefused(sop, "out-of-resources", str(exc)))
            return STATUS_OUT_OF_RESOURCES
        outcome = self.spool.store(
            (meta, dataset), study_uid=study, series_uid=series, sop_uid=sop
        )
        if not outcome.ok:
            st.failed += 1
            self._emit(InstanceRefused(sop, "out-of-resources", outcome.error or ""))
            return STATUS_OUT_OF_RESOURCES
        duplicate = outcome.status is StoreStatus.ALREADY_STORED
        if duplicate:
            st.duplicates += 1
        else:
            st.stored += 1
            st.bytes += len(dataset)
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
