"""The durable spool: atomic, fsynced, duplicate-safe, no partial files on a write error."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from dicom_node.inbound import spool as spool_mod
from dicom_node.inbound.encoding import UndecodableDataset, peek_identifiers
from dicom_node.inbound.spool import Spool, StoreStatus, safe_name
from tests.support.dicom_files import dataset_bytes


def test_store_writes_exact_bytes_and_duplicates_are_success(tmp_path):
    sp = Spool(tmp_path / "spool")
    raw = os.urandom(10_000)
    first = sp.store(raw, study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    assert first.status is StoreStatus.STORED and first.ok
    assert first.path == tmp_path / "spool/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert first.path.read_bytes() == raw
    again = sp.store(b"different", study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    assert again.status is StoreStatus.ALREADY_STORED and again.ok
    assert first.path.read_bytes() == raw  # stored once
    parts = sp.store([b"ab", b"", b"cd" * 1000], study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="9")
    assert parts.path.read_bytes() == b"ab" + b"cd" * 1000
    assert [s.study_uid for s in sp.iter_studies()] == ["1.2.3"]
    assert len(sp.instances("1.2.3")) == 2
    assert not list((tmp_path / "spool").rglob("*.part"))


def test_unsafe_uid_becomes_a_stable_safe_name():
    assert safe_name("1.2.840.10008") == "1.2.840.10008"
    weird = safe_name("../../etc/passwd")
    assert "/" not in weird and weird == safe_name("../../etc/passwd") and weird.startswith("x")


def test_write_error_leaves_no_partial_file(tmp_path, monkeypatch):
    sp = Spool(tmp_path / "spool")
    calls = {"n": 0}
    real_writev = os.writev

    def failing_writev(fd: int, buffers):  # writes a little, then the disk is full
        calls["n"] += 1
        if calls["n"] == 1:
            return real_writev(fd, [memoryview(buffers[0])[:100]])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod.os, "writev", failing_writev)
    out = sp.store(b"x" * 5000, study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4")
    assert out.status is StoreStatus.OUT_OF_RESOURCES and not out.ok
    assert "No space left" in (out.error or "")
    assert not out.path.exists()
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


def test_real_full_filesystem_leaves_no_partial_file(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); the patched-writer test covers it")
    try:
        sp = Spool(mnt)
        out = sp.store(b"y" * 3_000_000, study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4")
        assert out.status is StoreStatus.OUT_OF_RESOURCES
        assert [p for p in mnt.rglob("*") if p.is_file()] == []
        small = sp.store(b"z" * 1000, study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.5")
        assert small.status is StoreStatus.STORED  # space was given back
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_stale_temp_files_are_removed(tmp_path):
    sp = Spool(tmp_path / "spool")
    d = tmp_path / "spool/1.2/1.2.3"
    d.mkdir(parents=True)
    (d / ".1.2.3.4.dcm.123.456.part").write_bytes(b"half")
    assert sp.remove_stale_temp_files() == 1
    assert sp.instances("1.2") == []


def test_peek_identifiers_reads_only_the_head(chest_cr_path, pydicom_data_dir):
    import pydicom

    raw = dataset_bytes(chest_cr_path)
    ds = pydicom.dcmread(chest_cr_path, stop_before_pixels=True)
    ts = ds.file_meta.TransferSyntaxUID
    assert peek_identifiers(raw, ts) == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    # big endian and deflate corpus files parse too
    for name in ("emri_small_big_endian.dcm",):
        f = Path(pydicom_data_dir) / name
        d = pydicom.dcmread(f, stop_before_pixels=True)
        assert peek_identifiers(dataset_bytes(f), d.file_meta.TransferSyntaxUID)[0] == d.StudyInstanceUID
    with pytest.raises(UndecodableDataset):
        peek_identifiers(b"\x08\x00\x16\x00garbage-garbage", "1.2.840.10008.1.2.1")
    with pytest.raises(UndecodableDataset):
        peek_identifiers(b"\x78\x9c not deflate", "1.2.840.10008.1.2.1.99")
