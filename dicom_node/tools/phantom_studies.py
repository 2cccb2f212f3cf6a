"""Phantom chest studies as DICOM CR files, carrying their edit request in the private block.

They let anyone try the whole node with its default configuration and the shipped phantom demo model:
`x2x dataset phantom-studies DIR` then `storescu -R -aec X2X 127.0.0.1 11112 DIR/*.dcm`. Each file is the
*past* image of a phantom pair (editor/training/phantoms/) and asks, in (0071,xx10), for the pair's
instruction (which leads to its *current* image). Nothing in them comes from a patient; they are marked
synthetic and named PHANTOM^DEMO.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.studies.requests import write_private_block

_UID_ROOT = "2.25."
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")  # Computed Radiography Image Storage


def _uid(*parts: object) -> str:
    """Deterministic 2.25 UID, so the same command writes the same studies (and a PACS de-duplicates)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return _UID_ROOT + str(int.from_bytes(digest[:15], "big"))


def phantom_dataset(pixels: np.ndarray, *, instruction: str, seed: int, index: int, size: int) -> Dataset:
    """One PA chest CR (8-bit MONOCHROME2, patient's left on the image's right) with an edit request."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.StudyInstanceUID = _uid("x2x-phantom", seed, size, index, "study")
    ds.SeriesInstanceUID = _uid("x2x-phantom", seed, size, index, "series")
    ds.SOPInstanceUID = _uid("x2x-phantom", seed, size, index, "instance")
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    today = dt.date.today().strftime("%Y%m%d")
    ds.PatientName = "PHANTOM^DEMO"
    ds.PatientID = f"PHANTOM-{seed}-{index:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID = f"{index}"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "X2X phantom demo study (synthetic)"
    ds.SeriesDescription = "Synthetic chest phantom"
    ds.Modality = "CR"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "instructx2x-node phantom generator"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SyntheticData = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # centre 128 / width 256 shows stored x as x / 255: the display the demo model was trained on
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    write_private_block(ds, instruction, seed=seed)
    return ds


def write_phantom_studies(out_dir: str | Path, *, n: int = 4, size: int = 256, seed: int = 4242) -> list[Path]:
    """Write `n` phantom studies (one CR each) to `out_dir`; returns their paths."""
    from editor.training.phantoms import make_pair

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n):
        pair = make_pair(seed, index, size)
        ds = phantom_dataset(pair.past, instruction=pair.instruction, seed=seed, index=index, size=size)
        path = out / f"{pair.pair_id}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
