"""Receiving a C-STORE data set without holding it in memory.

pynetdicom collects a DIMSE message's data set fragments in a `BytesIO`. `SpillBuffer` is that
`BytesIO` (pynetdicom checks the type): up to `SPILL_BYTES` it stays in memory (the common ~1-10 MB
radiograph pays nothing extra), beyond that it moves to an anonymous temporary file in the spool's
`.incoming` folder (`O_TMPFILE`: it has no name, so a crash or an abort leaves nothing behind) and
every later fragment goes straight there. Past `node.max_instance_mb` it stops keeping anything and
only counts, so the SCP answers 0xA700 once the sender is done, with memory and disk untouched.

`stream_into_spill_buffers(assoc, ...)` makes an acceptor association's DIMSE provider start every
message with a SpillBuffer (it pre-creates the message pynetdicom would create, nothing else), and
replaces the association socket's read (`read_pdu_bytes`): the PDU length is capped (pynetdicom reads a
whole PDU into memory, so a sender ignoring our maximum PDU length must not make it allocate
gigabytes), and the PDU is read into one buffer in as few `recv_into` calls as the kernel allows, where
pynetdicom's `AssociationSocket.recv` loops over 4 KB `recv`s and grows a bytearray: ~250 system calls
and Python iterations per 1 MB instance, on the one thread that receives the association.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.inbound.commands import store_request_primitive, store_response_command

log = logging.getLogger("x2x.receive")

SPILL_BYTES = 16 * 1024 * 1024
_PDU_SLACK = 64 * 1024


class SpillBuffer(io.BytesIO):
    """A BytesIO that moves to a nameless file in `directory` past `threshold` bytes and keeps
    nothing (but the count) past `cap` bytes."""

    def __init__(self, directory: Path, threshold: int, cap: int):
        super().__init__()
        self.directory = directory
        self.threshold = threshold
        self.cap = cap
        self.size = 0
        self.over_cap = False
        self.file: Any = None

    @property
    def spilled(self) -> bool:
        return self.file is not None

    def write(self, data: Any) -> int:  # type: ignore[override]
        n = len(data)
        self.size += n
        if self.over_cap:
            return n
        if self.size > self.cap:
            self.over_cap = True
            self.release()
            return n
        if self.file is None:
            if self.size <= self.threshold:
                return super().write(data)
            self.directory.mkdir(parents=True, exist_ok=True)
            # O_TMPFILE on Linux: never named; closed by release() (or with this buffer)
            self.file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115
            with self.getbuffer() as held:
                self.file.write(held)
            super().seek(0)
            super().truncate(0)
        self.file.write(data)
        return n

    def fileno_for_copy(self) -> int:
        assert self.file is not None
        self.file.flush()
        return int(self.file.fileno())

    def head(self, n: int) -> bytes:
        """The first `n` bytes of the data set, wherever they are."""
        if self.file is None:
            with self.getbuffer() as held:
                return bytes(held[:n])
        self.file.flush()
        return os.pread(self.file.fileno(), n, 0)

    def release(self) -> None:
        """Free the memory and the file now (idempotent)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        try:
            super().seek(0)
            super().truncate(0)
        except BufferError:  # a view of the data is still alive (an exception's frame): freed with it
            pass


def _to_primitive(message: DIMSEMessage) -> Any:
    """`message.message_to_primitive()`: inbound/commands.py for a plain C-STORE-RQ, else pynetdicom's."""
    primitive = store_request_primitive(message)
    return primitive if primitive is not None else type(message).message_to_primitive(message)


class SpillingDIMSE(DIMSEServiceProvider):
    """Starts each incoming DIMSE message with a SpillBuffer as its data set, converts plain C-STORE
    requests and sends plain C-STORE responses with inbound/commands.py."""

    x2x_spill_dir: Path
    x2x_cap: int

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            message = DIMSEMessage()
            message.data_set = SpillBuffer(self.x2x_spill_dir, SPILL_BYTES, self.x2x_cap)
            # pynetdicom's receive_primitive calls this once the message is complete (decode_msg has
            # switched its class to the message type by then); an instance attribute, this message only.
            message.message_to_primitive = functools.partial(_to_primitive, message)  # type: ignore[method-assign]
            self.message = message
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        # pynetdicom's send_msg, less the Dataset round trip: one P-DATA with the whole command set
        # (what encode_msg yields when it fits one PDU). Its EVT_DIMSE_SENT carries the pydicom message,
        # so with a handler bound for it (none is: LOG_HANDLER_LEVEL "none") pynetdicom sends.
        command = store_response_command(primitive)
        if (command is None or (self.maximum_pdu_size and len(command) > self.maximum_pdu_size - 6)
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.dul.send_pdu(pdata)


# pynetdicom's socket read that read_pdu_bytes replaces (sha256 of its source, the pinned version;
# tests/test_receive_read.py checks it): a change upstream must be looked at, not silently bypassed.
RECV_SOURCE_SHA256 = {
    "pynetdicom.transport.AssociationSocket.recv":
        "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
}


def read_pdu_bytes(sock: Any, nr_bytes: int) -> bytearray:
    """What `AssociationSocket.recv(nr_bytes)` returns (the bytes, fewer only if the peer closed), read
    straight into one buffer. Errors (OSError, timeouts) propagate as from pynetdicom's read."""
    raw = sock.socket
    if raw is None:
        raise OSError("association socket is closed")
    buf = bytearray(nr_bytes)
    got = 0
    with memoryview(buf) as view:
        while got < nr_bytes:
            n = raw.recv_into(view[got:], nr_bytes - got)
            if not n:  # connection closed: pynetdicom sees a short read and ends the association
                break
            got += n
    del buf[got:]
    return buf


def _capped_recv(assoc: Any, sock: Any, limit: int) -> Any:
    def recv_at_most(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            log.warning("association from %s: a PDU of %d bytes (limit %d): aborting",
                        getattr(assoc.requestor, "address", "?"), nr_bytes, limit)
            return bytearray()  # pynetdicom sees a short read: invalid PDU, the association is aborted
        return read_pdu_bytes(sock, nr_bytes)

    return recv_at_most


def stream_into_spill_buffers(assoc: Any, spill_dir: Path, cap_bytes: int, max_pdu: int) -> None:
    dimse = assoc.dimse
    dimse.__class__ = SpillingDIMSE
    dimse.x2x_spill_dir = spill_dir
    dimse.x2x_cap = cap_bytes
    sock = assoc.dul.socket
    if sock is not None:
        limit = (max(max_pdu, 1024 * 1024) if max_pdu > 0 else cap_bytes) + _PDU_SLACK
        sock.recv = _capped_recv(assoc, sock, limit)
