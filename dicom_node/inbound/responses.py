"""The C-STORE-RSP command set, encoded without pydicom.

Every C-STORE ends with this ~100-byte message. pynetdicom builds it as a pydicom Dataset (a property
set per element, each validated) and encodes it twice (group length, then the message): ~0.3 ms of
Python per instance on the association's thread, between our Success and the sender seeing it.
`store_response_command(primitive)` writes the same bytes directly (Implicit VR Little Endian, PS3.7
9.3.1.2) for the responses the SCP sends: Affected SOP Class / Instance UID, the request's message ID
and a status, no Offending Element or Error Comment. Anything else returns None and goes through
pynetdicom. tests/test_responses.py checks the bytes against pynetdicom's encoding, and pins the
`send_msg` that `SpillingDIMSE.send_msg` (inbound/streaming.py) stands in for.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse_primitives import C_STORE

# pynetdicom's send path this replaces for plain C-STORE responses (sha256 of its source, pinned version)
SEND_MSG_SOURCE_SHA256 = {
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg":
        "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
}

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_US = struct.Struct("<HHIH")
_HEADER = struct.Struct("<HHI")


def _uid(element: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return _HEADER.pack(0x0000, element, len(raw)) + raw


def store_response_command(primitive: Any) -> bytes | None:
    """The encoded command set of a plain C-STORE-RSP `primitive`, or None (let pynetdicom encode it)."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    sop_class, sop_instance, status = (primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID,
                                       primitive.Status)
    if not sop_class or not sop_instance or not isinstance(status, int):
        return None
    try:
        body = b"".join((
            _uid(0x0002, str(sop_class)),
            _US.pack(0x0000, 0x0100, 2, _C_STORE_RSP),
            _US.pack(0x0000, 0x0120, 2, int(primitive.MessageIDBeingRespondedTo)),
            _US.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
            _US.pack(0x0000, 0x0900, 2, status),
            _uid(0x1000, str(sop_instance)),
        ))
    except (UnicodeEncodeError, struct.error):
        return None
    return _HEADER.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body
