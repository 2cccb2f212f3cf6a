"""Reading the real release files (MIMIC-Diff-VQA questions, MIMIC-CXR metadata and split, as .csv,
.csv.gz or a JSON list), their ids in any of the spellings they use, the MIMIC-CXR-JPG path of an
image, and the choice of a study's frontal image."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

FRONTAL_ORDER = ("PA", "AP")  # preferred first


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - returned to a with-block


def read_records(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV (.csv / .csv.gz) or records of a JSON list, as str -> str dicts."""
    path = Path(path)
    if path.suffix == ".json":
        for rec in json.loads(path.read_text()):
            yield {str(k): "" if v is None else str(v) for k, v in rec.items()}
        return
    with _open_text(path) as fh:
        yield from csv.DictReader(fh)


def norm_id(value: str | None) -> str:
    """'s50414267' / '50414267.0' / ' 50414267 ' -> '50414267'; '', 'nan', None -> ''."""
    text = (value or "").strip().lower()
    if text in ("", "nan", "none", "null"):
        return ""
    text = text.lstrip("sp")
    return text[:-2] if text.endswith(".0") else text


def require_columns(row: dict[str, str], columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)} (found {', '.join(row)})")


@dataclass(frozen=True)
class Image:
    dicom_id: str
    subject_id: str
    study_id: str
    view: str


def jpg_path(root: Path, img: Image) -> Path:
    return root / "files" / f"p{img.subject_id[:2]}" / f"p{img.subject_id}" / f"s{img.study_id}" / f"{img.dicom_id}.jpg"


def read_metadata(path: str | Path) -> dict[str, list[Image]]:
    """study_id -> its images (every view)."""
    studies: dict[str, list[Image]] = defaultdict(list)
    first = True
    for row in read_records(path):
        if first:
            require_columns(row, ("dicom_id", "subject_id", "study_id", "ViewPosition"), str(path))
            first = False
        img = Image(row["dicom_id"].strip(), norm_id(row["subject_id"]), norm_id(row["study_id"]),
                    (row["ViewPosition"] or "").strip().upper())
        studies[img.study_id].append(img)
    return dict(studies)


def read_split(path: str | Path) -> dict[str, str]:
    """dicom_id -> split."""
    out: dict[str, str] = {}
    first = True
    for row in read_records(path):
        if first:
            require_columns(row, ("dicom_id", "split"), str(path))
            first = False
        out[row["dicom_id"].strip()] = row["split"].strip()
    return out


def choose_frontal(images: list[Image], jpg_root: Path) -> tuple[Image | None, str | None]:
    """The study's frontal image (PA before AP, then dicom_id) whose JPG exists; else the drop reason."""
    frontal = sorted((i for i in images if i.view in FRONTAL_ORDER),
                     key=lambda i: (FRONTAL_ORDER.index(i.view), i.dicom_id))
    if not frontal:
        return None, "lateral_only"
    for img in frontal:
        if jpg_path(jpg_root, img).exists():
            return img, None
    return None, "missing_image"
