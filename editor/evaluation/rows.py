"""The test split of a MIMIC-EDIT-INSTRUCTION table, and where each row's two images are.

Table: `split, current_dicom_id, past_dicom_id, instruction` (v1) plus `location, severity` (v2), as
written by `x2x dataset build` (editor/training/format.py) and by the research release. Extra columns are
kept (`pair_id` of the phantom fixtures; an optional ground-truth `race` column, see metrics.py).

Images, looked up in this order for a dicom_id (the first file that exists wins):
1. `<images>/images/<id>.png|.jpg` — this project's dataset folder (`x2x dataset build --images`);
2. `<images>/past/<id>` and `<images>/current/<id>` (as is, or + `.jpg` / `.png`) — the research release's
   layout (its loader opens `past/<past_dicom_id>` and `current/<current_dicom_id>`);
3. MIMIC-CXR-JPG (`jpg_root` + its `mimic-cxr-2.0.0-metadata.csv`):
   `files/p<2>/p<subject>/s<study>/<id>.jpg`.
A row whose image is not found is reported as skipped with the path(s) tried, never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from editor.training.format import BASE_COLUMNS, INSTRUCTIONS_FILE

__all__ = ["EvalRow", "ImageLocator", "read_rows"]

_SUFFIXES = ("", ".jpg", ".png", ".jpeg")


@dataclass(frozen=True)
class EvalRow:
    index: int  # position in the table (file order)
    split: str
    current_dicom_id: str
    past_dicom_id: str
    instruction: str
    location: str = ""
    severity: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """Stable across reruns and independent of the row order: the pair and its instruction."""
        text = f"{self.past_dicom_id}\0{self.current_dicom_id}\0{self.instruction}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_rows(table: str | Path, *, split: str | None = "test", limit: int | None = None) -> list[EvalRow]:
    """Rows of the table (a CSV file, or a folder holding instructions.csv) in file order."""
    path = Path(table)
    if path.is_dir():
        path = path / INSTRUCTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MIMIC-EDIT-INSTRUCTION table (columns {', '.join(BASE_COLUMNS)})")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BASE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = []
        for i, rec in enumerate(reader):
            if split is not None and (rec.get("split") or "").strip() != split:
                continue
            known = set(BASE_COLUMNS) | {"location", "severity"}
            rows.append(EvalRow(
                index=i, split=(rec.get("split") or "").strip(),
                current_dicom_id=(rec["current_dicom_id"] or "").strip(),
                past_dicom_id=(rec["past_dicom_id"] or "").strip(),
                instruction=(rec["instruction"] or "").strip(),
                location=(rec.get("location") or "").strip(), severity=(rec.get("severity") or "").strip(),
                extra={k: (v or "").strip() for k, v in rec.items() if k and k not in known},
            ))
            if limit is not None and len(rows) >= limit:
                break
    return rows


class ImageLocator:
    """dicom_id -> image file, over the three layouts in the module docstring."""

    def __init__(self, root: str | Path | None = None, *, jpg_root: str | Path | None = None,
                 metadata: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.jpg_root = Path(jpg_root) if jpg_root is not None else None
        self._mimic: dict[str, Path] = {}
        if (jpg_root is None) != (metadata is None):
            raise ValueError("MIMIC-CXR-JPG needs both jpg_root and its metadata CSV")
        if self.jpg_root is not None and metadata is not None:
            from editor.training.mimic import jpg_path, read_metadata

            for images in read_metadata(metadata).values():
                for img in images:
                    self._mimic[img.dicom_id] = jpg_path(self.jpg_root, img)

    def candidates(self, dicom_id: str, role: str) -> list[Path]:
        """Every path tried for `dicom_id` as the `role` ('past' or 'current') image, in order."""
        if not dicom_id or "/" in dicom_id or "\\" in dicom_id or dicom_id.startswith("."):
            return []  # an id is a file name, never a path (the table is data from outside)
        out: list[Path] = []
        if self.root is not None:
            out += [self.root / "images" / f"{dicom_id}{s}" for s in (".png", ".jpg")]
            out += [self.root / role / f"{dicom_id}{s}" for s in _SUFFIXES]
        if dicom_id in self._mimic:
            out.append(self._mimic[dicom_id])
        return out

    def find(self, dicom_id: str, role: str) -> Path:
        tried = self.candidates(dicom_id, role)
        for path in tried:
            if path.is_file():
                return path
        where = ", ".join(str(p) for p in tried[:4]) or "no layout configured for it"
        raise FileNotFoundError(f"{role} image {dicom_id!r} not found (tried {where})")
