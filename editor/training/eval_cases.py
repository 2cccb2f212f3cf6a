"""The cases `x2x eval DIR` reads: finding them in DIR and loading each as display values.

Layout of DIR (either form):

1. One sub-folder per case, e.g. the `--out` folder of `x2x edit` plus the source image:
       <case>/source.(png|jpg|npy|dcm)       the image that was edited
       <case>/counterfactual.(png|npy|dcm)   the edit (x2x edit writes counterfactual.png)
       <case>/mask.(png|npy)                 the guidance mask; nonzero = inside
       <case>/result.json  {"instruction": ...}  or  <case>/instruction.txt
2. `DIR/cases.csv` with columns `case, source, counterfactual, mask, instruction` (paths relative to
   DIR); optional `view_position`, `patient_orientation` (e.g. `L\\F`) for images without DICOM headers.

Images are compared as display values in [0, 1]: PNG/JPEG as stored / (2^bits - 1), .npy as given,
DICOM through the source's own display mapping (editor.preprocess.DisplayMapping), so an x2x edit
counterfactual.png compares with the same display of the source.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from editor.orientation import Orientation

_IMAGE_SUFFIXES = (".png", ".npy", ".dcm", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Case:
    name: str
    source: Path
    counterfactual: Path
    mask: Path
    instruction: str
    patient_orientation: tuple[str, str] | None = None
    view_position: str | None = None


@dataclass
class LoadedCase:
    source: np.ndarray  # float64 [0, 1] (display)
    counterfactual: np.ndarray
    mask: np.ndarray  # bool
    orientation: Orientation
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Finding cases and reading images


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return None


def discover_cases(root: str | Path) -> list[Case]:
    root = Path(root)
    if (root / "cases.csv").exists():
        with open(root / "cases.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        cases = []
        for i, row in enumerate(rows):
            po = (row.get("patient_orientation") or "").strip()
            cases.append(Case(
                name=row.get("case") or f"case{i}", source=root / row["source"],
                counterfactual=root / row["counterfactual"], mask=root / row["mask"],
                instruction=row["instruction"],
                patient_orientation=tuple(po.split("\\")[:2]) if "\\" in po else None,  # type: ignore[arg-type]
                view_position=(row.get("view_position") or "").strip() or None,
            ))
        return cases
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        src, cf, mask = _find(folder, "source"), _find(folder, "counterfactual"), _find(folder, "mask")
        if cf is None or mask is None:
            continue  # not a case folder
        if src is None:
            raise FileNotFoundError(f"{folder}: no source.(png|npy|dcm|jpg): copy the edited image there")
        if (folder / "instruction.txt").exists():
            text = (folder / "instruction.txt").read_text().strip()
        elif (folder / "result.json").exists():
            text = json.loads((folder / "result.json").read_text())["instruction"]
        else:
            raise FileNotFoundError(f"{folder}: neither instruction.txt nor result.json")
        cases.append(Case(folder.name, src, cf, mask, text))
    if not cases:
        raise FileNotFoundError(f"{root}: no cases (sub-folders with counterfactual + mask, or cases.csv)")
    return cases


def _read_plain(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L") if im.mode in ("RGB", "RGBA", "P", "LA") else im)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64) / 65535.0  # 16-bit PNGs (I;16 or I holding 16-bit values)


def load_case(case: Case) -> LoadedCase:
    notes: list[str] = []
    if case.source.suffix.lower() == ".dcm":
        from editor.preprocess import DisplayMapping
        from editor.source import source_from_file

        src_img = source_from_file(case.source)
        mapping = DisplayMapping.from_source(src_img)
        source = np.asarray(mapping.to_display(src_img.pixels), dtype=np.float64)
        orientation = Orientation.from_source(src_img)
        if case.counterfactual.suffix.lower() == ".dcm":
            cf_img = source_from_file(case.counterfactual)
            cf = np.asarray(mapping.to_display(cf_img.pixels), dtype=np.float64)
        else:
            cf = _read_plain(case.counterfactual)
    else:
        source = _read_plain(case.source)
        cf = _read_plain(case.counterfactual)
        orientation = Orientation.from_attributes(case.patient_orientation, case.view_position)
    mask = _read_plain(case.mask) > 0
    if source.ndim != 2 or cf.shape != source.shape:
        raise ValueError(f"{case.name}: source {source.shape} and counterfactual {cf.shape} differ")
    if mask.shape != source.shape:
        zoom = (source.shape[0] / mask.shape[0], source.shape[1] / mask.shape[1])
        mask = ndimage.zoom(mask.astype(np.uint8), zoom, order=0).astype(bool)[: source.shape[0], : source.shape[1]]
        notes.append(f"mask resized (nearest) from its own grid to {source.shape}")
    return LoadedCase(source, cf, mask, orientation, notes)
