"""Small helpers that write DICOM test files and send them with dcmtk (`storescu`, `echoscu`)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid


def renumbered_copy(src: Path, dst: Path, *, study_uid: str | None = None, crop: int | None = None,
                    **attrs: Any) -> Path:
    """Copy `src` with new SOP / series (and study) UIDs and the given attributes set."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if crop is not None:
        arr = ds.pixel_array[:crop, :crop].copy()
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


# storescu proposes only uncompressed syntaxes unless told; this picks the option for a file's own syntax.
_PROPOSE = {
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.57": "-xs", "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.2": "-xb",
}


def proposal_option(path: Path) -> list[str]:
    try:
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:
        return []
    return [_PROPOSE[ts]] if ts in _PROPOSE else []


def dcmtk_env() -> dict[str, str]:
    return dict(os.environ, TCP_NODELAY="1")


def storescu(port: int, files: Iterable[Path] | Path, *, called_ae: str = "X2X", calling_ae: str = "STORESCU",
             extra: Iterable[str] = (), timeout: float = 120) -> subprocess.CompletedProcess[str]:
    paths = [files] if isinstance(files, Path) else list(files)
    cmd = ["storescu", "-v", "-R", "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1", str(port),
           *[str(p) for p in paths]]
    return subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)


def store_statuses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The status words of every 'Received Store Response (...)' line storescu printed."""
    return re.findall(r"Received Store Response \(([^)]*)\)", result.stdout + result.stderr)


def echoscu(port: int, *, calling_ae: str = "ECHOSCU", called_ae: str = "X2X") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=30)


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (what travels in a C-STORE), without preamble and meta."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.read()
