"""The DICOM SCP: C-ECHO + C-STORE for every storage SOP class, calling-AE allow-list, optional TLS.

Hot path of a C-STORE (no decode / re-encode of the data set):
1. read Study / Series / SOP Instance UID from the head of the encoded data set (elements up to
   (0020,000E) only; pixel data is never touched);
2. `Spool.store` the received bytes (128-byte preamble + file meta + the data set exactly as sent),
   durable (fsync + atomic rename) before we answer;
3. answer Success (0x0000), Out of resources (0xA700) on any write error, or Cannot understand
   (0xC210, reason logged) when the head of the data set cannot be parsed;
4. report an `InstanceReceived` event to the study tracker.

Several receiver processes can share the port with SO_REUSEPORT (`node.receiver_processes`); they send
their events to the serving process over a multiprocessing queue (`ReceiverPool`).
Logs: one line per association (at its end) and one per rejection; never patient name or ID.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Union

from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.config import NodeConfig, TLSConfig
from dicom_node.scp_tuning import adopt
from dicom_node.spool import Spool, StoreStatus

log = logging.getLogger("x2x.receive")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

_HEAD_BYTES = 64 * 1024
_STUDY_UID_TAG = 0x0020000D
_SERIES_UID_TAG = 0x0020000E
_SOP_UID_TAG = 0x00080018


# Events sent to the study tracker ------------------------------------------------------------
@dataclass(frozen=True)
class InstanceReceived:
    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    calling_ae: str
    called_ae: str
    association_id: str
    duplicate: bool


@dataclass(frozen=True)
class AssociationEnded:
    association_id: str
    calling_ae: str
    called_ae: str
    how: str  # released | aborted


@dataclass(frozen=True)
class AssociationRejected:
    calling_ae: str
    reason: str


@dataclass(frozen=True)
class InstanceRefused:
    sop_uid: str
    status: str  # out-of-resources | cannot-understand
    reason: str


ReceiveEvent = Union[InstanceReceived, AssociationEnded, AssociationRejected, InstanceRefused]
EventSink = Callable[[ReceiveEvent], None]


_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
# pynetdicom accepts the first of *our* syntaxes that the sender proposes. Uncompressed last, so a
# sender offering its file's own (compressed) encoding plus fallbacks sends it as it is, untranscoded.
ACCEPTED_TRANSFER_SYNTAXES = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED] + list(
    _UNCOMPRESSED
)


class UndecodableDataset(ValueError):
    """The head of the data set cannot be parsed, or it lacks the identifying UIDs."""


def peek_identifiers(dataset_bytes: bytes, transfer_syntax: str) -> tuple[str, str, str]:
    """(study, series, SOP instance UID) from the encoded data set, parsing only up to (0020,000E)."""
    ts = UID(transfer_syntax)
    data = dataset_bytes
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset_bytes)
        except zlib.error as exc:
            raise UndecodableDataset(f"deflated data set does not inflate: {exc}") from exc
    try:
        ds = read_dataset(
            BytesIO(data),
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=lambda tag, _vr, _len: tag > _SERIES_UID_TAG,
            defer_size=4096,
        )
        found = {}
        for tag in (_STUDY_UID_TAG, _SERIES_UID_TAG, _SOP_UID_TAG):
            elem = ds.get(tag)
            found[tag] = str(elem.value).strip().rstrip("\0") if elem is not None and elem.value else ""
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot understand"
        raise UndecodableDataset(f"cannot parse data set header: {type(exc).__name__}: {exc}") from exc
    missing = [name for name, tag in (("StudyInstanceUID", _STUDY_UID_TAG),
                                      ("SeriesInstanceUID", _SERIES_UID_TAG)) if not found[tag]]
    if missing:
        raise UndecodableDataset(f"data set lacks {', '.join(missing)}")
    return found[_STUDY_UID_TAG], found[_SERIES_UID_TAG], found[_SOP_UID_TAG]


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str,
                    implementation_uid: str, implementation_version: str) -> bytes:
    """Preamble + 'DICM' + File Meta Information (explicit VR little endian), built without pydicom:
    this runs once per C-STORE and pydicom's generic writer costs more than the rest of the hot path."""
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
        _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
        _meta_element(0x0010, b"UI", transfer_syntax.encode("ascii")),
        _meta_element(0x0012, b"UI", implementation_uid.encode("ascii")),
        _meta_element(0x0013, b"SH", implementation_version.encode("ascii")),
        *([_meta_element(0x0016, b"AE", source_ae.encode("ascii", "replace"))] if source_ae else []),
    ))
    return b"\0" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


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
            request_handler=_PromptRequestHandler,
        )
        # pynetdicom's "standard" handlers decode and format every PDU / DIMSE message for DEBUG
        # logs we never emit (setup_logging keeps pynetdicom at WARNING): pure per-PDU cost.
        from pynetdicom import _handlers

        for event, handler in (
            (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
            (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
            (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
            (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
        ):
            with contextlib.suppress(Exception):
                server.unbind(event, handler)
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
        self._emit(AssociationEnded(st.association_id, st.calling_ae, st.called_ae, how))

    def _on_store(self, event: evt.Event) -> int:
        st = self._stats_for(event.assoc)
        request: Any = event.request  # a C_STORE primitive
        # A view of pynetdicom's buffer: the data set is never copied, decoded or re-encoded.
        dataset = request.DataSet.getbuffer()  # type: ignore[union-attr]
        transfer_syntax = event.context.transfer_syntax
        try:
            try:  # the UIDs sit near the start; parse a small head first, everything if that fails
                study, series, sop = peek_identifiers(bytes(dataset[:_HEAD_BYTES]), transfer_syntax)
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


# Several receiver processes -----------------------------------------------------------------
def _child_main(config_json: str, spool_root: str, events: Any, log_level: str, json_logs: bool) -> None:
    from pathlib import Path

    from dicom_node.logs import setup_logging

    setup_logging(log_level, json_logs)
    config = NodeConfig.model_validate_json(config_json)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    scp = StorageSCP(config, Spool(Path(spool_root), fsync=config.spool_fsync), events.put, reuse_port=True)
    scp.start()
    events.put(("ready", os.getpid()))
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:  # orphaned: the serving process died
            break
    scp.stop()


class ReceiverPool:
    """N receiver processes on one port (SO_REUSEPORT), forwarding events to `sink` in this process."""

    def __init__(self, config: NodeConfig, spool_root: str, sink: EventSink, processes: int,
                 log_level: str = "INFO", json_logs: bool = False):
        self.config = config
        self.spool_root = spool_root
        self.sink = sink
        self.n = processes
        self.log_level = log_level
        self.json_logs = json_logs
        self._ctx = mp.get_context("spawn")
        self._events: Any = self._ctx.Queue()
        self._procs: list[Any] = []
        self._stopping = threading.Event()
        self._pump: threading.Thread | None = None

    def _spawn(self) -> Any:
        p = self._ctx.Process(
            target=_child_main,
            args=(self.config.model_dump_json(), self.spool_root, self._events, self.log_level,
                  self.json_logs),
            name="x2x-receiver",
            daemon=True,
        )
        p.start()
        return p

    def start(self, timeout: float = 60.0) -> None:
        self._procs = [self._spawn() for _ in range(self.n)]
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
                self._procs[i] = self._spawn()

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
