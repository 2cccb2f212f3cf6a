"""A corpus of broken and hostile DICOM instances, generated (deterministically, from a seed) from a
small copy of the real chest CR: what a broken modality or an attacker would send.

    cases = fuzz_corpus(chest_cr_path, out_dir, seed=1)   # list[FuzzCase] (name, kind, path)

Every case is a Part 10 file whose file meta is intact (a sender could send it: the SOP class, the
instance UID of the command and the transfer syntax come from there) and whose data set is mutated:

- truncated       the data set cut at random offsets (inside headers, values, pixel data)
- flipped         1-16 random bytes flipped anywhere in the data set
- huge-length     one element's length field set to a huge / odd / past-the-end value
- wrong-vr        one element's VR bytes replaced (unknown, SQ, UN, lower case, binary, ...)
- deep            sequences nested 10 ... 10,000 levels, before and after the UIDs, implicit or explicit
- wide            one sequence with 50,000 items; 250,000 tiny private elements
- uid             UIDs with non-ASCII bytes, control characters, 65+ characters, empty, path-like
- no-pixels       pixel data missing / short / zero rows / zero bits / mismatched, Samples per Pixel 0
- deflate         Deflated Explicit VR with garbage, a truncated stream, and a bomb past the size cap
- garbage         random bytes, an empty data set, a data set of zeros

Each case has its own SOP Instance UID (where the case leaves one), so none is a duplicate of another.
About a third of the cases ask for an edit (the INSTRUCTX2X private block), so a run makes jobs of
those that survive as valid radiographs, without editing every one.
"""

from __future__ import annotations

import copy
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicom_node.studies.requests import write_private_block
from tests.support.chest_copies import chest_copy
from tests.support.hostile import REQUEST_ATTRIBUTES_SEQUENCE, dataset_only_bytes, nested_sequence_dataset_bytes

_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class FuzzCase:
    name: str
    kind: str
    path: Path


def _meta_bytes(sop_class: str, sop_uid: str, ts: str) -> bytes:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ts
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _elements(body: bytes) -> list[tuple[int, int, bytes, int]]:
    """(offset, tag, vr, length) of the top-level elements of an Explicit VR Little Endian data set."""
    out, pos = [], 0
    while pos + 8 <= len(body):
        group, elem = struct.unpack_from("<HH", body, pos)
        vr = body[pos + 4:pos + 6]
        if vr in _LONG:
            (length,) = struct.unpack_from("<I", body, pos + 8)
            value = pos + 12
        else:
            (length,) = struct.unpack_from("<H", body, pos + 6)
            value = pos + 8
        out.append((pos, group << 16 | elem, vr, length))
        if length == 0xFFFFFFFF:
            break
        pos = value + length
    return out


class _Corpus:
    def __init__(self, source: Path, out_dir: Path, seed: int):
        self.rng = random.Random(seed)
        self.out_dir = out_dir
        self.base = chest_copy(source, factor=16)
        self.base.PatientName = "Fuzz^Case"
        self.base.PatientID = f"FUZZ-{seed}"
        self.study = generate_uid()  # a few studies, so that completion sees several instances at once
        self.cases: list[FuzzCase] = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def fresh(self, **changes: object) -> Dataset:
        ds = copy.deepcopy(self.base)
        ds.StudyInstanceUID = self.study if self.rng.random() < 0.5 else generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        for key, value in changes.items():
            setattr(ds, key, value)
        if self.rng.random() < 0.35:
            write_private_block(ds, "Add the finding of pleural effusion.", seed=self.rng.randrange(1000))
        return ds

    def add(self, kind: str, ds: Dataset | None, body: bytes, *, ts: str = ExplicitVRLittleEndian,
            meta_uid: str | None = None) -> None:
        sop = meta_uid or (str(ds.SOPInstanceUID) if ds is not None else generate_uid())
        sop_class = str(ds.SOPClassUID) if ds is not None and "SOPClassUID" in ds else "1.2.840.10008.5.1.4.1.1.1"
        name = f"{len(self.cases):03d}-{kind}"
        path = self.out_dir / f"{name}.dcm"
        path.write_bytes(_meta_bytes(sop_class, sop, ts) + body)
        self.cases.append(FuzzCase(name, kind, path))

    def encoded(self, ds: Dataset, implicit: bool = False) -> bytes:
        return dataset_only_bytes(ds, implicit=implicit)

    # mutations ---------------------------------------------------------------------------------
    def truncated(self, n: int) -> None:
        for _ in range(n):
            ds = self.fresh()
            body = self.encoded(ds)
            self.add("truncated", ds, body[: self.rng.randrange(1, len(body))])

    def flipped(self, n: int) -> None:
        for _ in range(n):
            ds = self.fresh()
            body = bytearray(self.encoded(ds))
            for _ in range(self.rng.randint(1, 16)):
                body[self.rng.randrange(len(body))] ^= 1 << self.rng.randrange(8)
            self.add("flipped", ds, bytes(body))

    def huge_lengths(self, n: int) -> None:
        for _ in range(n):
            ds = self.fresh()
            body = bytearray(self.encoded(ds))
            offset, _tag, vr, _length = self.rng.choice(_elements(bytes(body)))
            huge = self.rng.choice([0xFFFFFFF0, 0x7FFFFFFF, len(body) * 3 + 1, 0xFFFFFFFF, 0xFFFF, 1])
            if vr in _LONG:
                struct.pack_into("<I", body, offset + 8, huge)
            else:
                struct.pack_into("<H", body, offset + 6, huge & 0xFFFF)
            self.add("huge-length", ds, bytes(body))

    def wrong_vrs(self, n: int) -> None:
        choices = [b"ZZ", b"SQ", b"UN", b"ab", b"\x00\x00", b"OB", b"US", b"DS", b"UI", b"FD", b"AT", b"LT"]
        for _ in range(n):
            ds = self.fresh()
            body = bytearray(self.encoded(ds))
            elements = [e for e in _elements(bytes(body)) if e[1] != 0x7FE00010]
            offset, _tag, _vr, _length = self.rng.choice(elements)
            body[offset + 4:offset + 6] = self.rng.choice(choices)
            self.add("wrong-vr", ds, bytes(body))

    def deep(self) -> None:
        for depth in (10, 31, 32, 33, 100, 1000, 10_000):
            for tag in ((0x0008, 0x1110), REQUEST_ATTRIBUTES_SEQUENCE):
                ds = self.fresh()
                at = tag[0] << 16 | tag[1]
                head, tail = Dataset(), Dataset()
                for elem in ds:
                    (head if elem.tag < at else tail).add(elem)
                body = self.encoded(head) + nested_sequence_dataset_bytes(depth, tag) + self.encoded(tail)
                self.add(f"deep-{depth}", ds, body)
        ds = self.fresh()  # implicit VR: sequences recognised by the dictionary
        head = Dataset()
        for elem in ds:
            if elem.tag < 0x00081110:
                head.add(elem)
        nested = _implicit_nested(200)
        tail = Dataset()
        for elem in ds:
            if elem.tag > 0x00081110:
                tail.add(elem)
        self.add("deep-implicit-200", ds, self.encoded(head, True) + nested + self.encoded(tail, True),
                 ts=ImplicitVRLittleEndian)

    def wide(self) -> None:
        ds = self.fresh()
        item = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # empty defined-length items
        seq = struct.pack("<HH", 0x0040, 0x0275) + b"SQ\0\0" + struct.pack("<I", len(item) * 50_000) + item * 50_000
        body = self.encoded(ds)
        cut = next(o for o, t, _v, _l in _elements(body) if t > 0x00400275)
        self.add("wide-50000-items", ds, body[:cut] + seq + body[cut:])
        ds = self.fresh()
        body = self.encoded(ds)
        cut = next(o for o, t, _v, _l in _elements(body) if t > 0x00090000)
        tiny = b"".join(struct.pack("<HH", 0x0009, 0x1000 + (i % 0xEFFF)) + b"SS\x02\x00\x01\x00"
                        for i in range(250_000))
        self.add("wide-250000-elements", ds, body[:cut] + tiny + body[cut:])

    def uids(self) -> None:
        bad = ["1.2.3.\u00e9\u00e9", "1.2.3\x01.4", "1." + "2" * 70, "", "../../../etc", "/abs/path",
               "1.2.3 4", "1.2.3\\4", "1.2..3", "\u4e2d\u6587"]
        for value in bad:
            for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
                ds = self.fresh()
                placeholder = "9" * max(1, len(value.encode("utf-8")))
                setattr(ds, keyword, "1.2.826.0.1." + placeholder)
                body = self.encoded(ds)
                raw = value.encode("utf-8")
                old = ("1.2.826.0.1." + placeholder).encode()
                new = raw + (b"\0" if len(raw) % 2 else b"")
                body = _replace_value(body, old, new)
                self.add(f"uid-{keyword}", ds, body, meta_uid=generate_uid() if keyword == "SOPInstanceUID" else None)

    def no_pixels(self) -> None:
        variants: list[tuple[str, dict[str, object], bool]] = [
            ("missing", {}, True), ("rows-0", {"Rows": 0}, False), ("bits-0", {"BitsAllocated": 0}, False),
            ("samples-0", {"SamplesPerPixel": 0}, False), ("huge-rows", {"Rows": 65535, "Columns": 65535}, False),
            ("bits-stored-64", {"BitsStored": 64}, False), ("photometric-rgb", {"PhotometricInterpretation": "RGB"},
                                                            False),
            ("frames-1000", {"NumberOfFrames": 1000}, False),
        ]
        for name, changes, drop in variants:
            ds = self.fresh(**changes)
            if drop:
                del ds.PixelData
            self.add(f"no-pixels-{name}", ds, self.encoded(ds))
        ds = self.fresh()
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        self.add("no-pixels-short", ds, self.encoded(ds))

    def deflate(self, cap_mb: int) -> None:
        ds = self.fresh()
        self.add("deflate-garbage", ds, bytes(self.rng.randrange(256) for _ in range(4000)),
                 ts=DeflatedExplicitVRLittleEndian)
        ds = self.fresh()
        packed = _deflate(self.encoded(ds))
        self.add("deflate-truncated", ds, packed[: len(packed) // 2], ts=DeflatedExplicitVRLittleEndian)
        ds = self.fresh()
        self.add("deflate-ok", ds, _deflate(self.encoded(ds)), ts=DeflatedExplicitVRLittleEndian)
        ds = self.fresh()
        self.add("deflate-bomb", ds, _deflate_bomb(self.encoded(ds), (cap_mb + 8) * 2**20),
                 ts=DeflatedExplicitVRLittleEndian)

    def garbage(self, n: int) -> None:
        self.add("garbage-empty", None, b"")
        self.add("garbage-zeros", None, b"\0" * 4096)
        for _ in range(n):
            self.add("garbage-random", None, bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 3000))))

    def good(self, n: int) -> None:
        for _ in range(n):
            ds = self.fresh()
            self.add("good", ds, self.encoded(ds))


def _replace_value(body: bytes, old: bytes, new: bytes) -> bytes:
    """Replace a UI value (its 2-byte length too) in an Explicit VR Little Endian data set."""
    at = body.index(old)
    length_at = at - 2
    (old_len,) = struct.unpack_from("<H", body, length_at)
    return body[:length_at] + struct.pack("<H", len(new)) + new + body[length_at + 2 + old_len:]


def _implicit_nested(depth: int) -> bytes:
    opening = struct.pack("<HHI", 0x0008, 0x1110, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _deflate_bomb(head: bytes, size: int) -> bytes:
    """`head`, then a private OB element of `size` zero bytes, deflated (about 1/1000 of `size`)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [c.compress(head + struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", size))]
    zeros = b"\0" * (1 << 20)
    for _ in range(size >> 20):
        chunks.append(c.compress(zeros))
    chunks.append(c.flush())
    return b"".join(chunks)


def fuzz_corpus(source: Path, out_dir: Path, *, seed: int, size_cap_mb: int = 64) -> list[FuzzCase]:
    corpus = _Corpus(source, out_dir, seed)
    corpus.good(10)
    corpus.truncated(60)
    corpus.flipped(60)
    corpus.huge_lengths(30)
    corpus.wrong_vrs(30)
    corpus.deep()
    corpus.wide()
    corpus.uids()
    corpus.no_pixels()
    corpus.deflate(size_cap_mb)
    corpus.garbage(10)
    return corpus.cases


FAMILIES = ("good", "truncated", "flipped", "huge-length", "wrong-vr", "deep", "wide", "uid", "no-pixels",
            "deflate", "garbage")


def kinds(cases: list[FuzzCase]) -> Iterator[tuple[str, int]]:
    """(family, number of cases) in the order of the module docstring."""
    counts: dict[str, int] = {}
    for case in cases:
        family = next(f for f in FAMILIES if case.kind.startswith(f))
        counts[family] = counts.get(family, 0) + 1
    return iter(sorted(counts.items(), key=lambda kv: FAMILIES.index(kv[0])))
