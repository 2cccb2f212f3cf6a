"""Bounds on what a sender's data set may make us build: sequence nesting depth and element count,
checked on the encoded bytes before anything decodes them.

Why: pydicom reads, copies and writes nested sequences recursively, and on an error it re-wraps the
exception at every level with the whole traceback text (`pydicom.tag.tag_in_exception`), so the message
grows ~2.6x per level: a 500-level ReferencedStudySequence in a 1 MB file took a worker to 24.5 GB.
A data set is therefore walked here first, iteratively (no recursion, no decoding, values skipped by
their lengths), and refused when it nests deeper than `node.max_sequence_depth` or holds more than
`node.max_elements` elements.

`check_encoded(data, transfer_syntax, limits)` walks Implicit / Explicit VR, little and big endian,
undefined-length sequences and items, encapsulated pixel data, UN values that are really sequences,
and (inflated, up to the size cap) Deflated Explicit VR Little Endian. It raises `LimitExceeded`
(refuse the instance) or `Unfollowable` (the encoding is too broken to walk; `check_parsed` then
parses it with pydicom — depth bounded by the recursion limit, caught — and counts on the result).
`check_file(path, limits)` does the same for a Part 10 file.
"""

from __future__ import annotations

import functools
import mmap
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.datadict import DicomDictionary
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
# VRs whose explicit encoding has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SQ_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
_TRAILING_SLACK = 8  # bytes after the last element that pydicom ignores too (odd padding)


@dataclass(frozen=True)
class Limits:
    max_depth: int = 32
    max_elements: int = 200_000
    max_inflated_bytes: int = 2 * 1024**3  # a Deflate bomb stops here

    @classmethod
    def from_node(cls, node: Any) -> Limits:
        return cls(node.max_sequence_depth, node.max_elements, node.max_instance_mb * 1024 * 1024)


class LimitExceeded(ValueError):
    """The data set is over a bound: refuse it (the message says which, and the setting)."""


class Unfollowable(ValueError):
    """The encoding cannot be walked without decoding it (broken lengths, unknown VR bytes...)."""


_STRUCTS = {
    little: (struct.Struct(e + "HH"), struct.Struct(e + "I"), struct.Struct(e + "HH2sH"))
    for little, e in ((True, "<"), (False, ">"))
}
_ITEM_BYTES = {True: b"\xfe\xff\x00\xe0", False: b"\xff\xfe\xe0\x00"}


def walk(buf: Any, *, implicit: bool, little: bool, limits: Limits, start: int = 0) -> tuple[int, int]:
    """Walk an encoded data set; (deepest nesting, element count). Raises LimitExceeded / Unfollowable.

    The stack holds one frame per open container: [end offset or None (undefined length), holds
    items?, implicit VR?, opaque fragments?]. Written as one flat loop: it runs on every C-STORE."""
    tags, u32, explicit_header = _STRUCTS[little]
    item_bytes = _ITEM_BYTES[little]
    size = len(buf)
    max_elements, max_depth = limits.max_elements, limits.max_depth
    stack: list[tuple[int | None, bool, bool, bool]] = [(size, False, implicit, False)]
    end, in_items, frame_implicit, fragments = stack[-1]
    pos, elements, depth, deepest = start, 0, 0, 0
    while True:
        if end is not None and pos >= end:
            if pos > end:
                raise Unfollowable(f"a value runs past its container at offset {end}")
            if len(stack) == 1:
                break
            stack.pop()
            depth -= in_items and not fragments
            end, in_items, frame_implicit, fragments = stack[-1]
            continue
        if pos + 8 > size:
            if len(stack) == 1 and size - pos < _TRAILING_SLACK:
                break
            raise Unfollowable(f"data set ends inside an element header at offset {pos}")
        if frame_implicit or in_items:
            group, elem = tags.unpack_from(buf, pos)
            vr, short_length = None, 0
        else:  # tag, VR and (for most VRs) the length in one unpack: this loop runs on every C-STORE
            group, elem, vr, short_length = explicit_header.unpack_from(buf, pos)
        if group == 0xFFFE:
            (length,) = u32.unpack_from(buf, pos + 4)
            pos += 8
            if elem == _ITEM and in_items:
                if fragments:
                    if length == _UNDEFINED:
                        raise Unfollowable(f"pixel data fragment of undefined length at offset {pos - 8}")
                    pos += length
                    continue
                stack.append((None if length == _UNDEFINED else pos + length, False, frame_implicit, False))
            elif (elem == _ITEM_END and not in_items) or (elem == _SEQ_END and in_items):
                if len(stack) == 1:
                    continue  # a stray delimiter at the top level: pydicom skips it too
                stack.pop()
                if in_items:
                    depth -= not fragments
            else:
                raise Unfollowable(f"item tag (FFFE,{elem:04X}) out of place at offset {pos - 8}")
            end, in_items, frame_implicit, fragments = stack[-1]
            continue
        if in_items:
            raise Unfollowable(f"element ({group:04X},{elem:04X}) where an item belongs at offset {pos}")
        elements += 1
        if elements > max_elements:
            raise LimitExceeded(f"more than {max_elements} data elements (node.max_elements)")
        if frame_implicit:
            (length,) = u32.unpack_from(buf, pos + 4)
            value = pos + 8
        elif vr in _LONG_VRS:
            (length,) = u32.unpack_from(buf, pos + 8)
            value = pos + 12
        elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:  # type: ignore[index]
            length, value = short_length, pos + 8
        else:
            raise Unfollowable(f"bytes {vr!r} where a VR belongs at offset {pos}")
        if length == _UNDEFINED:
            if (group << 16 | elem) == _PIXEL_DATA and vr != b"SQ":
                stack.append((None, True, frame_implicit, True))
                end, in_items, frame_implicit, fragments = stack[-1]
                pos = value
                continue
        elif vr == b"SQ" or (
            (vr is None or vr == b"UN")
            and buf[value:value + 4] == item_bytes
            and ((group << 16 | elem) in _SQ_TAGS or group % 2 == 1)
        ):
            if value + length > size:
                raise Unfollowable(f"({group:04X},{elem:04X}) claims {length} bytes, {size - value} remain")
        else:
            pos = value + length
            if pos > size:
                raise Unfollowable(f"({group:04X},{elem:04X}) claims {length} bytes, {size - value} remain")
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if depth > max_depth:
                raise LimitExceeded(f"sequences nested more than {max_depth} deep (node.max_sequence_depth)")
        stack.append((None if length == _UNDEFINED else value + length, True, frame_implicit or vr == b"UN",
                      False))
        end, in_items, frame_implicit, fragments = stack[-1]
        pos = value
    return deepest, elements


def _inflated(data: Any, limit: int) -> Any:
    """The inflated data set in a nameless temporary file, mapped (inflated in 1 MB steps, never whole
    in memory); LimitExceeded past `limit` bytes: a Deflate bomb stops there."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the mapping's owner below
    size, view, pos, step = 0, memoryview(data), 0, 1 << 20
    try:
        while pos < len(view) or inflater.unconsumed_tail:
            chunk = inflater.unconsumed_tail or bytes(view[pos:pos + step])
            if not inflater.unconsumed_tail:
                pos += step
            piece = inflater.decompress(chunk, step)
            size += len(piece)
            if size > limit:
                raise LimitExceeded(f"deflated data set inflates beyond {limit // 2**20} MB (node.max_instance_mb)")
            out.write(piece)
            if inflater.eof:
                break
    except zlib.error as exc:
        out.close()
        raise Unfollowable(f"deflated data set does not inflate: {exc}") from exc
    except BaseException:
        out.close()
        raise
    finally:
        view.release()
    out.flush()
    return _Inflated(out, size)


class _Inflated:
    """An inflated data set on disk, as a read-only mapping (closed with it)."""

    def __init__(self, fh: Any, size: int):
        self.fh = fh
        self.size = size
        self.mapped = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) if size else None

    def close(self) -> None:
        if self.mapped is not None:
            self.mapped.close()
        self.fh.close()


@functools.lru_cache(maxsize=64)
def _encoding(transfer_syntax: str) -> tuple[UID, bool, bool, bool]:
    ts = UID(transfer_syntax)
    return ts, ts.is_implicit_VR, ts.is_little_endian, ts == DeflatedExplicitVRLittleEndian


def check_encoded(data: Any, transfer_syntax: str, limits: Limits) -> None:
    """Walk the encoded data set (bytes / memoryview / mmap) of `transfer_syntax`; raises LimitExceeded."""
    ts, implicit, little, deflated = _encoding(str(transfer_syntax))
    if not deflated:
        try:
            walk(data, implicit=implicit, little=little, limits=limits)
        except Unfollowable:
            check_parsed(bytes(data), ts, limits)
        return
    inflated = _inflated(data, limits.max_inflated_bytes)
    try:
        if inflated.mapped is not None:
            try:
                walk(inflated.mapped, implicit=False, little=True, limits=limits)
            except Unfollowable:
                check_parsed(inflated.mapped[:], UID("1.2.840.10008.1.2.1"), limits)
    finally:
        inflated.close()


def check_parsed(data: bytes, ts: UID, limits: Limits) -> None:
    """The slow path for encodings the walker cannot follow: let pydicom parse it (a nesting deeper
    than the recursion limit raises RecursionError, caught) and count on the result. A data set pydicom
    cannot parse at all passes here: nothing decodes it further than the study intake, which records
    it as unreadable."""
    from io import BytesIO

    from pydicom.filereader import read_dataset

    try:
        ds = read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
        count_parsed(ds, limits)
    except RecursionError as exc:
        raise LimitExceeded(f"sequences nested too deep to parse (node.max_sequence_depth "
                            f"{limits.max_depth})") from exc
    except LimitExceeded:
        raise
    except Exception:  # noqa: BLE001 - unparseable: the intake records why
        return


def count_parsed(ds: Any, limits: Limits) -> tuple[int, int]:
    """(deepest nesting, element count) of a parsed pydicom Dataset, iteratively; raises LimitExceeded."""
    elements, deepest = 0, 0
    todo: list[tuple[Any, int]] = [(ds, 0)]
    while todo:
        current, level = todo.pop()
        for elem in _elements(current):
            elements += 1
            if elements > limits.max_elements:
                raise LimitExceeded(f"more than {limits.max_elements} data elements (node.max_elements)")
            if getattr(elem, "VR", None) == "SQ" and elem.value is not None:
                if level + 1 > limits.max_depth:
                    raise LimitExceeded(
                        f"sequences nested more than {limits.max_depth} deep (node.max_sequence_depth)"
                    )
                deepest = max(deepest, level + 1)
                todo.extend((item, level + 1) for item in elem.value)
    return deepest, elements


def _elements(ds: Any) -> Iterator[Any]:
    # Dataset.elements() yields raw elements without converting their values; only raw sequences
    # (and UN values that may be sequences) are converted, so their items can be counted.
    for elem in ds.elements():
        value = elem.value
        if (
            getattr(elem, "VR", None) in ("SQ", "UN", None)  # raw implicit VR elements have no VR yet
            and isinstance(value, (bytes, bytearray))
            and (int(elem.tag) in _SQ_TAGS or value[:4] in (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00"))
        ):
            try:
                yield ds[elem.tag]
            except Exception:  # noqa: BLE001 - not a sequence after all / undecodable: a leaf
                yield elem
        else:
            yield elem


@dataclass(frozen=True)
class Part10Meta:
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset_offset: int  # where the data set starts


IMPLICIT_LE = "1.2.840.10008.1.2"


def part10_meta(buf: Any) -> Part10Meta:
    """The file meta of a Part 10 object in `buf` (bytes / memoryview / mmap): preamble, 'DICM' and the
    group 0002 elements (always Explicit VR Little Endian), read without pydicom. A buffer without the
    'DICM' prefix is taken as a bare Implicit VR Little Endian data set (as pydicom's force=True does)."""
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        return Part10Meta(IMPLICIT_LE, "", "", 0)
    values: dict[int, str] = {}
    pos, size = 132, len(buf)
    while pos + 8 <= size:
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = bytes(buf[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > size:
                break
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            value = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            value = pos + 8
        if value + length > size:
            raise Unfollowable("file meta runs past the end of the object")
        if elem in (0x0002, 0x0003, 0x0010):
            values[elem] = bytes(buf[value:value + length]).decode("latin-1").strip(" \0")
        pos = value + length
    return Part10Meta(values.get(0x0010) or IMPLICIT_LE, values.get(0x0002, ""), values.get(0x0003, ""), pos)


def check_file(path: Path, limits: Limits) -> None:
    """`check_encoded` for a Part 10 file on disk (mapped, not read into memory)."""
    with open(path, "rb") as fh:
        meta = part10_meta(fh.read(64 * 1024))
        ts, offset = meta.transfer_syntax, meta.dataset_offset
        size = fh.seek(0, 2)
        if size <= offset:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            body = view[offset:]
            try:
                check_encoded(body, ts, limits)
            finally:
                body.release()
                view.release()
