"""Small MIMIC-EDIT-INSTRUCTION fixtures in the real file formats, drawn from the synthetic phantoms.

* `mimic_jpg_tree`: a MIMIC-CXR-JPG tree (`files/p10/p<subject>/s<study>/<dicom_id>.jpg`), its
  `mimic-cxr-2.0.0-metadata.csv` and an instructions table (v1: 4 columns; v2: + location, severity);
* `release_tree`: the research release's layout (`past/<id>.jpg`, `current/<id>.jpg`, instructions.csv);
* `paper_masks`: a folder of the paper's fixed 512 x 512 `pseudo_mask_<Finding>.npy` files.
Every image is a synthetic phantom (editor/training/phantoms/): no patient data.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from editor.training.phantoms import make_pair

SIZE = 96
PHANTOM_SEED = 7


def _pairs(n: int) -> list:
    return [make_pair(PHANTOM_SEED, i, SIZE) for i in range(n)]


def _write_table(path: Path, rows: list[dict[str, str]], v2: bool) -> Path:
    columns = ["split", "current_dicom_id", "past_dicom_id", "instruction"] + (["location", "severity"] if v2 else [])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _row(pair, split: str = "test") -> dict[str, str]:  # type: ignore[no-untyped-def]
    spec = pair.spec
    return {"split": split, "current_dicom_id": pair.current_id, "past_dicom_id": pair.past_id,
            "instruction": pair.instruction, "location": " ".join(spec.location),
            "severity": spec.severity or (f"{spec.level_from} to {spec.level_to}" if spec.level_from else "")}


def mimic_jpg_tree(root: Path, *, n: int = 4, v2: bool = False, extra_rows: list[dict[str, str]] | None = None,
                   train_rows: int = 1) -> dict[str, Path]:
    """A MIMIC-CXR-JPG tree + metadata + table; returns {'table', 'jpg_root', 'metadata'}."""
    jpg_root = root / "mimic-cxr-jpg"
    meta_rows, rows = [], []
    for i, pair in enumerate(_pairs(n + train_rows)):
        subject = f"10{i:06d}"
        for j, (dicom_id, img) in enumerate(((pair.past_id, pair.past), (pair.current_id, pair.current))):
            study = f"5{i:04d}{j:03d}"
            folder = jpg_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{dicom_id}.jpg", quality=95)
            meta_rows.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study, "ViewPosition": "PA"})
        rows.append(_row(pair, "test" if i < n else "train"))
    rows += extra_rows or []
    meta = root / "mimic-cxr-2.0.0-metadata.csv"
    with open(meta, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["dicom_id", "subject_id", "study_id", "ViewPosition"])
        writer.writeheader()
        writer.writerows(meta_rows)
    table = _write_table(root / f"instructions{'_v2' if v2 else ''}.csv", rows, v2)
    return {"table": table, "jpg_root": jpg_root, "metadata": meta}


def release_tree(root: Path, *, n: int = 3, v2: bool = True) -> Path:
    """The research release's layout; returns the dataset folder (instructions.csv, past/, current/)."""
    (root / "past").mkdir(parents=True, exist_ok=True)
    (root / "current").mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in _pairs(n):
        Image.fromarray(pair.past).save(root / "past" / f"{pair.past_id}.jpg", quality=95)
        Image.fromarray(pair.current).save(root / "current" / f"{pair.current_id}.jpg", quality=95)
        rows.append(_row(pair))
    _write_table(root / "instructions.csv", rows, v2)
    return root


def paper_masks(folder: Path) -> Path:
    """pseudo_mask_<Finding>.npy at 512 x 512 (0/1 boxes) for the phantoms' four findings."""
    folder.mkdir(parents=True, exist_ok=True)
    boxes = {"Effusion": (300, 480, 40, 472), "Cardiomegaly": (220, 420, 160, 400),
             "Lung Opacity": (60, 460, 40, 472), "Pneumothorax": (20, 220, 40, 472)}
    for name, (r0, r1, c0, c1) in boxes.items():
        mask = np.zeros((512, 512), np.float32)
        mask[r0:r1, c0:c1] = 1.0
        np.save(folder / f"pseudo_mask_{name}.npy", mask)
    return folder
