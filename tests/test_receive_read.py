"""The SCP's PDU read (inbound/streaming.read_pdu_bytes) over real sockets: same bytes as pynetdicom's
`AssociationSocket.recv`, in a few system calls instead of one per 4 KB."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import socket
import threading
from typing import Any

from dicom_node.inbound import streaming


class _Counting:
    """A real socket whose recv_into calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls = 0

    def recv_into(self, buffer: Any, nbytes: int) -> int:
        self.calls += 1
        return self.sock.recv_into(buffer, nbytes)


class _AssocSocket:  # what pynetdicom's AssociationSocket offers the read: the connected socket
    def __init__(self, raw: Any) -> None:
        self.socket = raw


def _pair() -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    server.close()
    return client, conn


def test_reads_a_pdu_whole_in_a_few_calls_and_matches_pynetdicom() -> None:
    from pynetdicom.transport import AssociationSocket

    payload = os.urandom(128 * 1024 + 7)  # dcmtk's largest send PDU, and an odd tail
    client, conn = _pair()
    try:
        sender = threading.Thread(target=lambda: client.sendall(payload * 2))
        sender.start()
        counting = _Counting(conn)
        ours = streaming.read_pdu_bytes(_AssocSocket(counting), len(payload))
        upstream = AssociationSocket.recv(_AssocSocket(conn), len(payload))  # type: ignore[arg-type]
        sender.join()
        assert isinstance(ours, bytearray) and ours == payload
        assert upstream == payload
        assert counting.calls <= 8, counting.calls  # pynetdicom: len(payload) / 4096 = 33 recv calls at least
    finally:
        client.close()
        conn.close()


def test_short_read_when_the_peer_closes_like_pynetdicom() -> None:
    from pynetdicom.transport import AssociationSocket

    for read in (streaming.read_pdu_bytes, AssociationSocket.recv):
        client, conn = _pair()
        try:
            client.sendall(b"x" * 1000)
            client.close()
            got = read(_AssocSocket(conn), 5000)  # type: ignore[arg-type]
            assert got == bytearray(b"x" * 1000), read
        finally:
            conn.close()


def test_read_replaces_exactly_the_pinned_upstream_recv() -> None:
    """read_pdu_bytes stands in for pynetdicom's AssociationSocket.recv: an upstream change must fail here
    (compare it with read_pdu_bytes, then update the pin)."""
    for qualname, digest in streaming.RECV_SOURCE_SHA256.items():
        module_name, cls_name, func_name = qualname.rsplit(".", 2)
        func = getattr(getattr(importlib.import_module(module_name), cls_name), func_name)
        assert hashlib.sha256(inspect.getsource(func).encode()).hexdigest() == digest, qualname
