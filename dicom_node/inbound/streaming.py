"""Receiving a C-STORE data set without holding it in memory.

pynetdicom collects a DIMSE message's data set fragments in a `BytesIO`. `SpillBuffer` is that
`BytesIO` (pynetdicom checks the type): up to `SPILL_BYTES` it stays in memory (the common ~1-10 MB
radiograph pays nothing extra), beyond that it moves to an anonymous temporary file in the spool's
`.incoming` folder (`O_TMPFILE`: it has no name, so a crash or an abort leaves nothing behind) and
every later fragment goes straight there. Past `node.max_instance_mb` it stops keeping anything and
only counts, so the SCP answers 0xA700 once the sender is done, with memory and disk untouched.

`stream_into_spill_buffers(assoc, ...)` makes an acceptor association's DIMSE provider start every
message with a SpillBuffer (it pre-creates the message pynetdicom would create, nothing else), and
caps the PDU length the association's socket will read: pynetdicom reads a whole PDU into memory, so
a sender ignoring our maximum PDU length must not make it allocate gigabytes.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage

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


class SpillingDIMSE(DIMSEServiceProvider):
    """Starts each incoming DIMSE message with a SpillBuffer as its data set."""

    x2x_spill_dir: Path
    x2x_cap: int

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            message = DIMSEMessage()
            message.data_set = SpillBuffer(self.x2x_spill_dir, SPILL_BYTES, self.x2x_cap)
            self.message = message
        super().receive_primitive(primitive)


def _capped_recv(assoc: Any, sock: Any, limit: int) -> Any:
    recv = sock.recv

    def recv_at_most(nr_bytes: int) -> bytearray:
        if nr_bytes > limit:
            log.warning("association from %s: a PDU of %d bytes (limit %d): aborting",
                        getattr(assoc.requestor, "address", "?"), nr_bytes, limit)
            return bytearray()  # pynetdicom sees a short read: invalid PDU, the association is aborted
        return recv(nr_bytes)  # type: ignore[no-any-return]

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
