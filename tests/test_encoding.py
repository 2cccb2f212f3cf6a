"""inbound/encoding.py's UID scan against pydicom on every test file pydicom and pydicom-data ship: where
the scan answers, it answers what pydicom's parse does, and it answers for the instances senders send."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import UID

from dicom_node.inbound import bounds, encoding
from dicom_node.inbound.encoding import HEAD_BYTES, UndecodableDataset


def _corpus(pydicom_data_dir: Path) -> list[Path]:
    files = {Path(p) for p in get_testdata_files("*.dcm")} | set(Path(pydicom_data_dir).rglob("*.dcm"))
    return sorted(files)


def test_scan_agrees_with_pydicom_on_the_corpus(pydicom_data_dir: Path) -> None:
    scanned = 0
    for path in _corpus(pydicom_data_dir):
        data = path.read_bytes()
        try:
            meta = bounds.part10_meta(data)
        except Exception:  # noqa: BLE001 - not a Part 10 file with a readable meta
            continue
        ts = UID(meta.transfer_syntax)
        if not ts.is_little_endian or ts.is_deflated or meta.dataset_offset == 0:
            continue
        for body in (data[meta.dataset_offset:], data[meta.dataset_offset:][:HEAD_BYTES]):
            fast = encoding.scan_identifiers(body, implicit=ts.is_implicit_VR)
            if fast is None:
                continue
            scanned += 1
            assert fast == encoding.parse_identifiers(body, ts), path.name
    assert scanned > 50  # the scan answers for most files, not only the ones it was written for


def test_scan_answers_for_a_typical_instance(chest_cr_path: Path) -> None:
    from tests.support.dicom_files import dataset_bytes

    raw = dataset_bytes(chest_cr_path)
    ds = pydicom.dcmread(chest_cr_path, stop_before_pixels=True)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert encoding.scan_identifiers(raw[:HEAD_BYTES], implicit=False) == uids


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"SQ", b"UN", b"OB"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


STUDY, SERIES, SOP = (_explicit(0x0020000D, b"UI", b"1.2.3\0"), _explicit(0x0020000E, b"UI", b"1.2.4\0"),
                      _explicit(0x00080018, b"UI", b"1.2.5\0"))
PIXELS = _explicit(0x7FE00010, b"OB", b"\0" * 16)


@pytest.mark.parametrize("body", [
    SOP + _explicit(0x00081140, b"SQ", b"") + STUDY + SERIES + PIXELS,  # defined-length sequence: skipped
    SOP + STUDY + SERIES + PIXELS,
])
def test_scan_reads_plain_heads(body: bytes) -> None:
    assert encoding.scan_identifiers(body, implicit=False) == ("1.2.3", "1.2.4", "1.2.5")


@pytest.mark.parametrize("body", [
    SOP + struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + STUDY + SERIES,  # undefined length
    SOP + _explicit(0x0020000D, b"UI", b"1.2.3 x") + SERIES + PIXELS,  # not a UID: pydicom's string, refused later
    SOP + _explicit(0x0020000D, b"UI", b"1.2\\3.4") + SERIES + PIXELS,  # two values
    SOP + STUDY + SERIES,  # the head ends before anything past (0020,000E)
    SOP + SERIES + PIXELS,  # no study UID: pydicom names what is missing
    b"\x08\x00\x18\x00\x0a\x00\x00\x00" + SOP,  # implicit VR bytes sent as explicit
])
def test_scan_leaves_the_unusual_to_pydicom(body: bytes) -> None:
    assert encoding.scan_identifiers(body, implicit=False) is None


def test_peek_still_refuses_what_pydicom_cannot_read() -> None:
    with pytest.raises(UndecodableDataset, match="StudyInstanceUID"):
        encoding.peek_identifiers(SOP + SERIES + PIXELS, "1.2.840.10008.1.2.1")
    assert encoding.peek_identifiers(SOP + STUDY + SERIES + PIXELS, "1.2.840.10008.1.2.1") == ("1.2.3", "1.2.4",
                                                                                                 "1.2.5")
