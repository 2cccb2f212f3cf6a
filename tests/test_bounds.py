"""The walker of inbound/bounds.py against pydicom on every test file pydicom and pydicom-data ship: where
it can follow an encoding it counts at least the depth and elements pydicom parses (never less: it is a
bound), and it refuses bombs without decoding them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from dicom_node.inbound import bounds
from tests.support.hostile import nested_sequence_dataset_bytes


def _corpus(pydicom_data_dir: Path) -> list[Path]:
    files = {Path(p) for p in get_testdata_files("*.dcm")} | set(Path(pydicom_data_dir).rglob("*.dcm"))
    return sorted(files)


def test_walker_bounds_what_pydicom_parses(pydicom_data_dir: Path) -> None:
    followed = unfollowable = 0
    for path in _corpus(pydicom_data_dir):
        data = path.read_bytes()
        meta = bounds.part10_meta(data)
        ts = pydicom.uid.UID(meta.transfer_syntax)
        if ts.is_deflated or meta.dataset_offset == 0:
            continue
        try:
            depth, elements = bounds.walk(memoryview(data)[meta.dataset_offset:], implicit=ts.is_implicit_VR,
                                          little=ts.is_little_endian, limits=bounds.Limits())
        except bounds.Unfollowable:
            unfollowable += 1
            continue
        followed += 1
        try:
            parsed = pydicom.dcmread(path, force=True)
            want = bounds.count_parsed(parsed, bounds.Limits())
        except Exception:  # noqa: BLE001 - pydicom cannot read it either
            continue
        assert depth >= want[0] and elements >= want[1], (path.name, (depth, elements), want)
    assert followed >= 100 and unfollowable <= 15, (followed, unfollowable)


@pytest.mark.parametrize("depth, refused", [(32, False), (33, True), (100_000, True)])
def test_nesting_is_bounded_iteratively(depth: int, refused: bool) -> None:
    data = nested_sequence_dataset_bytes(depth)
    if refused:
        with pytest.raises(bounds.LimitExceeded, match="node.max_sequence_depth"):
            bounds.check_encoded(data, "1.2.840.10008.1.2.1", bounds.Limits())
    else:
        bounds.check_encoded(data, "1.2.840.10008.1.2.1", bounds.Limits())


def test_element_count_and_deflate_bomb_are_bounded() -> None:
    tiny = b"".join(struct.pack("<HH", 0x0009, 0x1000 + i % 0xEFFF) + b"SS\x02\x00\x01\x00" for i in range(2000))
    with pytest.raises(bounds.LimitExceeded, match="node.max_elements"):
        bounds.check_encoded(tiny, "1.2.840.10008.1.2.1", bounds.Limits(max_elements=1000))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0" + struct.pack("<I", 64 * 2**20)
    bomb = packer.compress(header) + b"".join(packer.compress(b"\0" * 2**20) for _ in range(64)) + packer.flush()
    assert len(bomb) < 100_000
    with pytest.raises(bounds.LimitExceeded, match="inflates beyond 16 MB"):
        bounds.check_encoded(bomb, "1.2.840.10008.1.2.1.99", bounds.Limits(max_inflated_bytes=16 * 2**20))
    bounds.check_encoded(bomb, "1.2.840.10008.1.2.1.99", bounds.Limits())  # under the cap: walked from disk
