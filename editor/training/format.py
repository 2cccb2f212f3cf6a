"""The on-disk training dataset format shared by `x2x dataset build` (writer) and `x2x train` (reader).

    <dataset>/instructions.csv   columns: split, current_dicom_id, past_dicom_id, instruction
                                 (+ location, severity for the v2 form; empty when unknown)
    <dataset>/images/<dicom_id>.png   8-bit grayscale, bone bright (MIMIC-CXR-JPG's display)
    <dataset>/stats.json         what the builder kept, dropped and why

One row is one training sample: input = the past image, target = the current image,
caption = the instruction.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

INSTRUCTIONS_FILE = "instructions.csv"
IMAGES_DIR = "images"
STATS_FILE = "stats.json"
BASE_COLUMNS = ("split", "current_dicom_id", "past_dicom_id", "instruction")
V2_COLUMNS = ("location", "severity")


@dataclass(frozen=True)
class Sample:
    split: str
    current_dicom_id: str
    past_dicom_id: str
    instruction: str
    location: str = ""
    severity: str = ""


def image_path(dataset_dir: str | Path, dicom_id: str) -> Path:
    return Path(dataset_dir) / IMAGES_DIR / f"{dicom_id}.png"


def write_samples(path: str | Path, samples: list[Sample], *, v2: bool) -> None:
    columns = BASE_COLUMNS + (V2_COLUMNS if v2 else ())
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for s in samples:
            row = [s.split, s.current_dicom_id, s.past_dicom_id, s.instruction]
            if v2:
                row += [s.location, s.severity]
            writer.writerow(row)


def read_samples(dataset_dir: str | Path, *, split: str | None = "train") -> list[Sample]:
    """Rows of `<dataset_dir>/instructions.csv`, in file order; `split=None` keeps every split."""
    path = Path(dataset_dir) / INSTRUCTIONS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a dataset folder holds {INSTRUCTIONS_FILE} and {IMAGES_DIR}/")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BASE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        samples = [
            Sample(
                split=row["split"],
                current_dicom_id=row["current_dicom_id"],
                past_dicom_id=row["past_dicom_id"],
                instruction=row["instruction"],
                location=row.get("location") or "",
                severity=row.get("severity") or "",
            )
            for row in reader
        ]
    if split is not None:
        samples = [s for s in samples if s.split == split]
    return samples
