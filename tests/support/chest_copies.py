"""Copies of the real chest CR with new UIDs (and optionally downscaled) for queue/batch/API tests.

Downscaling keeps every code path (MONOCHROME1, 15 bits stored, PA, L\\F) while making encoding the
five result objects fast enough for tests that run dozens of jobs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid


def chest_copy(src: Path, *, study_uid: str | None = None, factor: int = 4, **changes: object) -> Dataset:
    """The chest CR with fresh Series/SOP (and Study unless given) UIDs, every `factor`-th pixel."""
    ds = pydicom.dcmread(src)
    if factor > 1:
        pixels = np.ascontiguousarray(ds.pixel_array[::factor, ::factor])
        ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
        ds.PixelData = pixels.tobytes()
        for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
            value = ds.get(keyword)
            if value is not None and all(float(v) > 0 for v in value):
                setattr(ds, keyword, [float(v) * factor for v in value])
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def write_chest_copies(
    src: Path, out_dir: Path, n: int, *, study_uid: str | None = None, factor: int = 4, prefix: str = "cr",
    **changes: object,
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ds = chest_copy(src, study_uid=study_uid, factor=factor, **changes)
        path = out_dir / f"{prefix}{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def low_resolution_model(tiny_model_dir: Path, out_dir: Path, resolution: int = 128) -> Path:
    """A copy of the tiny fixture model that runs at `resolution` px (its x2x_model.json says so):
    the same code paths as 512 px at a fraction of the CPU time, for tests that run many jobs."""
    import json
    import shutil

    if not (out_dir / "model_index.json").exists():
        shutil.copytree(tiny_model_dir, out_dir, dirs_exist_ok=True)
        sidecar = out_dir / "x2x_model.json"
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        meta["resolution"] = resolution
        sidecar.write_text(json.dumps(meta, indent=2))
    return out_dir
