"""Geometry facts of a projection radiograph: valid spacing, Patient Orientation, and the detector-plane
Frame of Reference the Parametric Map needs.

A CR/DX has no patient-based Frame of Reference. The Parametric Map IOD nevertheless requires one with
plane position / orientation / pixel measures, so the map gets a NEW frame for the detector plane:
origin at the centre of the top-left pixel, row direction and column direction from Patient
Orientation (e.g. L\\F -> rows run to the patient's left (+x), columns to the feet (-z)), spacing from
Imager Pixel Spacing (else Pixel Spacing, else a nominal 1 mm, said so). This frame is NOT the source's
(the source has none): it only says "same pixel grid as the source, in the detector plane". Where the
source carries real geometry (Frame of Reference UID + Image Position/Orientation + Pixel Spacing) the
map uses the source's frame and geometry instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset

# Patient-based direction letters (PS3.3 C.7.6.1.1.1) as LPS unit vectors.
_DIRECTIONS = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}
NOMINAL_SPACING_MM = 1.0


def valid_spacing(value: Any) -> tuple[float, float] | None:
    """A two-valued spacing with both values > 0, else None (the chest CR carries 0\\0)."""
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """(row direction, column direction) if Patient Orientation is present and made of known letters."""
    value = ds.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, col = str(value[0]).strip().upper(), str(value[1]).strip().upper()
    if not row or not col or any(ch not in _DIRECTIONS for ch in row + col):
        return None
    return (row, col)


def _letters(vector: tuple[float, float, float]) -> str:
    """Patient-orientation letters of a direction cosine, most significant first (C.7.6.1.1.1)."""
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    order = sorted(range(3), key=lambda i: -abs(vector[i]))
    return "".join(names[i][0 if vector[i] > 0 else 1] for i in order if abs(vector[i]) > 1e-3)


def orientation_labels(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation, else derived from Image Orientation (Patient); None when neither exists
    (then the objects carry an empty Patient Orientation: unknown, never guessed)."""
    labels = patient_orientation(ds)
    if labels is not None:
        return labels
    iop = ds.get("ImageOrientationPatient")
    try:
        row = tuple(float(v) for v in iop[:3])  # type: ignore[index]
        col = tuple(float(v) for v in iop[3:6])  # type: ignore[index]
    except (TypeError, ValueError):
        return None
    row_letters, col_letters = _letters(row), _letters(col)  # type: ignore[arg-type]
    return (row_letters, col_letters) if row_letters and col_letters else None


# Deepest sequence nesting copied from a source into the outputs. pydicom writes nested sequences
# recursively and on an error re-wraps the exception with the whole traceback at every level (the
# message grows ~2.6x per level: 10 levels ~40 MB, 14 levels several GB). A chest radiograph nests 3-4
# levels; anything deeper than this is refused rather than copied.
COPY_DEPTH_LIMIT = 8


def check_copy_depth(source: Dataset, limit: int = COPY_DEPTH_LIMIT) -> None:
    """ValueError when `source` nests sequences deeper than `limit` (walked iteratively)."""
    todo: list[tuple[Dataset, int]] = [(source, 0)]
    while todo:
        ds, level = todo.pop()
        for raw in ds.elements():
            if getattr(raw, "VR", None) not in ("SQ", None, "UN"):
                continue
            elem = ds[raw.tag]  # converts a raw element; a sequence's items become Datasets
            if elem.VR != "SQ" or not elem.value:
                continue
            if level + 1 > limit:
                raise ValueError(f"the source nests sequences more than {limit} deep ({elem.keyword or elem.tag}); "
                                 "its elements are not copied into outputs")
            todo.extend((item, level + 1) for item in elem.value)


def metadata_copy(source: Dataset) -> Dataset:
    """The source without pixel data and without an invalid Pixel Spacing (highdicom would copy it).
    Refuses (ValueError) a source nested deeper than COPY_DEPTH_LIMIT."""
    check_copy_depth(source)
    out = Dataset()
    for elem in source:
        if elem.tag == 0x7FE00010 or elem.tag.group == 0xFFFC:
            continue
        out.add(elem)
    if "PixelSpacing" in out and valid_spacing(out.PixelSpacing) is None:
        del out.PixelSpacing
    return out


def _unit(letters: str) -> tuple[float, float, float]:
    # Oblique labels ("LF") combine letters; the first letter is the dominant direction (C.7.6.1.1.1).
    return _DIRECTIONS[letters[0]]


def _orthogonal(labels: tuple[str, str]) -> bool:
    row, col = _unit(labels[0]), _unit(labels[1])
    return sum(a * b for a, b in zip(row, col, strict=True)) == 0


@dataclass(frozen=True)
class PlaneGeometry:
    frame_of_reference_uid: str
    pixel_measures: hd.PixelMeasuresSequence
    plane_orientation: hd.PlaneOrientationSequence
    plane_position: hd.PlanePositionSequence
    shares_source_frame: bool
    note: str  # how the geometry was derived; goes into the object's descriptions


def plane_geometry(source: Dataset, new_frame_uid: str) -> PlaneGeometry:
    spacing = valid_spacing(source.get("PixelSpacing"))
    iop = source.get("ImageOrientationPatient")
    ipp = source.get("ImagePositionPatient")
    if "FrameOfReferenceUID" in source and spacing and iop is not None and ipp is not None:
        return PlaneGeometry(
            frame_of_reference_uid=str(source.FrameOfReferenceUID),
            pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=None),
            plane_orientation=hd.PlaneOrientationSequence("PATIENT", [float(v) for v in iop]),
            plane_position=hd.PlanePositionSequence("PATIENT", [float(v) for v in ipp]),
            shares_source_frame=True,
            note="geometry and Frame of Reference of the source",
        )

    notes = []
    labels = patient_orientation(source)
    if labels is not None and _orthogonal(labels):
        notes.append(f"orientation from Patient Orientation {labels[0]}\\{labels[1]}")
        orientation = labels
    else:
        orientation = ("L", "F")
        notes.append("orientation assumed L\\F (standard PA display): no usable Patient Orientation")
    spacing = valid_spacing(source.get("ImagerPixelSpacing"))
    if spacing is not None:
        notes.append("spacing from Imager Pixel Spacing (detector plane, not magnification-corrected)")
    else:
        spacing = valid_spacing(source.get("PixelSpacing"))
        if spacing is not None:
            notes.append("spacing from Pixel Spacing")
        else:
            spacing = (NOMINAL_SPACING_MM, NOMINAL_SPACING_MM)
            notes.append("NOMINAL 1 mm spacing: the source has no valid spacing")
    row_dir, col_dir = _unit(orientation[0]), _unit(orientation[1])
    return PlaneGeometry(
        frame_of_reference_uid=new_frame_uid,
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=1.0),
        plane_orientation=hd.PlaneOrientationSequence("PATIENT", [*row_dir, *col_dir]),
        plane_position=hd.PlanePositionSequence("PATIENT", [0.0, 0.0, 0.0]),
        shares_source_frame=False,
        note="new detector-plane Frame of Reference, NOT shared with the source; " + "; ".join(notes),
    )
