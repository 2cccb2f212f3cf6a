"""The SCP's transport: the TCP server (port sharing, TLS handshake on the connection's own thread, a
real listen backlog, the accept time of each connection) and the request handlers that put every
acceptor association under admission control (inbound/associations.py), stream its data sets
(inbound/streaming.py) and, with `node.scp_tuning`, switch it to the prompt loops (inbound/tuning.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
import ssl
import time
from typing import Any

from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.config import TLSConfig
from dicom_node.inbound.associations import guard
from dicom_node.inbound.streaming import stream_into_spill_buffers
from dicom_node.inbound.tuning import adopt

log = logging.getLogger("x2x.receive")


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


class GuardedRequestHandler(RequestHandler):
    """Every acceptor association: admission control (gate, deadline, transfer syntax preference) and
    data sets streamed into SpillBuffers."""

    server: Server

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        scp = self.server.x2x_scp
        stream_into_spill_buffers(assoc, scp.spool.root / ".incoming", scp.max_instance_bytes,
                                  scp.config.maximum_pdu_size)
        accepted = self.server.x2x_accepted_at.pop(self.request.fileno(), None)
        return guard(assoc, self.request, scp.watchdog, accepted_at=accepted)


class PromptRequestHandler(GuardedRequestHandler):
    def _create_association(self) -> Association:
        return adopt(super()._create_association())


class Server(ThreadedAssociationServer):
    """pynetdicom's threaded server, optionally sharing its port with sibling processes."""

    reuse_port = False
    daemon_threads = True
    request_queue_size = 256  # listen backlog (socketserver's default of 5 drops bursts of connections)
    x2x_scp: Any  # the StorageSCP this server serves (spool, limits, watchdog)
    x2x_accepted_at: dict[int, float]

    handshake_timeout = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Unlike pynetdicom, no TLS handshake here: a silent client would block every later connection.
        # process_request_thread does it, on the connection's own thread, with a timeout.
        assert self.socket is not None
        client, address = self.socket.accept()
        # the negotiation deadline runs from here, not from when this connection's thread gets going
        self.x2x_accepted_at[client.fileno()] = time.monotonic()
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
