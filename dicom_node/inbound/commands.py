"""The C-STORE command sets, decoded and encoded without pydicom.

Every C-STORE starts with a ~150-byte request command set and ends with a ~100-byte response. pynetdicom
turns the request into its C_STORE primitive by converting every element of a pydicom Dataset (each
validated), and builds the response as a Dataset (a property set per element) encoded twice (group
length, then the message): together ~0.5 ms of Python per instance, on the path between the last PDU
and the sender seeing Success. Here, for the plain case only:

- `store_request_primitive(message)`: the C_STORE primitive of a received C-STORE-RQ whose command set
  holds exactly the required elements (no Move Originator), from its encoded bytes (Implicit VR Little
  Endian, PS3.7 9.3.1.1);
- `store_response_command(primitive)`: the encoded command set of a C-STORE-RSP with Affected SOP Class
  / Instance UID, the request's message ID and a status, no Offending Element or Error Comment.

Anything else returns None and goes through pynetdicom (inbound/streaming.SpillingDIMSE decides).
tests/test_commands.py checks both against pynetdicom's own conversion and encoding, and pins the
pynetdicom code they stand in for.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

# The pynetdicom code these stand in for (sha256 of its source, the pinned version): the response's send
# path, and the request's conversion to a primitive.
SOURCE_SHA256 = {
    "pynetdicom.dimse_messages.DIMSEMessage.message_to_primitive":
        "f8f43d34e43450efa31bd308677b85b370f8ca7600c0e067e854f8095ce665ac",
    "pynetdicom.dimse.DIMSEServiceProvider.send_msg":
        "a839cf2fb46976d9da29cf06fea41c04416b38d14fab612af12e5d869bd5b3f0",
}

_C_STORE_RQ = 0x0001
_C_STORE_RSP = 0x8001
# (0000,eeee) elements of a plain C-STORE-RQ: group length, SOP class, command field, message ID,
# priority, data set type, SOP instance
_REQUEST_ELEMENTS = frozenset({0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
_UID_BYTES = frozenset(b"0123456789.")
_NO_DATA_SET = 0x0101
_US = struct.Struct("<HHIH")
_HEADER = struct.Struct("<HHI")


def _uid(element: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return _HEADER.pack(0x0000, element, len(raw)) + raw


def _uid_value(raw: bytes) -> str | None:
    value = raw.rstrip(b"\0 ")
    return value.decode("ascii") if value and _UID_BYTES.issuperset(value) else None


def store_request_primitive(message: Any) -> C_STORE | None:
    """The C_STORE primitive pynetdicom's `message_to_primitive` makes of a plain C-STORE-RQ `message`
    (its data set, context and file attributes included), or None (let pynetdicom convert it)."""
    if type(message) is not C_STORE_RQ:
        return None
    raw = message.encoded_command_set.getvalue()
    values: dict[int, bytes] = {}
    pos, size = 0, len(raw)
    while pos < size:
        if pos + 8 > size:
            return None
        group, element, length = _HEADER.unpack_from(raw, pos)
        pos += 8
        if group != 0x0000 or element in values or pos + length > size:
            return None
        values[element] = raw[pos:pos + length]
        pos += length
    if values.keys() != _REQUEST_ELEMENTS or any(len(values[e]) != 2 for e in (0x0100, 0x0110, 0x0700, 0x0800)):
        return None
    command, message_id, priority, _ = (struct.unpack("<H", values[e])[0] for e in (0x0100, 0x0110, 0x0700, 0x0800))
    sop_class, sop_instance = _uid_value(values[0x0002]), _uid_value(values[0x1000])
    if command != _C_STORE_RQ or sop_class is None or sop_instance is None:
        return None
    primitive = C_STORE()  # the setters validate as they do for pynetdicom's conversion
    primitive.AffectedSOPClassUID = sop_class
    primitive.MessageID = message_id
    primitive.Priority = priority
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.DataSet = message.data_set
    primitive._context_id = message.context_id
    primitive._dataset_path = message._data_set_path
    primitive._dataset_file = message._data_set_file
    return primitive


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
