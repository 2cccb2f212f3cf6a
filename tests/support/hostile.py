"""Data sets a hostile or broken sender would send, built byte by byte where pydicom would refuse
(or recurse) to write them.

    nested_sequence_dataset_bytes(depth)      an encoded ReferencedStudySequence nested `depth` levels
    with_nested_sequence(ds, path, depth)     a Part 10 file: `ds` with that sequence spliced in
    part10_bytes(ds) / dataset_only_bytes(ds) encodings of a pydicom Dataset
    replace_bytes(path, old, new)             patch an encoded value in place (same length)
    slow_association_request(port)            a socket that has sent the first bytes of an A-ASSOCIATE-RQ
    node_rss_mb(pid)                          RSS of a process and all its descendants, in MB
"""

from __future__ import annotations

import io
import os
import socket
import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

_REFERENCED_STUDY_SEQUENCE = (0x0008, 0x1110)


def _tag(group: int, element: int) -> bytes:
    return struct.pack("<HH", group, element)


def nested_sequence_dataset_bytes(depth: int, tag: tuple[int, int] = _REFERENCED_STUDY_SEQUENCE) -> bytes:
    """Explicit VR Little Endian bytes of `tag` (SQ) nested `depth` levels, undefined lengths, with a
    Referenced SOP Class UID in the innermost item."""
    leaf_value = b"1.2.840.10008.3.1.2.3.1\0"  # even length
    leaf = _tag(0x0008, 0x1150) + b"UI" + struct.pack("<H", len(leaf_value)) + leaf_value
    opening = _tag(*tag) + b"SQ\0\0" + b"\xff\xff\xff\xff" + _tag(0xFFFE, 0xE000) + b"\xff\xff\xff\xff"
    closing = _tag(0xFFFE, 0xE00D) + b"\0\0\0\0" + _tag(0xFFFE, 0xE0DD) + b"\0\0\0\0"
    return opening * depth + leaf + closing * depth


def dataset_only_bytes(ds: Dataset, *, implicit: bool = False) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def part10_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


REQUEST_ATTRIBUTES_SEQUENCE = (0x0040, 0x0275)


def with_nested_sequence(ds: Dataset, path: Path, depth: int,
                         tag: tuple[int, int] = _REFERENCED_STUDY_SEQUENCE) -> Path:
    """Write `ds` (Explicit VR Little Endian) to `path` with sequence `tag` nested `depth` levels,
    spliced in at its place in tag order."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    at = tag[0] << 16 | tag[1]
    head, tail = Dataset(), Dataset()
    for elem in ds:
        if elem.tag == at:
            continue
        (head if elem.tag < at else tail).add(elem)
    body = dataset_only_bytes(head) + nested_sequence_dataset_bytes(depth, tag) + dataset_only_bytes(tail)
    meta_only = Dataset()
    meta_only.file_meta = ds.file_meta
    buf = io.BytesIO()
    meta_only.save_as(buf, enforce_file_format=True)  # preamble + DICM + file meta, empty data set
    path.write_bytes(buf.getvalue() + body)
    return path


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) >= 1, (old, new)
    path.write_bytes(data.replace(old, new))


def slow_association_request(port: int) -> socket.socket:
    """Connect and send the header of a 4 kB A-ASSOCIATE-RQ PDU (type 0x01, reserved, length); the
    caller trickles its body a byte at a time."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"\x01\x00" + struct.pack(">I", 4096) + b"\x00\x01")  # + protocol version
    return sock


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def node_rss_mb(pid: int) -> float:
    """RSS of `pid` and every descendant (receivers, edit child), in MB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
        todo.extend(_children(current))
    return total / 1024
