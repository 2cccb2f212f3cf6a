"""The two byte-level steps of a C-STORE that never decode the data set: reading its identifying UIDs
from the head of the encoded bytes, and writing the Part 10 file meta in front of them.

The UIDs are read by `scan_identifiers`, a loop over the top-level element headers (little endian,
values skipped by their lengths): pydicom's `read_dataset` builds a Dataset of DataElements for the same
~60 elements and cost ~0.3 ms of the ~6 ms of CPU a 1 MB C-STORE takes. Anything the scan does not
plainly understand (big endian, an undefined length, an unknown VR, a UID that is not digits and dots)
goes to pydicom, as before; tests/test_encoding.py checks both agree on every corpus file.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

HEAD_BYTES = 64 * 1024
MAX_INFLATED_HEAD = 4 * 1024 * 1024  # the UIDs sit at the start: never inflate a whole (maybe bomb) data set
_STUDY_UID_TAG = 0x0020000D
_SERIES_UID_TAG = 0x0020000E
_SOP_UID_TAG = 0x00080018
_WANTED = frozenset({_STUDY_UID_TAG, _SERIES_UID_TAG, _SOP_UID_TAG})
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
                 b"US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 2 reserved bytes + 4-byte length
_UID_BYTES = frozenset(b"0123456789.")
_EXPLICIT_HEADER = struct.Struct("<HH2sH")
_IMPLICIT_HEADER = struct.Struct("<HHI")
_U32 = struct.Struct("<I")


class UndecodableDataset(ValueError):
    """The head of the data set cannot be parsed, or it lacks the identifying UIDs."""


def scan_identifiers(data: bytes, *, implicit: bool) -> tuple[str, str, str] | None:
    """(study, series, SOP instance UID) of a little endian data set from its element headers alone, or
    None where pydicom must parse it (see the module docstring). Stops at the first tag past (0020,000E),
    as pydicom's `stop_when` does."""
    found: dict[int, str] = {}
    pos, size = 0, len(data)
    while pos + 8 <= size:
        if implicit:
            group, elem, length = _IMPLICIT_HEADER.unpack_from(data, pos)
            pos += 8
        else:
            group, elem, vr, length = _EXPLICIT_HEADER.unpack_from(data, pos)
            if vr not in _VRS:
                return None
            if vr in _LONG_VRS:
                if pos + 12 > size:
                    return None
                (length,) = _U32.unpack_from(data, pos + 8)
                pos += 12
            else:
                pos += 8
        tag = group << 16 | elem
        if tag > _SERIES_UID_TAG:
            if _STUDY_UID_TAG not in found or _SERIES_UID_TAG not in found:
                return None  # pydicom says what is missing
            return found[_STUDY_UID_TAG], found[_SERIES_UID_TAG], found.get(_SOP_UID_TAG, "")
        if length == 0xFFFFFFFF or pos + length > size:
            return None
        if tag in _WANTED:
            value = data[pos:pos + length].rstrip(b"\0 ")
            if not value or not _UID_BYTES.issuperset(value):
                return None
            found[tag] = value.decode("ascii")
        pos += length
    return None  # the head ended first


def peek_identifiers(dataset_bytes: bytes, transfer_syntax: str) -> tuple[str, str, str]:
    """(study, series, SOP instance UID) from the encoded data set, parsing only up to (0020,000E)."""
    ts = UID(transfer_syntax)
    data = dataset_bytes
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(dataset_bytes, MAX_INFLATED_HEAD)
        except zlib.error as exc:
            raise UndecodableDataset(f"deflated data set does not inflate: {exc}") from exc
    if ts.is_little_endian:
        scanned = scan_identifiers(data, implicit=ts.is_implicit_VR)
        if scanned is not None:
            return scanned
    return parse_identifiers(data, ts)


def parse_identifiers(data: bytes, ts: UID) -> tuple[str, str, str]:
    """What peek_identifiers returns, by pydicom (any encoding it reads; the scan's fallback)."""
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
            value = elem.value if elem is not None else None
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                value = "\\".join(str(v) for v in value)  # several values: kept as sent, refused later
            found[tag] = str(value).strip().rstrip("\0") if value else ""
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
